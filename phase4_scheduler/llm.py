"""LLM: the offline API. Give it all prompts at once; the engine batches them continuously; outputs come back in order.

    llm = LLM("smollm2-135m")
    outs = llm.generate(["The capital of France is", "1, 2, 3,"], SamplingParams(max_tokens=16, temperature=0))
    print(outs[0].text)
"""
from __future__ import annotations

from common.sampling import SamplingParams
from phase4_scheduler.engine import LLMEngine
from phase4_scheduler.outputs import RequestOutput


class LLM:
    def __init__(self, model: str = "smollm2-135m", *, engine: LLMEngine | None = None, **kwargs):
        """`kwargs` go to LLMEngine.from_model (device, dtype, random_weights, num_layers, max_num_seqs, kv_memory...)."""
        self.engine = engine or LLMEngine.from_model(model, **kwargs)
        self._counter = 0

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def _to_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; this model has none: pass lists of token ids")
            return self.tokenizer.encode(prompt)
        if isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            return list(prompt)
        raise TypeError(f"a prompt is a string or a list of token ids, got {type(prompt).__name__}")

    def generate(self, prompts, params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        """prompts: a string, a list of token ids, or a list of either. Returns the final outputs, in prompt order."""
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise TypeError(f"prompts must be a string, a list of token ids, or a list of either; got "
                            f"{type(prompts).__name__}")
        params = params if params is not None else SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(plist)} SamplingParams for {len(prompts)} prompts: give one, or one per prompt")
        ids = [self._to_ids(p) for p in prompts]
        for i, p in zip(ids, plist):  # check every request before queueing any
            self.engine.validate(i, p)
        rids = []
        for i, p in zip(ids, plist):
            rid = f"llm-{self._counter}"
            self._counter += 1
            self.engine.add_request(rid, i, p, validated=True)  # checked above
            rids.append(rid)
        final: dict[str, RequestOutput] = {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(rids), desc="generate")
        while self.engine.has_unfinished():
            for out in self.engine.step(final_only=True):  # no per-token outputs: only finished ones come back
                if out.finished:
                    final[out.request_id] = out
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [final[r] for r in rids]
