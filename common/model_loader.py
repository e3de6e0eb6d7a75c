"""`--model` resolution: a preset name, a .gguf file, an HF checkpoint directory, or an HF repo id in the local cache.

    lm = load_model("smollm2-135m")                 # the GGUF fetched by `make setup`
    lm = load_model("tinyllama-1.1b", random_weights=True, device="cuda", dtype="bf16")
    lm = load_model("/path/to/TinyLlama-1.1B-Chat-v1.0")
    lm = load_model("TinyLlama/TinyLlama-1.1B-Chat-v1.0")   # found in ~/.cache/huggingface/hub
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from common import assets
from common.config import PRESETS, ModelConfig, get_preset
from common.device import resolve_device, resolve_dtype
from common.errors import InvalidOptionError, ModelNotFoundError
from common.tokenizer import Tokenizer, load_tokenizer_from_dir, load_tokenizer_from_gguf
from common.weights import load_gguf, load_hf_dir, random_state_dict

# Where a preset's real weights come from: an asset fetched by make setup, or an HF repo id in the local cache.
PRESET_SOURCES = {"smollm2-135m": ("asset", "smollm2-gguf"),
                  "tinyllama-1.1b": ("hf", "TinyLlama/TinyLlama-1.1B-Chat-v1.0")}


@dataclass
class LoadedModel:
    config: ModelConfig
    model: torch.nn.Module
    tokenizer: Tokenizer | None
    source: str
    device: torch.device
    dtype: torch.dtype

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"LoadedModel({self.source}, {n / 1e6:.1f}M params, layers={self.config.num_hidden_layers}, "
                f"device={self.device}, dtype={self.dtype})")


def model_class(cfg: ModelConfig):
    """The reference model class for a config: DeepSeek-V3 (MLA) or Llama."""
    if cfg.model_type == "deepseek_v3":
        from common.deepseek import DeepseekV3ForCausalLM

        return DeepseekV3ForCausalLM
    from common.llama import LlamaForCausalLM

    return LlamaForCausalLM


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def find_in_hf_cache(repo_id: str, revision: str = "main") -> Path | None:
    """The snapshot directory of an HF repo id in the local hub cache, or None."""
    repo = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / revision
    if ref.is_file():
        snap = repo / "snapshots" / ref.read_text().strip()
        return snap if snap.is_dir() else None
    snaps = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime) if repo.is_dir() else []
    return snaps[-1] if snaps else None


def _looks_like_path(spec: str) -> bool:
    return spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or os.sep in spec.strip("/").split("/", 1)[-1]


def resolve_weights(spec: str, random_weights: bool = False, seed: int = 0):
    """(config, state_dict or None, tokenizer or None, description)."""
    if spec in PRESETS:
        cfg = get_preset(spec)
        kind, where = PRESET_SOURCES.get(spec, (None, None))
        if random_weights:
            gguf_path = assets.asset_path("smollm2-gguf")  # the tokenizer, where the asset is here
            tok = load_tokenizer_from_gguf(gguf_path) if spec == "smollm2-135m" and gguf_path.exists() else None
            return cfg, None, tok, f"{spec} (random weights, seed {seed})"
        if kind == "asset":
            return resolve_weights(str(assets.require(where)))
        snap = find_in_hf_cache(where) if kind == "hf" else None
        if snap is None:
            raise ModelNotFoundError(
                f"no weights for preset {spec!r}: {where} is not in the HF cache ({hf_cache_dir()}). Download it "
                f"(`huggingface-cli download {where}`), pass an HF directory or .gguf with --model, or add "
                "--random-weights to run its shapes with random weights.")
        return resolve_weights(str(snap))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf" or path.is_file():
        cfg, state = load_gguf(path)
        return cfg, state, load_tokenizer_from_gguf(path), f"GGUF {path.name}"
    if path.is_dir():
        cfg, state = load_hf_dir(path)
        tok = load_tokenizer_from_dir(path) if any(path.glob("tokenizer*")) else None
        return cfg, state, tok, f"HF dir {path}"
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")):
        snap = find_in_hf_cache(spec)
        if snap is not None:
            return resolve_weights(str(snap))
        if not path.parent.exists():
            raise ModelNotFoundError(
                f"model {spec!r} is neither a local path nor an HF repo id in the HF cache ({hf_cache_dir()}). "
                f"Download it with `huggingface-cli download {spec}` or pass a local path.")
    if _looks_like_path(spec):
        raise ModelNotFoundError(f"model path not found: {spec}. Pass an existing .gguf file or HF checkpoint "
                                 "directory, or a preset name.")
    get_preset(spec)  # raises UnknownPresetError with suggestions
    raise AssertionError("unreachable")


def load_model(spec: str, device: str | None = "auto", dtype: str | torch.dtype | None = None,
               random_weights: bool = False, seed: int = 0, num_layers: int | None = None,
               tokenizer: str | None = None) -> LoadedModel:
    """Load a model by preset / path / repo id onto a device; `num_layers` truncates (for quick CPU tests);
    `tokenizer`: a directory with tokenizer.json (or a .gguf) to use instead of the model's own."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int)):
        raise InvalidOptionError(f"num_layers must be an int (the number of leading layers to keep) or None for "
                                 f"all, got {num_layers!r} ({type(num_layers).__name__})")
    cfg, state, tok, desc = resolve_weights(spec, random_weights=random_weights, seed=seed)
    if num_layers is not None and not 1 <= num_layers <= cfg.num_hidden_layers:
        # 0 or negative built a model of embeddings only and more than the model has random extra layers: both
        # loaded without a word and then generated nonsense
        raise InvalidOptionError(f"num_layers={num_layers} is outside 1..{cfg.num_hidden_layers}: {desc} has "
                                 f"{cfg.num_hidden_layers} layers. Pass a value in that range, or leave num_layers "
                                 "out (None) to load them all.")
    if tokenizer is not None:
        tpath = Path(tokenizer).expanduser()
        if tpath.suffix == ".gguf" and tpath.is_file():
            tok = load_tokenizer_from_gguf(tpath)
        elif (tpath / "tokenizer.json").is_file():
            tok = load_tokenizer_from_dir(tpath)
        else:
            raise ModelNotFoundError(f"tokenizer {tokenizer!r}: expected a directory with tokenizer.json or a .gguf file")
    if num_layers is not None:
        cfg = cfg.replace(num_hidden_layers=num_layers)
    if state is None:
        state = random_state_dict(cfg, seed=seed, dtype=dt, device=dev)
    elif num_layers is not None:
        state = {k: v for k, v in state.items()
                 if not (m := re.match(r"model\.layers\.(\d+)\.", k)) or int(m.group(1)) < num_layers}
    model = model_class(cfg).from_state_dict(cfg, state, dtype=dt, device=dev)
    return LoadedModel(cfg, model, tok, desc, dev, dt)
