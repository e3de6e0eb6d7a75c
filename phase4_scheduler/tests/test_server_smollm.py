"""The server with SmolLM2's real weights: a chat answer through the chat template stops at the end-of-turn token,
and its text equals phase 0's single-request engine on the same template ids (greedy), streamed or not."""
import openai
import pytest
import torch

from common import artifacts
from common.sampling import SamplingParams
from phase4_scheduler.async_engine import AsyncEngine
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.launch import BackgroundServer
from phase4_scheduler.server import create_app

pytestmark = pytest.mark.timeout(180)  # a hung server fails with a traceback, never blocks the suite

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_answer_equals_reference_and_stops_at_end_of_turn(smollm):
    tok = smollm.tokenizer
    ids = tok.chat_ids(MESSAGES)
    ref = artifacts.get("engine.generate")(smollm.model, torch.tensor([ids]),
                                           SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0].tolist()
    cut = next(i for i, t in enumerate(ref) if t in tok.stop_token_ids())  # the reference ends its turn here

    engine = AsyncEngine(LLMEngine(smollm, num_blocks=16), model_name="smollm2-135m")
    with BackgroundServer(create_app(engine)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=120)
        r = client.chat.completions.create(model="smollm2-135m", messages=MESSAGES, max_tokens=24, temperature=0)
        chunks = list(client.chat.completions.create(model="smollm2-135m", messages=MESSAGES, max_tokens=24,
                                                     temperature=0, stream=True))
    answer = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop" and answer == tok.decode(ref[:cut])
    assert "Paris" in answer and "<|im_end|>" not in answer
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == cut + 1  # the stop token counts
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert engine.stats()["num_free_blocks"] == 16
