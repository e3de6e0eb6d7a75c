"""Module-level helpers for the ProcessEngine tests: they are pickled by name into the spawned engine process."""
from __future__ import annotations

import time


def tiny_byte_engine(**engine_kwargs):
    """An LLMEngine over a 1-layer random Llama with fake_engine's 257-token byte tokenizer: the engine process is up
    in about a second (no transformers import), for the tests that kill or break it."""
    from phase4_scheduler.bench_step_overhead import tiny_loaded
    from phase4_scheduler.engine import LLMEngine
    from phase4_scheduler.tests.fake_engine import ByteTokenizer

    return LLMEngine(tiny_loaded(257, ByteTokenizer()), **engine_kwargs)


def pause(engine, seconds: float) -> None:
    """(ProcessEngine.call) hold the engine loop: requests sent meanwhile are all applied at the next step."""
    time.sleep(seconds)


def break_next_step(engine, message: str) -> bool:
    """(ProcessEngine.call) the engine's next step raises RuntimeError(message)."""
    def step(*args, **kwargs):
        raise RuntimeError(message)
    engine.step = step
    return True
