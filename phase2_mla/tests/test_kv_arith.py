"""KV-cache arithmetic: the formulas agree with what the cache objects allocate; MLA vs GQA at DeepSeek-V3 width."""
import json

import pytest

from common.config import get_preset
from phase2_mla import kv_arith


def test_arithmetic_equals_allocation_for_every_variant():
    t = kv_arith.kv_table(get_preset("deepseek-v3"))
    for name, row in t["rows"].items():
        assert row["allocated_bytes_per_token_layer"] == row["bytes_per_token_layer"], name


def test_deepseek_v3_numbers():
    t = kv_arith.kv_table(get_preset("deepseek-v3"), gqa_groups=8)
    rows = t["rows"]
    assert rows["MLA"]["elements_per_token_layer"] == 512 + 64
    assert rows["MHA"]["elements_per_token_layer"] == 2 * 128 * 128
    assert rows["GQA-8"]["elements_per_token_layer"] == 2 * 8 * 128
    assert t["mla_over_gqa"] == pytest.approx(576 / 2048)
    assert t["reduction_vs_gqa"] >= 0.5  # the seed's "at least 50% less than GQA"
    assert t["gqa_kv_heads_matching_mla"] == pytest.approx(2.25)


def test_main_writes_results(tmp_path, monkeypatch):
    monkeypatch.setenv("TITAN_RESULTS_DIR", str(tmp_path))
    assert kv_arith.main([]) == 0
    data = json.loads((tmp_path / "kv_bytes.json").read_text())
    assert data["configs"]["deepseek-v3"]["rows"]["MLA"]["bytes_per_token_layer"] == 1152
    assert "provenance" in data
