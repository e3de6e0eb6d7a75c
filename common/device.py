"""Device and dtype selection with clear errors."""
from __future__ import annotations

import torch

from common.errors import DeviceUnavailableError, InvalidOptionError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(name: str | None = None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else CPU. Asking for CUDA without one is an error, not a fallback."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:  # torch's message lists twenty device types
        raise InvalidOptionError(f"unknown device {name!r}: pass 'auto', 'cpu', 'cuda' or 'cuda:N' ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DeviceUnavailableError(
            f"device {name!r} was requested but CUDA is not available (torch {torch.__version__} is {build}, or no "
            "GPU is visible). Use --device cpu, or run on the GPU machine.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceUnavailableError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None picks float32 on CPU (exact against HF) and bfloat16 on CUDA."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():  # int8 / float64 / fp8 weights failed deep inside load_state_dict
            raise InvalidOptionError(f"dtype {name} is not a model dtype; pass one of torch.float32, "
                                     f"torch.bfloat16, torch.float16 (or a name: {', '.join(DTYPES)})")
        return name
    if name is None or name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise InvalidOptionError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
