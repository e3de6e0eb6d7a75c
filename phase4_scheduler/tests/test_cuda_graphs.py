"""Decode CUDA graphs: the size ladder, the input plumbing, and (GPU) replay == eager."""
import pytest
import torch

from phase4_scheduler.cuda_graphs import capture_sizes
from phase4_scheduler.model_runner import ModelRunner, as_cpu_tensor, pad_tables


def test_capture_sizes_ladder():
    assert capture_sizes(1) == [1]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(20) == [1, 2, 4, 8, 16, 20]
    s = capture_sizes(256)
    assert s[:5] == [1, 2, 4, 8, 16] and s[-1] == 256 and all(b % 8 == 0 for b in s[3:])
    big = capture_sizes(1000)
    assert big[-1] == 1000 and 960 in big and 264 not in big and len(big) < 50


def test_inputs_as_lists_or_tensors():
    assert pad_tables([[3, 1], [7]]).tolist() == [[3, 1], [7, 0]]
    assert pad_tables(torch.tensor([[3, 1], [7, 0]]), width=4).tolist() == [[3, 1, 0, 0], [7, 0, 0, 0]]
    assert pad_tables([[3]], width=3).dtype == torch.int32
    assert as_cpu_tensor([1, 2], torch.long).tolist() == as_cpu_tensor(torch.tensor([1, 2]), torch.long).tolist()


def test_graphs_refuse_cpu():
    from common.model_loader import load_model

    lm = load_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1)
    with pytest.raises(RuntimeError, match="CUDA"):
        ModelRunner(lm, num_blocks=8, block_size=16, cuda_graph=True)
    r = ModelRunner(lm, num_blocks=8, block_size=16)
    assert r.graphs is None and r.k_cache.shape[1] == 9  # 8 usable blocks + the scratch block
    assert "8 blocks" in repr(r)


@pytest.mark.gpu
def test_graph_replay_matches_eager_decode():
    from common.model_loader import load_model

    lm = load_model("tinyllama-1.1b", device="cuda", dtype=torch.float32, random_weights=True, num_layers=2)
    runners = [ModelRunner(lm, num_blocks=64, block_size=16, cuda_graph=g, max_num_seqs=8, max_model_len=256)
               for g in (True, False)]
    assert runners[0].graphs is not None and runners[1].graphs is None
    gen = torch.Generator().manual_seed(0)
    lens = [5, 33, 17]  # B=3 replays the B=4 graph: one padding row
    tables = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    prompt = [torch.randint(100, 30000, (n,), generator=gen).tolist() for n in lens]
    def slots(seq, first, n):
        return [tables[seq][p // 16] * 16 + p % 16 for p in range(first, first + n)]
    ids = sum(prompt, [])
    pos = sum((list(range(n)) for n in lens), [])
    sl = sum((slots(i, 0, n) for i, n in enumerate(lens)), [])
    last = [r.execute(ids, pos, lens, lens, tables, sl) for r in runners]  # mixed prefill: eager in both
    torch.testing.assert_close(last[0], last[1])
    for step in range(6):
        toks = last[1].argmax(-1).tolist()
        p = [n + step for n in lens]
        args = (toks, p, [1, 1, 1], [n + 1 for n in p], tables, [slots(i, n, 1)[0] for i, n in enumerate(p)])
        last = [r.execute(*args).clone() for r in runners]
        torch.testing.assert_close(last[0], last[1], rtol=1e-4, atol=1e-4)
    assert last[0].shape[0] == 3


def test_static_buffer_path_matches_eager_on_cpu():
    """The graph path's plumbing (staging, padding rows, scratch block) without capture: same logits as eager."""
    from common.model_loader import load_model
    from phase4_scheduler.cuda_graphs import DecodeGraphs

    lm = load_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1)
    runner = ModelRunner(lm, num_blocks=16, block_size=4)
    graphs = DecodeGraphs(runner, max_num_seqs=4, max_model_len=32, capture=False)
    tables = [[0, 1, 2], [5, 6, 7], [9, 10, 11]]
    lens = [6, 9, 3]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, 30000, (sum(lens),), generator=gen).tolist()
    pos = sum((list(range(n)) for n in lens), [])
    sl = [tables[i][p // 4] * 4 + p % 4 for i, n in enumerate(lens) for p in range(n)]
    runner.execute(ids, pos, lens, lens, tables, sl)
    args = ([11, 12, 13], lens, [1, 1, 1], [n + 1 for n in lens], tables,
            [tables[i][n // 4] * 4 + n % 4 for i, n in enumerate(lens)])
    k_before = runner.k_cache.clone()
    got = graphs.run(*args[:2], *args[3:])  # B=3 -> the size-4 buffers with one padding row
    assert got.data_ptr() == graphs.logits.data_ptr()  # all sizes convert into one logits buffer
    got = got.clone()
    written = (runner.k_cache != k_before).any(-1).any(-1).nonzero()[:, 1].unique().tolist()  # blocks touched
    runner.k_cache.copy_(k_before)
    want = runner.execute(*args)
    torch.testing.assert_close(got, want)
    assert set(written) == {s // 4 for s in args[5]} | {runner.null_block}  # the new slots' blocks + the scratch page


def test_static_buffers_repad_rows_a_larger_step_left_and_gather_overlapped_ids():
    """One staging copy a step: after a B=4 step, a B=3 step replays the same size-4 graph, and its 4th row must be
    padding again (a stale slot would write K/V into a block another request owns). An overlapped step's ids come
    from the previous step's tokens on the device (token_src): same logits as passing the ids."""
    from common.model_loader import load_model
    from phase4_scheduler.cuda_graphs import DecodeGraphs

    lm = load_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1)
    runner = ModelRunner(lm, num_blocks=16, block_size=4)
    graphs = DecodeGraphs(runner, max_num_seqs=4, max_model_len=32, capture=False)
    tables = [[0, 1], [4, 5], [8, 9], [12, 13]]

    def step(lens, ids, token_src=None):
        b = len(lens)
        slots = [tables[i][n // 4] * 4 + n % 4 for i, n in enumerate(lens)]
        before = runner.k_cache.clone()
        out = graphs.run(ids, lens, [n + 1 for n in lens], tables[:b], slots, token_src).clone()
        touched = set((runner.k_cache != before).any(-1).any(-1).nonzero()[:, 1].tolist())
        pad = {runner.null_block} if b < 4 else set()  # padding rows write the scratch block only
        assert touched == {s // 4 for s in slots} | pad, (touched, slots)
        runner.k_cache.copy_(before)  # the next step writes these slots afresh
        return out

    step([3, 2, 5, 1], [11, 12, 13, 14])
    want = step([4, 3, 6], [21, 22, 23])  # size 4 again: row 3 re-padded
    assert graphs.filled == 3 and int(graphs.slots[3]) == runner.null_block * runner.block_size
    tokens = torch.tensor([0, 23, 0, 21, 22])  # the "previous step's" tokens, on the device (here the CPU)
    got = step([4, 3, 6], None, (tokens, torch.tensor([3, 4, 1])))
    torch.testing.assert_close(got, want)
    assert graphs.ids[:3].tolist() == [21, 22, 23] and int(graphs.ids[3]) == 0
    # step shapes (ModelRunner.step_shapes): three replays of 4 + 3 + 3 rows, each of the size-4 graph
    assert (graphs.steps, graphs.tokens, graphs.padded_tokens) == (3, 10, 12)


def _staged(n: int, w: int, seed: int):
    """A staging layout's views (ids, pos, slots, rows, lens, tables) filled with random values, rows half -1."""
    g = torch.Generator().manual_seed(seed)
    i64 = lambda: torch.randint(0, 10_000, (n,), generator=g)  # noqa: E731
    rows = torch.randint(0, 6, (n,), generator=g)
    rows[torch.rand(n, generator=g) < 0.5] = -1
    return (i64(), i64(), i64(), rows, torch.randint(1, 500, (n,), generator=g, dtype=torch.int32),
            torch.randint(0, 64, (n, w), generator=g, dtype=torch.int32))


@pytest.mark.parametrize("n,rows_used,w", [(4, 3, 5), (2048, 1100, 3), (8, 8, 1)])
def test_stage_inputs_kernel_matches_its_reference(n, rows_used, w):
    """graph_io.stage_inputs (Triton; the interpreter here) writes rows [0, rows_used) of every buffer, ids gathered
    from tok where rows >= 0, and nothing past them."""
    from phase4_scheduler.graph_io import stage_inputs, stage_inputs_ref

    host = _staged(n, w, seed=n)
    tok = torch.randint(0, 30_000, (6,), generator=torch.Generator().manual_seed(1))
    outs = []
    for fn in (stage_inputs, stage_inputs_ref):
        dev = tuple(torch.full_like(t, -7) for t in host)
        fn(host, dev, tok, rows_used)
        outs.append(dev)
    for got, want in zip(*outs):
        assert torch.equal(got, want)
    ids = outs[0][0]
    r = host[3][:rows_used]
    assert torch.equal(ids[:rows_used], torch.where(r >= 0, tok[r.clamp(min=0)], host[0][:rows_used]))
    assert (ids[rows_used:] == -7).all() and (outs[0][5][rows_used:] == -7).all()  # untouched past the rows
    with pytest.raises(ValueError, match="rows"):
        stage_inputs(host, outs[0], tok, n + 1)


def test_direct_graph_io_matches_the_copy_path_on_cpu():
    """TITAN_GRAPH_IO=direct's plumbing without capture (its kernels under the interpreter): staging by parity, ids
    gathered from the graphs' own token buffer, the greedy tokens on the device and in the host buffer, re-padding --
    the same logits as the copy path, step after step, and graph_tokens = their argmax."""
    from common.model_loader import load_model
    from phase4_scheduler.cuda_graphs import DecodeGraphs

    lm = load_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1)
    runner = ModelRunner(lm, num_blocks=24, block_size=4)
    copy = DecodeGraphs(runner, max_num_seqs=4, max_model_len=32, capture=False, io="copy")
    direct = DecodeGraphs(runner, max_num_seqs=4, max_model_len=32, capture=False, io="direct")
    with pytest.raises(ValueError, match="io="):
        DecodeGraphs(runner, max_num_seqs=4, max_model_len=32, capture=False, io="dma")
    tables = [[0, 1, 2], [4, 5, 6], [8, 9, 10], [12, 13, 14]]

    def run(graphs, lens, ids, token_src=None):
        b = len(lens)
        slots = [tables[i][n // 4] * 4 + n % 4 for i, n in enumerate(lens)]
        before = runner.k_cache.clone()
        out = graphs.run(ids, lens, [n + 1 for n in lens], tables[:b], slots, token_src).clone()
        runner.k_cache.copy_(before)  # both paths write the same slots: each starts from the same cache
        return out

    want = run(copy, [3, 2, 5, 1], [11, 12, 13, 14])
    got = run(direct, [3, 2, 5, 1], [11, 12, 13, 14])
    torch.testing.assert_close(got, want)
    tok, host, done = runner.graph_tokens
    assert done is None and torch.equal(tok, want.argmax(-1)) and torch.equal(host, tok)
    assert tok.data_ptr() == direct.tok.data_ptr() and direct.k == 1
    # an overlapped step of 3 rows: ids = the previous step's tokens, gathered on the device from direct.tok
    prev = tok.clone()
    src_rows = torch.tensor([2, 0, 3])
    want = run(copy, [4, 3, 6], None, (prev, src_rows))
    got = run(direct, [4, 3, 6], None, (tok, src_rows))  # parity 1: the other staging buffer
    torch.testing.assert_close(got, want)
    assert direct.ids[:3].tolist() == prev[src_rows].tolist() and int(direct.ids[3]) == 0  # row 3 padding
    assert direct.staging[1].filled == 3 and direct.filled == 3
    # tokens of a step outside these graphs (another tensor): copied into tok first, then gathered
    other = torch.tensor([7, 8, 9, 10])
    want = run(copy, [5, 4], None, (other, torch.tensor([3, 1])))
    got = run(direct, [5, 4], None, (other, torch.tensor([3, 1])))
    torch.testing.assert_close(got, want)
    assert direct.ids[:2].tolist() == [10, 8] and direct.staging[0].filled == 2 and direct.k == 3
    assert torch.equal(runner.graph_tokens[0], want.argmax(-1))
    with pytest.raises(ValueError, match="max_num_seqs"):
        direct.run(None, [1], [2], tables[:1], [1], (torch.arange(5), torch.tensor([0])))


def test_stage_kernel_compiles_for_the_h100():
    pytest.importorskip("triton.backends.nvidia.compiler")
    from common.ptxas import hopper_resources_subprocess
    from phase4_scheduler import graph_io as gi

    sig = dict(h_ids="*i64", h_rows="*i64", h_pos="*i64", h_slots="*i64", h_lens="*i32", h_tables="*i32",
               tok="*i64", ids="*i64", pos="*i64", slots="*i64", lens="*i32", tables="*i32", n="i32", n_tab="i32")
    r = hopper_resources_subprocess("phase4_scheduler.graph_io", "stage_inputs_kernel", sig,
                                    dict(BLOCK=gi.STAGE_BLOCK), 4, 3)
    assert not r["ptxas_error"] and r["spill_store_bytes"] == 0, r


@pytest.mark.gpu
def test_gpu_direct_graph_io_matches_copy_and_writes_host_tokens():
    """On the GPU: graphs reading pinned staging and writing pinned tokens (io="direct") give the copy path's
    logits, step after step with ids gathered from the previous step's tokens, and their host tokens (after the
    step's event) are the argmax of those logits."""
    from common.model_loader import load_model
    from phase4_scheduler.cuda_graphs import DecodeGraphs

    lm = load_model("tinyllama-1.1b", device="cuda", dtype=torch.float32, random_weights=True, num_layers=2)
    runner = ModelRunner(lm, num_blocks=64, block_size=16, cuda_graph=False, max_num_seqs=8, max_model_len=256)
    g = {io: DecodeGraphs(runner, 8, 256, io=io) for io in ("copy", "direct")}
    assert len(g["direct"].graphs) == 2 * len(g["direct"].sizes) and g["direct"].host_tok[0].is_pinned()
    tables = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    lens = [5, 33, 17]
    toks = {"copy": torch.tensor([101, 202, 303], device="cuda"), "direct": None}
    for step in range(5):
        p = [n + step for n in lens]
        args = (p, [n + 1 for n in p], tables, [tables[i][n // 16] * 16 + n % 16 for i, n in enumerate(p)])
        out = {}
        for io, graphs in g.items():
            before = runner.k_cache.clone()
            if io == "direct" and toks[io] is None:
                logits = graphs.run([101, 202, 303], *args)
            else:
                logits = graphs.run(None, *args, (toks[io], torch.tensor([2, 0, 1]) if step else torch.arange(3)))
            out[io] = logits.clone()
            if io == "copy":
                toks[io] = logits.argmax(-1)
                runner.k_cache.copy_(before)
            else:
                tok, host, done = runner.graph_tokens
                done.synchronize()
                assert torch.equal(tok, logits.argmax(-1)) and host.tolist() == tok.tolist()
                toks[io] = tok
        torch.testing.assert_close(out["direct"], out["copy"], rtol=1e-4, atol=1e-4)


def test_direct_graph_io_falls_back_to_copying_with_a_warning(monkeypatch):
    """A device that cannot read the pinned staging buffer (Triton refuses the pointer): the graphs copy instead."""
    from common.model_loader import load_model
    from phase4_scheduler import cuda_graphs

    def refuse(*a, **k):
        raise ValueError("Pointer argument (at 0) cannot be accessed from Triton (cpu tensor?)")

    monkeypatch.setattr(cuda_graphs, "stage_inputs", refuse)
    lm = load_model("tinyllama-1.1b", device="cpu", random_weights=True, num_layers=1)
    runner = ModelRunner(lm, num_blocks=8, block_size=4)
    with pytest.warns(RuntimeWarning, match="TITAN_GRAPH_IO=copy"):
        g = cuda_graphs.DecodeGraphs(runner, max_num_seqs=2, max_model_len=16, capture=False, io="direct")
    assert g.io == "copy" and len(g.staging) == 1 and not g.host_tok and set(g.graphs) == {(1, 0), (2, 0)}
    out = g.run([5], [3], [4], [[0]], [3])
    assert out.shape == (1, lm.config.vocab_size) and runner.graph_tokens is None
