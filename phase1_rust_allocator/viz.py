"""Pictures of the block manager for the notebook: block tables over physical memory, sharing, buddy runs.

`memory_map` and `internal_fragmentation` read any BlockTableManager (Rust or Python) through its public API;
the `draw_*` functions turn them into matplotlib figures.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BlockInfo:
    owners: list[int]  # sequences whose table points at the block
    filled: int        # token slots in use (the fullest view of a shared block)


def memory_map(m) -> dict[int, BlockInfo]:
    """Physical block -> who holds it and how full it is, for every block in use."""
    bs, out = m.block_size, {}
    for s in m.seq_ids():
        n = m.num_tokens(s)
        for i, b in enumerate(m.block_table(s)):
            info = out.setdefault(b, BlockInfo([], 0))
            info.owners.append(s)
            info.filled = max(info.filled, min(bs, n - i * bs))
    return out


def internal_fragmentation(m) -> float:
    """Unused token slots / allocated token slots over the blocks in use (a shared block counts once)."""
    mm = memory_map(m)
    alloc = len(mm) * m.block_size
    return 0.0 if not alloc else 1.0 - sum(i.filled for i in mm.values()) / alloc


def draw_block_tables(m, ax=None, cols: int | None = None):
    """Left: each sequence's block table (logical block -> physical id). Right: physical memory, coloured by
    owner; shared blocks are hatched and show their reference count; the shading shows how full a block is."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if ax is None:
        _, ax = plt.subplots(1, 2, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 1.3]})
    seqs, mm, bs = m.seq_ids(), memory_map(m), m.block_size
    colors = plt.get_cmap("tab10")
    tab, mem = ax
    for row, s in enumerate(seqs):
        for i, b in enumerate(m.block_table(s)):
            shared = len(mm[b].owners) > 1
            tab.add_patch(Rectangle((i, -row), 0.95, 0.9, color=colors(row % 10), alpha=0.85,
                                    hatch="//" if shared else None, ec="k" if shared else None))
            tab.text(i + 0.47, -row + 0.45, str(b), ha="center", va="center", fontsize=8, color="white")
        tab.text(-0.2, -row + 0.45, f"seq {s} ({m.num_tokens(s)} tok)", ha="right", va="center", fontsize=8)
    width = max([len(m.block_table(s)) for s in seqs] + [1])
    tab.set(xlim=(-3.2, width + 0.2), ylim=(-len(seqs) + 0.8, 1.1), title="block tables (logical -> physical)")
    tab.axis("off")
    cols = cols or min(16, m.num_total_blocks)
    for b in range(m.num_total_blocks):
        x, y = b % cols, -(b // cols)
        info = mm.get(b)
        if info is None:
            mem.add_patch(Rectangle((x, y), 0.95, 0.9, fc="none", ec="0.7"))
        else:
            c = "0.45" if len(info.owners) > 1 else colors(seqs.index(info.owners[0]) % 10)
            mem.add_patch(Rectangle((x, y), 0.95, 0.9, fc="none", ec=c))
            mem.add_patch(Rectangle((x, y), 0.95 * info.filled / bs, 0.9, color=c, alpha=0.85,
                                    hatch="//" if len(info.owners) > 1 else None))
            if len(info.owners) > 1:
                mem.text(x + 0.47, y + 0.45, f"x{len(info.owners)}", ha="center", va="center", fontsize=8)
        mem.text(x + 0.05, y + 0.72, str(b), fontsize=5, color="0.3")
    rows = -(-m.num_total_blocks // cols)
    mem.set(xlim=(0, cols), ylim=(-rows + 0.9, 1), title=f"physical blocks ({m.num_free_blocks} free, "
            f"internal fragmentation {internal_fragmentation(m):.0%})")
    mem.axis("off")
    return ax


def draw_buddy(buddy, ax=None, title: str = ""):
    """The buddy allocator's address space: free runs (white, size labelled) between allocations (grey)."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if ax is None:
        _, ax = plt.subplots(figsize=(12, 1.2))
    n = buddy.num_total_blocks
    ax.add_patch(Rectangle((0, 0), n, 1, color="0.55"))
    for s, size in buddy.free_runs():
        ax.add_patch(Rectangle((s, 0), size, 1, fc="white", ec="k", lw=0.5))
        if size >= n / 64:
            ax.text(s + size / 2, 0.5, str(size), ha="center", va="center", fontsize=7)
    ax.set(xlim=(0, n), ylim=(0, 1), yticks=[], xlabel="block address",
           title=title or f"buddy: {buddy.num_free_blocks} free, largest run {buddy.largest_free_run()}, "
                          f"external fragmentation {buddy.external_fragmentation():.0%}")
    return ax
