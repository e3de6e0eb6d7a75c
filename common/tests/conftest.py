import pytest
import torch

from common import assets

PROMPTS = ["What is the capital of France?",
           "Write a haiku about the sea.",
           "Explain in two sentences why the sky is blue."]


@pytest.fixture(scope="session")
def smollm():
    from common.model_loader import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def hf_smollm():
    from transformers import AutoModelForCausalLM

    p = assets.require("smollm2-gguf")
    return AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32).eval()
