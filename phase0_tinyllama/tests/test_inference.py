"""The phase-0 engines: v0 (no cache) and v1 (KV cache) generate the same tokens; v0 stays readable."""
from pathlib import Path

import torch

from common.model_loader import load_model
from common.sampling import SamplingParams
from phase0_tinyllama import inference_v0, inference_v1


def test_v0_is_at_most_100_lines():
    assert len(Path(inference_v0.__file__).read_text().splitlines()) <= 100


def test_v0_and_v1_generate_the_same_tokens():
    lm = load_model("tinyllama-1.1b", random_weights=True, num_layers=2, device="cpu", seed=4)
    ids = torch.randint(0, 32000, (2, 9), generator=torch.Generator().manual_seed(0))
    p = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    a = inference_v0.generate(lm.model, ids, p)
    b = inference_v1.generate(lm.model, ids, p)
    assert a.shape == (2, 12) and torch.equal(a, b)


def test_seeded_sampling_same_in_both_engines():
    lm = load_model("tinyllama-1.1b", random_weights=True, num_layers=1, device="cpu", seed=5)
    ids = torch.randint(0, 32000, (1, 5), generator=torch.Generator().manual_seed(1))
    p = SamplingParams(max_tokens=10, temperature=0.8, top_k=50, top_p=0.9, seed=42, ignore_eos=True)
    assert torch.equal(inference_v0.generate(lm.model, ids, p), inference_v1.generate(lm.model, ids, p))


def test_generation_stops_at_stop_token():
    lm = load_model("tinyllama-1.1b", random_weights=True, num_layers=1, device="cpu", seed=6)
    ids = torch.randint(0, 32000, (1, 5), generator=torch.Generator().manual_seed(2))
    free = inference_v1.generate(lm.model, ids, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))[0]
    stop = int(free[2])
    out = inference_v1.generate(lm.model, ids, SamplingParams(max_tokens=6, temperature=0.0, stop_token_ids=[stop]))
    assert out[0].tolist() == free[:3].tolist()
