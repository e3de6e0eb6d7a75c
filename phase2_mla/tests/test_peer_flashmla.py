"""peer_flashmla (FlashMLA beside the seesaw on the GPU machine): the adapter hands FlashMLA's op our cache in its
layout and reuses the scheduler metadata; a missing extension and bad arguments are clear errors here."""
import pytest
import torch

from phase2_mla import peer_flashmla as pf
from phase2_mla.mla_decode import mla_paged_decode_ref


class FakeFlashMLA:
    """FlashMLA's documented contract for dense decode (q [B, 1, H, 576], k_cache [pages, page, 1, 576], int32 block
    table and lengths; returns out [B, 1, H, 512], lse, metadata, splits), computed by our reference."""

    def __init__(self):
        self.metas = []

    def dense_decode_fwd(self, q, kc, dv, lens, bt, scale, causal, meta, splits, out):
        assert q.dim() == 4 and q.shape[1] == 1 and kc.dim() == 4 and kc.shape[2] == 1 and not causal and out is None
        assert bt.dtype == torch.int32 and lens.dtype == torch.int32
        self.metas.append(meta)
        q = q[:, 0]
        o = mla_paged_decode_ref(q[..., :dv].contiguous(), q[..., dv:].contiguous(), kc[:, :, 0], bt, lens, scale)
        return o.unsqueeze(1), None, torch.zeros(4, 8, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)


def test_adapter_passes_our_cache_in_flashmla_layout_and_reuses_metadata():
    g = torch.Generator().manual_seed(3)
    b, h, dc, dr, page, lens = 3, 4, 512, 64, 64, [1, 70, 130]
    kv = torch.randn(9, page, dc + dr, generator=g).bfloat16()
    bt = torch.randperm(9, generator=g)[:9].to(torch.int32).view(b, 3)
    q_lat = torch.randn(b, h, dc, generator=g).bfloat16()
    q_pe = torch.randn(b, h, dr, generator=g).bfloat16()
    seq = torch.tensor(lens, dtype=torch.int32)
    ops = FakeFlashMLA()
    fn = pf.flashmla_call(ops, q_lat, q_pe, kv, bt, seq, 0.07)
    out = fn()
    torch.testing.assert_close(out, mla_paged_decode_ref(q_lat, q_pe, kv, bt, seq, 0.07))
    assert ops.metas[0] is None and ops.metas[1] is not None  # the first call computes it, later calls reuse it


def test_missing_extension_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="device_carry"):
        pf.load_flashmla(tmp_path)


def test_bad_cases_argument_is_rejected(capsys):
    with pytest.raises(SystemExit):
        pf.main(["--cases", "128by64"])
    assert "HEADSxBATCH" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this runs the benchmark")
def test_needs_hopper_and_says_so(capsys):
    assert pf.main(["--cases", "16x2"]) == 1
    assert "needs a Hopper GPU" in capsys.readouterr().out
