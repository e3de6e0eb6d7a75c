"""The OpenAI wire format: request models (pydantic) and the JSON shapes of responses, chunks and errors.

NOTE: the request models validate only what the server must refuse with a 400 (types, ranges, n > 1, features
this engine does not have); unknown fields are ignored, as OpenAI's clients send fields a small server may not
know. Extensions in the style of vLLM ride in the same body (`top_k`, `ignore_eos`, `stop_token_ids`); the OpenAI
client passes them with `extra_body={...}`.
"""
from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.sampling import MAX_LOGPROBS

MAX_N = 16  # choices per request, at most (choices.py: each is a full engine request; OpenAI allows more)
MAX_PROMPTS = 64  # prompts in one completions request (a batch; each prompt x n choices is an engine request)


class OpenAIError(Exception):
    """An error the server answers with OpenAI's JSON body: {"error": {message, type, param, code}}."""

    def __init__(self, message: str, status: int = 400, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.type, self.param, self.code = message, status, type, param, code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": _utf8(message), "type": type, "param": param and _utf8(param), "code": code}}


def _utf8(text: str) -> str:
    """`text` with anything UTF-8 cannot encode (a lone surrogate from a JSON escape such as "\\ud800") written as
    its escape: an error message that quotes the request must still render, or the connection dies with it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def lone_surrogate_at(value, path: str = "") -> str | None:
    """The path of the first string (or object key) in a parsed JSON body that holds a lone UTF-16 surrogate, else
    None. JSON may escape one ("\\ud800"), Python's json accepts it, and nothing downstream can encode it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "body"
    elif isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{_utf8(str(k))}" if path else _utf8(str(k))
            if lone_surrogate_at(k, where) is not None:
                return where
            if (hit := lone_surrogate_at(v, where)) is not None:
                return hit
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if (hit := lone_surrogate_at(v, f"{path}.{i}" if path else str(i))) is not None:
                return hit
    return None


class StreamOptions(BaseModel):
    include_usage: bool = False


class _SamplingFields(BaseModel):
    """Fields both endpoints share."""
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        """A lone surrogate anywhere in the body is a 400 here, before it reaches the tokenizer or a response (it
        was a 500 whose own error message could not be encoded, and the connection was reset)."""
        where = lone_surrogate_at(data)
        if where is not None:
            raise ValueError(f"{where}: the text holds a lone UTF-16 surrogate (an escape in \\ud800-\\udfff "
                             "without its pair), which is not valid Unicode: send UTF-8 text")
        return data

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)             # extension; 0 or -1 = off
    # int64, as vLLM's: seed + i (choice i of n) still fits torch's generator; a seed it cannot take raised
    # inside the engine's step, which ended every request and the engine with it
    seed: int | None = Field(None, ge=-(2 ** 63), le=2 ** 63 - 1)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    stop_token_ids: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)  # extension
    ignore_eos: bool = False                 # extension: generate exactly max_tokens
    user: str | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0)  # extension (vLLM's): 1 = off
    logit_bias: dict[str, float] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, v):
        """OpenAI sends token ids as JSON object keys (strings): integers >= 0 mapped to biases in [-100, 100]."""
        if not v:
            return None
        out = {}
        for k, b in v.items():
            if not k.strip().isdigit():
                raise ValueError(f"logit_bias keys must be token ids (non-negative integers), got {k!r}")
            if not -100.0 <= b <= 100.0:
                raise ValueError(f"logit_bias values must be in [-100, 100], got {b} for token {k}")
            out[int(k)] = float(b)
        return out

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v):
        if v and v.get("type", "text") != "text":
            raise ValueError(f"response_format {v.get('type')!r} is not supported (only plain text)")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    def unsupported(self) -> None:
        """Hook for endpoint-specific refusals (raise OpenAIError)."""

    def logprobs_k(self) -> int | None:
        """SamplingParams.logprobs for this request: top alternatives per token, or None for no logprobs."""
        return None

    def prompt_logprobs_k(self) -> int | None:
        """SamplingParams.prompt_logprobs: the same for the prompt's tokens (completions with echo)."""
        return None


class CompletionRequest(_SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)   # OpenAI's default for /v1/completions
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)  # top alternatives per token (+ the sampled one)
    best_of: int | None = None
    suffix: str | None = None

    def logprobs_k(self) -> int | None:
        return self.logprobs

    def prompt_logprobs_k(self) -> int | None:
        return self.logprobs if self.echo else None

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, v):
        if v not in (None, 1):
            raise ValueError("best_of > 1 is not supported (one sample per request)")
        return v

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, v):
        if v:
            raise ValueError("suffix (insertion) is not supported")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt_batch(cls, v):
        batch = _batch(v)
        if len(batch) > MAX_PROMPTS:
            raise ValueError(f"a batch of {len(batch)} prompts: at most {MAX_PROMPTS} per request")
        for i, p in enumerate(batch):
            if isinstance(p, list) and not p or p == "":
                raise ValueError("the prompt is empty" if len(batch) == 1 else f"prompt {i} of the batch is empty")
        return v

    def prompts(self) -> list:
        """The prompts of this request: one, or a batch (a list of strings or of token-id lists)."""
        return _batch(self.prompt)


def _batch(prompt) -> list:
    return prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)) else [prompt]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise OpenAIError(f"content part of type {part.get('type')!r} is not supported: this is a text-only "
                                  "model (send {'type': 'text', 'text': ...} parts)", param="messages")
            if not isinstance(part.get("text"), str):
                raise OpenAIError(f"a content part of type 'text' needs a 'text' string, got "
                                  f"{type(part.get('text')).__name__}", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[Any] | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=true")
        return self

    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("tool calling is not supported by this engine")
        return v

    def chat(self) -> list[dict]:
        """Messages as the chat template takes them ("developer" is OpenAI's new name for "system")."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """(message, param) for pydantic/FastAPI validation errors, as one OpenAI error."""
    msgs, param = [], None
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            return f"Malformed JSON body: {err.get('msg', '')} (send a JSON object).", None
        if not loc and err.get("type") in ("missing", "model_attributes_type"):  # the body itself is not an object
            return _body_message(err), None
        msg = re.sub(r"^Value error, ", "", str(err.get("msg", "")))
        param = param or (loc[0] if loc else None)
        msgs.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(msgs) or "invalid request", param


def param_named(message: str, fields) -> str | None:
    """The field an engine or SamplingParams error is about (their messages start with its name: "logit_bias names
    token ids ...", "seed must be ..."), when `fields` (a request model or SamplingParams) has one of that name."""
    word = re.match(r"[a-z_]+", message)
    names = getattr(type(fields), "model_fields", None) or getattr(fields, "__dataclass_fields__", {})
    return word.group(0) if word and word.group(0) in names else None


def _body_message(err: dict) -> str:
    """What is wrong with a request body that is not a JSON object (FastAPI hands over the raw bytes when the
    Content-Type is not JSON, e.g. curl's `-d` without `-H 'Content-Type: application/json'`)."""
    body, fix = err.get("input"), 'send a JSON object with the request\'s fields ({"model": ..., ...})'
    if err.get("type") == "missing":
        return f"The request body is empty: {fix}."
    if isinstance(body, bytes | bytearray):
        return "The request body was not read as JSON: send it with the header `Content-Type: application/json`."
    kind = "null" if body is None else {list: "an array", str: "a string", bool: "a boolean"}.get(type(body),
                                                                                                 "a number")
    return f"The request body must be a JSON object, not {kind}: {fix}."


# ---- responses ---------------------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(rid: str, model: str, text: str, finish_reason: str | None, n_prompt: int, n_out: int,
                        created: int | None = None, logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created or int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
            "usage": usage(n_prompt, n_out)}


def chat_response(rid: str, model: str, text: str, finish_reason: str | None, n_prompt: int, n_out: int,
                  created: int | None = None, logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion", "created": created or int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                         "finish_reason": finish_reason}],
            "usage": usage(n_prompt, n_out)}


def completion_chunk(rid: str, model: str, created: int, text: str, finish_reason: str | None,
                     logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}


def chat_chunk(rid: str, model: str, created: int, delta: dict, finish_reason: str | None,
               logprobs: dict | None = None) -> dict:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def stream_chunk(rid: str, model: str, created: int, chat: bool, text: str, finish_reason: str | None,
                 logprobs: dict | None = None, first: bool = False, index: int = 0) -> dict:
    """One streamed chunk of choice `index`: a chat delta (the first one also names the role; an empty text sends
    an empty delta) or a completion's text."""
    if chat:
        delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        body = chat_chunk(rid, model, created, delta, finish_reason, logprobs)
    else:
        body = completion_chunk(rid, model, created, text, finish_reason, logprobs)
    if index:
        body["choices"][0]["index"] = index
    return body


# ---- logprobs (the engine's (token, logprob, ((id, logprob), ...)) entries in OpenAI's two shapes) ----------------

def echoed(out, echo: str | None) -> tuple[str, list | None]:
    """A finished output's text and logprob entries, with the prompt's in front when echoing (completions)."""
    if echo is None:
        return out.text, out.logprobs
    entries = None if out.logprobs is None else (out.prompt_logprobs or []) + out.logprobs
    return echo + out.text, entries


def logprobs_object(entries: list | None, chat: bool, token_str, offset: int = 0,
                    token_bytes=None) -> tuple[dict | None, int]:
    """(a choice's `logprobs` for these entries, or None when there are none; the completions text offset after
    them: a stream continues from it). token_str: token id -> its text; token_bytes: token id -> its bytes (chat)."""
    if not entries:
        return None, offset
    if chat:
        return chat_logprobs(entries, token_str, token_bytes), offset
    return completion_logprobs(entries, token_str, offset)


def chat_logprobs(entries: list, token_str, token_bytes=None) -> dict:
    """Chat's `logprobs`: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.
    token_str: token id -> its text; token_bytes: token id -> the bytes it stands for (Tokenizer.token_bytes: a
    token holding part of a character has text U+FFFD but its own bytes, so a client can join them); without it,
    the UTF-8 of the text."""
    def item(t: int, lp: float) -> dict:
        s = token_str(t)
        return {"token": s, "logprob": lp, "bytes": list(token_bytes(t) if token_bytes else s.encode("utf-8"))}
    return {"content": [{**item(t, lp), "top_logprobs": [item(a, b) for a, b in top]} for t, lp, top in entries]}


def completion_logprobs(entries: list, token_str, offset: int = 0) -> tuple[dict, int]:
    """The legacy completions `logprobs`: {tokens, token_logprobs, top_logprobs: [{text: logprob}] (the top k plus
    the sampled token, as OpenAI returns up to k + 1), text_offset}; and the offset after the last token (a stream
    continues from it)."""
    tokens, offsets, tops = [], [], []
    for t, lp, top in entries:
        s = token_str(t)
        tokens.append(s)
        offsets.append(offset)
        offset += len(s)
        if lp is None:  # an echoed prompt's first token: nothing before it to score it by
            tops.append(None)
            continue
        d = {token_str(a): b for a, b in top}
        d.setdefault(s, lp)
        tops.append(d)
    return {"tokens": tokens, "token_logprobs": [lp for _, lp, _ in entries], "top_logprobs": tops,
            "text_offset": offsets}, offset


def usage_chunk(rid: str, model: str, created: int, obj: str, n_prompt: int, n_out: int) -> dict:
    """The last chunk when stream_options.include_usage is set: empty choices, the usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage(n_prompt, n_out)}
