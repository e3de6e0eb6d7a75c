"""A two-line fix for Triton 3.6's CPU interpreter under NumPy >= 2.4.

The interpreter keeps every scalar as a 1-element array and converts it with `int(array)`, which NumPy 2.4 turned
from a DeprecationWarning into a TypeError. Any loop whose bound is a runtime value (`range(start, end, BLOCK)`,
which every paged kernel has) then fails under TRITON_INTERPRET=1 with "only 0-dimensional arrays can be converted
to Python scalars". `apply()` wraps the interpreter's tensor patching so `__index__` reads the element with
`.item()` instead. It changes nothing on a GPU (the interpreter is not used there) and is idempotent.
"""
from __future__ import annotations


def apply() -> bool:
    """Patch the interpreter if it is importable and not yet patched; return whether the fix is in place."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:
        return False
    if getattr(original, "_titan_fixed", False):
        return True

    def index(self):
        data = self.handle.data
        if data.size != 1:  # a block used as an index stays an error, as on the GPU
            raise TypeError(f"only scalars can be used as an index, got a block of shape {data.shape}")
        return int(data.reshape(-1)[0].item())

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", index)

    patched._titan_fixed = True
    interpreter._patch_lang_tensor = patched
    return True
