"""Bad input to load_model and to the artifact table: one clear error naming the problem and the fix (bad-input
audit). Each case below failed before: a silent success (num_layers 0 / above the model's, a misspelt override
name), an error from deep inside gguf / torch / importlib, or one that did not name the setting at fault."""
import pytest
import torch

from common import artifacts
from common.errors import CorruptModelFileError, InvalidOptionError, TitanError
from common.model_loader import load_model


@pytest.mark.parametrize("num_layers", [0, -1, 23, 99])
def test_num_layers_outside_the_model(num_layers):
    with pytest.raises(InvalidOptionError, match=rf"num_layers={num_layers} is outside 1\.\.22.*has 22 layers"):
        load_model("tinyllama-1.1b", random_weights=True, device="cpu", num_layers=num_layers)


@pytest.mark.parametrize("num_layers", [1.5, "2", True])
def test_num_layers_not_an_int(num_layers):
    with pytest.raises(InvalidOptionError, match="num_layers must be an int"):
        load_model("tinyllama-1.1b", random_weights=True, device="cpu", num_layers=num_layers)


def test_non_model_torch_dtype_and_unknown_device():
    with pytest.raises(InvalidOptionError, match="torch.int8 is not a model dtype.*torch.bfloat16"):
        load_model("tinyllama-1.1b", random_weights=True, device="cpu", num_layers=1, dtype=torch.int8)
    with pytest.raises(InvalidOptionError, match="unknown device 'cdua'.*'cpu', 'cuda'"):
        load_model("tinyllama-1.1b", random_weights=True, device="cdua", num_layers=1)


def _gguf_head(tmp_path, nbytes):
    from common import assets

    src = assets.asset_path("smollm2-gguf")
    if not src.exists():
        pytest.skip("the SmolLM2 GGUF is not here (make setup)")
    with open(src, "rb") as f:
        head = f.read(nbytes)
    path = tmp_path / "truncated.gguf"
    path.write_bytes(head)
    return path


@pytest.mark.parametrize("nbytes", [100, 1_000_000])
def test_truncated_gguf(tmp_path, nbytes):
    path = _gguf_head(tmp_path, nbytes)
    with pytest.raises(CorruptModelFileError, match=rf"truncated\.gguf is not a readable GGUF file \({nbytes:,} bytes.*"
                                                    "fetch it again"):
        load_model(str(path), device="cpu")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CorruptModelFileError, match="not a readable GGUF file.*GGUF magic invalid"):
        load_model(str(path), device="cpu")


def test_override_naming_no_artifact(monkeypatch):
    monkeypatch.setenv("TITAN_ARTIFACTS", "allocator.blok=phase1_rust_allocator.reference:BlockAllocator")
    with pytest.raises(ValueError, match="'allocator.blok' is not an artifact name.*Did you mean 'allocator.block'"):
        artifacts.get("allocator.block")


@pytest.mark.parametrize("spec", ["phase1_rust_allocator.reference.BlockAllocator", "", ":BlockAllocator",
                                  "phase1_rust_allocator.reference:"])
def test_malformed_override(monkeypatch, spec):
    monkeypatch.setenv("TITAN_ARTIFACTS", f"allocator.block_ref={spec}")
    with pytest.raises(ValueError, match="TITAN_ARTIFACTS: 'allocator.block_ref' -> .* must be 'module:attribute'"):
        artifacts.get("allocator.block_ref")


def test_override_file_errors(monkeypatch, tmp_path):
    monkeypatch.setenv("TITAN_ARTIFACTS_FILE", str(tmp_path / "missing.txt"))
    with pytest.raises(FileNotFoundError, match="TITAN_ARTIFACTS_FILE=.*missing.txt.*is not a file"):
        artifacts.get("allocator.block_ref")
    f = tmp_path / "mine.txt"
    f.write_text("# mine\nallocator.block_ref phase1_rust_allocator.reference:BlockAllocator\n")
    monkeypatch.setenv("TITAN_ARTIFACTS_FILE", str(f))
    with pytest.raises(ValueError, match="mine.txt line 2: .* is not an artifact name"):
        artifacts.get("allocator.block_ref")


def test_override_to_missing_module_or_attribute(monkeypatch):
    monkeypatch.setenv("TITAN_ARTIFACTS", "allocator.block_ref=no_such_pkg.alloc:BlockAllocator")
    with pytest.raises(ImportError, match=r"'allocator.block_ref' -> .*\(from an override\): cannot import "
                                          "'no_such_pkg.alloc'.*No module named 'no_such_pkg'") as e:
        artifacts.get("allocator.block_ref")
    assert isinstance(e.value, TitanError)  # the CLI prints it as one line
    monkeypatch.setenv("TITAN_ARTIFACTS", "allocator.block_ref=phase1_rust_allocator.reference:BlockAlocator")
    with pytest.raises(AttributeError, match="has no attribute 'BlockAlocator'. Check the spelling"):
        artifacts.get("allocator.block_ref")
