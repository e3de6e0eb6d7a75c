"""Logits processors: presence / frequency / repetition penalties and logit_bias (sampler.process_logits) against a
plain-loop reference, and greedy generation through the engine (synchronous and overlapped) token-identical to a
reference decoding loop over the reference model with the same processors."""
import pytest
import torch

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.request import Request
from phase4_scheduler.sampler import process_logits
from phase4_scheduler.tests.engine_helpers import prompts


def ref_process(row: torch.Tensor, prompt: list[int], out: list[int], p: SamplingParams) -> torch.Tensor:
    """One row, token by token: repetition (prompt + output), then frequency x count + presence, then the bias."""
    row = row.float().clone()
    if p.repetition_penalty != 1.0:
        for t in set(prompt) | set(out):
            row[t] = row[t] / p.repetition_penalty if row[t] > 0 else row[t] * p.repetition_penalty
    for t in set(out):
        row[t] -= p.frequency_penalty * out.count(t) + p.presence_penalty
    for t, b in (p.logit_bias or {}).items():
        row[t] += b
    return row


def test_process_logits_matches_the_reference_loop():
    g = torch.Generator().manual_seed(0)
    v = 50
    logits = torch.randn(4, v, generator=g) * 3
    cases = [SamplingParams(presence_penalty=0.7, frequency_penalty=0.4),
             SamplingParams(repetition_penalty=1.3, logit_bias={3: 5.0, 7: -100.0}),
             SamplingParams(),  # untouched row
             SamplingParams(frequency_penalty=-0.5, repetition_penalty=0.8, presence_penalty=-1.0)]
    reqs = []
    for i, sp in enumerate(cases):
        r = Request(f"r{i}", [1, 2, 3, 9], sp)
        r.output_token_ids = [3, 3, 5, 9, 12, 3][:i + 3]
        reqs.append(r)
    out = process_logits(logits, reqs)
    assert out is not logits and torch.equal(logits, logits.clone())  # the raw logits stay as they were
    for i, r in enumerate(reqs):
        torch.testing.assert_close(out[i], ref_process(logits[i], r.prompt_token_ids, r.output_token_ids, r.params))
    assert process_logits(logits, [reqs[2]] * 4) is logits  # nobody asks: no copy


def ref_greedy(model, prompt: list[int], p: SamplingParams) -> list[int]:
    out = []
    for _ in range(p.max_tokens):
        with torch.no_grad():
            row = model(torch.tensor([prompt + out]))[0, -1]
        out.append(int(ref_process(row, prompt, out, p).argmax()))
    return out


@pytest.mark.parametrize("overlap", [False, True], ids=["sync", "overlap-engine"])
def test_greedy_with_processors_equals_the_reference_loop(tiny, overlap):
    ps = prompts(4, seed=21)
    params = [SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, presence_penalty=2.0),
              SamplingParams(max_tokens=8, temperature=0, ignore_eos=True, frequency_penalty=1.5,
                             repetition_penalty=1.5),
              SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logit_bias={ps[2][0]: 100.0}),
              SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)]  # none: beside them, unchanged
    eng = LLMEngine(tiny, num_blocks=64, block_size=8, overlap=overlap)
    for i, (p, sp) in enumerate(zip(ps, params)):
        eng.add_request(f"r{i}", p, sp)
    done = {}
    while eng.has_unfinished():
        for o in eng.step():
            if o.finished:
                done[o.request_id] = o.output_token_ids
    for i, (p, sp) in enumerate(zip(ps, params)):
        assert done[f"r{i}"] == ref_greedy(tiny.model, p, sp), i
    assert done["r2"] == [ps[2][0]] * 6  # +100 forces the token
    assert len(set(done["r0"])) == 8  # presence 2.0: no token twice
    plain = LLMEngine(tiny, num_blocks=64, block_size=8)
    plain.add_request("x", ps[0], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))
    while plain.has_unfinished():
        for o in plain.step():
            first = o.output_token_ids
    assert len(set(first)) < 8 and first != done["r0"]  # without it the tiny model repeats itself


def test_bad_processor_params_are_refused(tiny):
    for kw in (dict(presence_penalty=2.5), dict(frequency_penalty=-3), dict(repetition_penalty=0),
               dict(logit_bias={-1: 1.0}), dict(logit_bias={5: 101.0}), dict(logit_bias={True: 1.0})):
        with pytest.raises(ValueError):
            SamplingParams(**kw)
    eng = LLMEngine(tiny, num_blocks=16, block_size=8)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.add_request("a", [5, 6], SamplingParams(logit_bias={tiny.config.vocab_size: 1.0}))


@pytest.mark.parametrize("penalty", [1e-300, 1e-40, 1e300])
def test_extreme_repetition_penalty_samples_instead_of_failing_the_step(penalty):
    """A positive logit divided by a tiny penalty overflows fp32 to inf, and a softmax over an inf is NaN:
    torch.multinomial raised inside the step, which ends every request of the batch (the server: a 500, then 503s).
    The processed logits stay finite: the penalised positive logit wins (tiny penalty), the negative one is never drawn
    (huge), and sampling works at any temperature."""
    from phase4_scheduler.sampler import Sampler

    v = 40
    logits = torch.full((2, v), -1.0)
    logits[:, 5] = 2.0  # in the prompt: the penalty applies to it
    reqs = [Request(f"r{i}", [5, 6], SamplingParams(repetition_penalty=penalty, temperature=t, seed=3))
            for i, t in enumerate((1.0, 1e-5))]
    out = process_logits(logits, reqs)
    assert torch.isfinite(out).all()
    tokens = Sampler()(logits, reqs, process=True)
    if penalty < 1:
        assert tokens == [5, 5]  # 2 / 1e-40: every other token's probability is 0
    else:
        assert 6 not in tokens and all(0 <= t < v for t in tokens)  # -1 * 1e300: never drawn (5 -> 0 may be)
