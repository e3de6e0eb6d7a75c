"""KV-cache bytes per token: MHA vs GQA vs MQA vs MLA at equal model width, by arithmetic AND by allocation.

Per token and layer a cache holds
    MHA: 2 * H * d_h          (a K and a V row for every head)
    GQA: 2 * G * d_h          (G key/value heads, each shared by H/G query heads)
    MQA: 2 * d_h              (G = 1)
    MLA: d_c + d_r            (one latent row c and one shared rope key: 512 + 64 = 576 in DeepSeek-V3)

NOTE: "equal model width" means the same hidden size, query heads and head dim (DeepSeek-V3's 7168 / 128 / 128);
only the cache layout changes. The allocated figures come from constructing the real cache objects
(`ContiguousKVCache`, `LatentCache`) and dividing their bytes by layers x tokens, so the arithmetic is checked against
what the code actually allocates.

    python -m phase2_mla.kv_arith          # writes phase2_mla/results/kv_bytes.json
"""
from __future__ import annotations

import sys

import torch

from common.bench import write_result
from common.config import ModelConfig, get_preset
from common.deepseek import LatentCache
from common.kv_cache import ContiguousKVCache


def attention_variants(mla: ModelConfig, gqa_groups: int = 8) -> dict[str, ModelConfig]:
    """Llama-style configs with MLA's width and query heads: MHA, GQA (gqa_groups KV heads), MQA; plus MLA itself."""
    head_dim = mla.v_head_dim or mla.qk_nope_head_dim
    base = ModelConfig(vocab_size=mla.vocab_size, hidden_size=mla.hidden_size, num_hidden_layers=mla.num_hidden_layers,
                       num_attention_heads=mla.num_attention_heads, num_key_value_heads=mla.num_attention_heads,
                       head_dim=head_dim)
    return {"MHA": base, f"GQA-{gqa_groups}": base.replace(num_key_value_heads=gqa_groups),
            "MQA": base.replace(num_key_value_heads=1), "MLA": mla}


def elements_per_token_layer(cfg: ModelConfig) -> int:
    if cfg.kv_lora_rank is not None:
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.num_key_value_heads * cfg.head_dim


def allocated_bytes_per_token_layer(cfg: ModelConfig, dtype: torch.dtype = torch.bfloat16, tokens: int = 64) -> float:
    """Bytes a real cache object allocates, per token and layer (one layer, batch 1; torch.empty: nothing touched)."""
    one = cfg.replace(num_hidden_layers=1)
    cache = (LatentCache(one, 1, tokens, dtype=dtype) if cfg.kv_lora_rank is not None
             else ContiguousKVCache(one, 1, tokens, dtype=dtype))
    return cache.nbytes() / tokens


def kv_table(mla: ModelConfig, gqa_groups: int = 8, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Rows per variant (elements and bytes per token-layer, bytes per token over all layers, allocated bytes) and
    the ratios MLA / MHA and MLA / GQA."""
    es = torch.empty(0, dtype=dtype).element_size()
    rows = {}
    for name, cfg in attention_variants(mla, gqa_groups).items():
        e = elements_per_token_layer(cfg)
        rows[name] = {"elements_per_token_layer": e, "bytes_per_token_layer": e * es,
                      "bytes_per_token_all_layers": e * es * cfg.num_hidden_layers,
                      "allocated_bytes_per_token_layer": allocated_bytes_per_token_layer(cfg, dtype)}
    mla_b, gqa_b = rows["MLA"]["bytes_per_token_layer"], rows[f"GQA-{gqa_groups}"]["bytes_per_token_layer"]
    return {"dtype": str(dtype).replace("torch.", ""), "hidden_size": mla.hidden_size,
            "num_attention_heads": mla.num_attention_heads, "head_dim": attention_variants(mla)["MHA"].head_dim,
            "num_layers": mla.num_hidden_layers, "gqa_groups": gqa_groups, "rows": rows,
            "mla_over_mha": mla_b / rows["MHA"]["bytes_per_token_layer"], "mla_over_gqa": mla_b / gqa_b,
            "reduction_vs_gqa": 1 - mla_b / gqa_b,
            "gqa_kv_heads_matching_mla": elements_per_token_layer(mla) / (2 * attention_variants(mla)["MHA"].head_dim)}


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(
        [] if argv is None else argv)
    out = {name: kv_table(get_preset(name), groups) for name, groups in (("deepseek-v3", 8), ("deepseek-v3-tiny", 2))}
    for name, t in out.items():
        print(f"{name}: width {t['hidden_size']}, {t['num_attention_heads']} heads x {t['head_dim']}, {t['dtype']}")
        for v, r in t["rows"].items():
            print(f"  {v:<6} {r['elements_per_token_layer']:>6} elements/token/layer  "
                  f"{r['bytes_per_token_all_layers'] / 1024:>9.1f} KiB/token ({t['num_layers']} layers)  "
                  f"allocated {r['allocated_bytes_per_token_layer']:.0f} B/token/layer")
        print(f"  MLA/MHA = {t['mla_over_mha']:.4f}, MLA/GQA-{t['gqa_groups']} = {t['mla_over_gqa']:.3f} "
              f"({t['reduction_vs_gqa']:.1%} smaller)")
    write_result("phase2_mla", "kv_bytes", {"configs": out})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
