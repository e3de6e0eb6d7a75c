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
