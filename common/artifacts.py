"""The seam: one table naming every deliverable of every phase, resolved lazily on first use.

Later phases, the engine, the tests and the gates reach earlier phases ONLY through `get(name)`. The table is also
the course's table of contents. To run everything on your own implementation of an entry, override it:

    TITAN_ARTIFACTS="allocator.block=my_pkg.alloc:MyAllocator,attention.paged_decode=my_pkg.attn:decode"
    # or a file named by TITAN_ARTIFACTS_FILE with one `name = module:attr` per line (# comments allowed)

    from common import artifacts
    BlockAllocator = artifacts.get("allocator.block")
"""
from __future__ import annotations

import difflib
import importlib
import os
from pathlib import Path

from common.errors import TitanError

# name -> "module:attribute". Grouped by phase; an entry exists once its phase has built it.
TABLE: dict[str, str] = {
    # common: the foundation
    "model.config": "common.config:ModelConfig",
    "model.llama": "common.llama:LlamaForCausalLM",
    "model.load": "common.model_loader:load_model",
    "attention.ref": "common.attention:attention_ref",
    "kv_cache.contiguous": "common.kv_cache:ContiguousKVCache",
    "sampling.sample": "common.sampling:sample",
    # phase 0: roofline in practice
    "engine.generate_no_cache": "phase0_tinyllama.inference_v0:generate",
    "engine.generate": "phase0_tinyllama.inference_v1:generate",
    "engine.stream": "phase0_tinyllama.inference_v1:stream_kv_cache",
    "kernels.cuda_basics": "phase0_tinyllama.cuda_kernels:CudaKernels",
    "roofline.plot": "phase0_tinyllama.roofline:plot_roofline",
    # phase 1: the KV-cache block manager (Rust crate kv_cache_manager; *_ref = the Python reference, same API)
    "allocator.block": "phase1_rust_allocator.rust:BlockAllocator",
    "allocator.block_ref": "phase1_rust_allocator.reference:BlockAllocator",
    "allocator.buddy": "phase1_rust_allocator.rust:BuddyAllocator",
    "allocator.buddy_ref": "phase1_rust_allocator.reference:BuddyAllocator",
    "allocator.block_table": "phase1_rust_allocator.rust:BlockTableManager",
    "allocator.block_table_ref": "phase1_rust_allocator.reference:BlockTableManager",
    "allocator.out_of_blocks": "phase1_rust_allocator.errors:OutOfBlocksError",
    # phase 2: DeepSeek MLA (the reference model lives in common/deepseek.py), RoPE kernels, paged MLA decode
    "model.deepseek": "common.deepseek:DeepseekV3ForCausalLM",
    "kv_cache.latent": "common.deepseek:LatentCache",
    "rope.triton": "phase2_mla.rope:rope_",
    "rope.cuda": "phase2_mla.rope_cuda:rope_cuda_",
    "rope.ref": "phase2_mla.rope:rope_ref",
    "attention.mla_paged_decode": "phase2_mla.mla_decode:mla_paged_decode",
    "attention.mla_paged_decode_ref": "phase2_mla.mla_decode:mla_paged_decode_ref",
    "kv_cache.paged_latent": "phase2_mla.paged_latent_cache:PagedLatentCache",
    "mla.check_vs_hf": "phase2_mla.hf_oracle:check_against_hf",
    "mla.kv_table": "phase2_mla.kv_arith:kv_table",
    # phase 3: Triton PagedAttention (decode, prefill), FP8 KV cache, the paged cache the model runs on
    "kv_cache.paged": "phase3_paged_fp8.paged_cache:PagedKVCache",
    "kv_cache.write": "phase3_paged_fp8.cache_write:write_kv_cache",
    "kv_cache.write_ref": "phase3_paged_fp8.cache_write:write_kv_cache_ref",
    "kv_cache.fp8_quantize": "phase3_paged_fp8.cache_write:quantize_fp8_ref",
    "kv_cache.fp8_quantize_jit": "phase3_paged_fp8.cache_write:quantize_e4m3",  # @triton.jit: the cache's quantiser
    "attention.fp8_token_scales_jit": "phase3_paged_fp8.paged_decode:token_scales",  # @triton.jit: cached K/V scales
    "attention.paged_decode": "phase3_paged_fp8.paged_decode:paged_decode",
    "attention.paged_decode_ref": "phase3_paged_fp8.paged_decode:paged_decode_ref",
    "attention.paged_decode_plan": "phase3_paged_fp8.paged_decode:decode_plan",
    "attention.paged_prefill": "phase3_paged_fp8.paged_prefill:paged_prefill",
    "attention.paged_prefill_ref": "phase3_paged_fp8.paged_prefill:paged_prefill_ref",
    # phase 4: the serving engine (scheduler, KV-cache manager, model runner, offline and async front ends)
    "engine.llm": "phase4_scheduler.llm:LLM",
    "engine.async": "phase4_scheduler.async_engine:AsyncEngine",
    "engine.process": "phase4_scheduler.process_engine:ProcessEngine",
    "engine.core": "phase4_scheduler.engine:LLMEngine",
    "engine.scheduler": "phase4_scheduler.scheduler:Scheduler",
    "engine.kv_cache_manager": "phase4_scheduler.kv_manager:KVCacheManager",
    "server.app": "phase4_scheduler.server:create_app",
    "bench.offline": "phase4_scheduler.bench_offline:main",
    "bench.serve": "phase4_scheduler.bench_serve:main",
    "engine.static_batching": "phase4_scheduler.static_batching:static_engine",
    "engine.cuda_graphs": "phase4_scheduler.cuda_graphs:DecodeGraphs",
    "engine.mixed_graphs": "phase4_scheduler.mixed_graphs:MixedGraphs",
    "model.fuse": "phase4_scheduler.fused_model:fuse_model",
    "attention.decode_fused": "phase4_scheduler.decode_attention:decode_attention",
    "attention.decode_fused_ref": "phase4_scheduler.decode_attention:decode_attention_ref",
    "kernels.skinny_linear": "phase4_scheduler.skinny_gemm:linear",
    "bench.latency": "phase4_scheduler.bench_latency:main",
}

_cache: dict[str, object] = {}


class ArtifactImportError(TitanError, ImportError):
    """An entry's module cannot be imported. An ImportError, so callers that fall back (phase 1's Rust wheel not
    built -> its Python reference) still do."""


class ArtifactAttributeError(TitanError, AttributeError):
    """An entry's module imports but has no such attribute."""


def _check_override(name: str, tgt: str, where: str) -> None:
    """NOTE: an override is checked when read. A misspelt name was added as a new entry that nothing asks for, so
    the learner's implementation silently never ran; a target without 'module:attr' failed only when used."""
    if name not in TABLE:
        close = difflib.get_close_matches(name, TABLE, n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"{where}: {name!r} is not an artifact name, so this override would be ignored. {hint}"
                         f"Known names: {', '.join(sorted(TABLE))} (artifacts.register adds new ones).")
    mod, _, attr = tgt.partition(":")
    if not (mod and attr):
        raise ValueError(f"{where}: {name!r} -> {tgt!r} must be 'module:attribute', e.g. "
                         f"{name}={TABLE[name]}")


def _overrides() -> dict[str, str]:
    out: dict[str, str] = {}
    f = os.environ.get("TITAN_ARTIFACTS_FILE")
    if f:
        if not Path(f).is_file():
            raise FileNotFoundError(f"TITAN_ARTIFACTS_FILE={f!r} is not a file: create it (one `name = module:attr` "
                                    "per line) or unset the variable")
        for i, line in enumerate(Path(f).read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                k, _, v = line.partition("=")
                _check_override(k.strip(), v.strip(), f"{f} line {i}")
                out[k.strip()] = v.strip()
    for item in filter(None, os.environ.get("TITAN_ARTIFACTS", "").split(",")):
        k, _, v = item.partition("=")
        _check_override(k.strip(), v.strip(), "TITAN_ARTIFACTS")
        out[k.strip()] = v.strip()
    return out


def target(name: str) -> str:
    """The "module:attr" an entry currently points at (after overrides)."""
    table = {**TABLE, **_overrides()}
    if name not in table:
        raise KeyError(f"no artifact named {name!r}; known: {', '.join(sorted(table))}")
    return table[name]


def get(name: str):
    """Import and return the object behind an entry (cached)."""
    tgt = target(name)
    if (name, tgt) not in _cache:
        mod, _, attr = tgt.partition(":")
        if not (mod and attr):
            raise ValueError(f"artifact {name!r} -> {tgt!r} must be 'module:attribute'")
        src = "an override" if tgt != TABLE.get(name) else "the table"
        try:
            obj = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            raise ArtifactImportError(f"artifact {name!r} -> {tgt!r} (from {src}): cannot import {mod!r} ({e}). "
                                      "Check the module path and that its package is installed / on PYTHONPATH.",
                                      name=e.name) from e
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ArtifactAttributeError(f"artifact {name!r} -> {tgt!r} (from {src}): {obj!r} has no attribute "
                                             f"{part!r}. Check the spelling after the ':'.")
            obj = getattr(obj, part)
        _cache[(name, tgt)] = obj
    return _cache[(name, tgt)]


def get_or_fallback(name: str, fallback: str):
    """(object, the entry it came from): entry `name`, else -- only when the TABLE's own target cannot be imported
    (phase 1's Rust wheel not built on this machine) -- entry `fallback`. A learner's override that fails to load
    raises: falling back would silently run the reference instead of their code."""
    try:
        return get(name), name
    except ImportError:
        if target(name) != TABLE.get(name):
            raise
        return get(fallback), fallback


def register(name: str, tgt: str) -> None:
    """Add or replace an entry at run time (tests and notebooks use this)."""
    TABLE[name] = tgt


def table_of_contents() -> str:
    """The table as text, one line per entry, marking overridden entries."""
    ov = _overrides()
    width = max(map(len, {**TABLE, **ov}))
    return "\n".join(f"{k:<{width}}  {v}{'  (override)' if k in ov else ''}" for k, v in {**TABLE, **ov}.items())
