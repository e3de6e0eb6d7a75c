"""Every error a user can hit names the problem and the fix."""
import numpy as np
import pytest
import torch

from common.cli import main as titan
from common.device import resolve_device
from common.errors import (DeviceUnavailableError, ModelNotFoundError, PromptTooLongError, UnknownPresetError,
                           UnsupportedTensorTypeError)
from common.model_loader import load_model
from common.sampling import SamplingParams
from phase0_tinyllama.inference_v1 import generate


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_model(str(tmp_path / "no" / "such" / "dir"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json is missing"):
        load_model(str(tmp_path / "empty"))


def test_unknown_preset_suggests_close_names():
    with pytest.raises(UnknownPresetError, match="Did you mean smollm2-135m"):
        load_model("smollm2-135")
    with pytest.raises(UnknownPresetError, match="Known presets"):
        load_model("gpt5")


def test_hf_repo_id_not_in_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="huggingface-cli download Nobody/Nothing"):
        load_model("Nobody/Nothing")


def test_unsupported_gguf_tensor_type(tmp_path):
    import gguf

    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for k, v in {"embedding_length": 8, "block_count": 1, "feed_forward_length": 16, "attention.head_count": 2,
                 "context_length": 32}.items():
        w.add_uint32(f"llama.{k}", v)
    w.add_tensor("token_embd.weight", np.arange(32, dtype=np.int32).reshape(4, 8))  # an I32 "weight"
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedTensorTypeError, match="type I32.*supported: .*Q4_1"):
        load_model(str(path))


def test_prompt_longer_than_context():
    lm = load_model("tinyllama-1.1b", random_weights=True, num_layers=1, device="cpu")
    model = lm.model
    model.config.max_position_embeddings = 16
    with pytest.raises(PromptTooLongError, match="16 tokens"):
        generate(model, torch.zeros(1, 20, dtype=torch.long), SamplingParams(max_tokens=1))
    with pytest.raises(PromptTooLongError, match="at most 6 new tokens"):
        generate(model, torch.ones(1, 10, dtype=torch.long), SamplingParams(max_tokens=8))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_requested_on_cpu_machine(capsys):
    with pytest.raises(DeviceUnavailableError, match="--device cpu"):
        resolve_device("cuda")
    assert titan(["generate", "--prompt", "hi", "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_cli_reports_errors_without_traceback(capsys):
    assert titan(["chat", "--prompt", "hi", "--model", "llama-9000"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("titan: error: unknown preset 'llama-9000'") and "Traceback" not in err


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_p=1.5),
                                 dict(top_k=-2)])
def test_bad_sampling_params(bad):
    with pytest.raises(ValueError):
        SamplingParams(**bad)


@pytest.mark.parametrize("flags, words", [(["--max-tokens", "-3"], "--max-tokens must be a positive integer, got -3"),
                                          (["--temperature", "-1"], "--temperature must be >= 0"),
                                          (["--top-p", "0"], "--top-p must be in (0, 1]")])
def test_cli_sampling_flags_are_usage_errors_before_the_load(flags, words, capsys, monkeypatch):
    """A bad sampling flag was a ValueError traceback after the model had loaded; now argparse's usage error (exit 2)
    before any load (the loader is replaced by one that fails the test if called)."""
    import common.model_loader as ml

    monkeypatch.setattr(ml, "load_model", lambda *a, **k: pytest.fail("the model loaded before the flags were checked"))
    for cmd in ("generate", "chat"):
        with pytest.raises(SystemExit) as exit_:
            titan([cmd, "--prompt", "hi", *flags])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and words in err and "Traceback" not in err


def test_bad_input_shapes():
    lm = load_model("tinyllama-1.1b", random_weights=True, num_layers=1, device="cpu")
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        lm.model(torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("module, argv, words", [
    ("phase1_rust_allocator.bench_allocator", ["--requests", "0"], "argument --requests: must be an integer >= 1"),
    ("phase1_rust_allocator.bench_allocator", ["--rate", "-2"], "argument --rate: must be a number > 0"),
    ("phase0_tinyllama.bench_kvcache", ["--batch", "4", "0"], "argument --batch: must be an integer >= 1, got 0"),
])
def test_phase_benches_check_counts_up_front(module, argv, words, capsys):
    """Counts, lengths and rates are checked by the argument types (common.bench.positive_int / positive_float):
    0 requests was a ValueError deep in the trace builder, -4 blocks the allocator's error after the data load."""
    import importlib

    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(argv)
    assert exit_.value.code == 2 and words in capsys.readouterr().err
