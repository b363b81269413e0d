"""OpenAI's completions API as pure code: request validation, stop strings, and the response shapes.

cluster/serve.py puts this behind HTTP on Ray Serve; nothing here knows about HTTP or Ray, so every rule
(what is a 400, how a choice is seeded, what a stream chunk looks like) is unit-tested in milliseconds.
Bad requests raise RequestError, which the server turns into OpenAI's error JSON with status 400.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from dataclasses import dataclass, field

from .checkpoint import checkpoint_file
from .config import SamplingError, SamplingParams, ServeConfig, UserError
from .sample import PromptError, Sampler, encode_prompt, load_model_for_sampling
from .storage import modified_time
from .tokenizer import decode_tokens

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_TEMPERATURE = 2.0  # OpenAI's upper bound
TEMPERATURE_RULE = f"must be a number in 0..{MAX_TEMPERATURE:g} (0 is greedy)"
API_NAMES = {"max_new_tokens": "max_tokens"}  # a sampling parameter the API calls by another name
MAX_N = 16
MAX_CHOICES = 128  # prompts x n in one request: one request cannot take every batch slot for long
MAX_STOP = 4  # OpenAI allows up to 4 stop sequences


class RequestError(ValueError):
    """A request the client has to fix: answered with status 400 and OpenAI's error body."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class Choice:
    """One row to generate: choice `index` of the response, from prompt `prompt_index`, with its own seed."""

    index: int
    prompt_index: int
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class CompletionRequest:
    model: str
    prompts: list[str]
    params: SamplingParams  # the request's; each choice's params carry that choice's seed
    n: int
    stop: list[str]
    stream: bool
    choices: list[Choice] = field(default_factory=list)


def _number(body: dict, key: str, default, kind=float, low=None, high=None):
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise RequestError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}", param=key)
    value = kind(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise RequestError(f"{key}={value} must be in {low}..{high}", param=key)
    return value


def sampling_params(body: dict) -> SamplingParams:
    """The request's sampling parameters with OpenAI's defaults; SamplingParams judges them, the error names the
    field as the client sent it."""
    def given(key, default):
        value = body.get(key)
        return default if value is None else value

    temperature, top_k = given("temperature", 1.0), given("top_k", None)
    if temperature == 0 and not isinstance(temperature, bool):
        temperature, top_k = 1.0, 1  # OpenAI's temperature 0 is greedy: the likeliest token, what top_k=1 takes
    try:
        params = SamplingParams(max_new_tokens=given("max_tokens", DEFAULT_MAX_TOKENS), temperature=temperature,
                                top_k=top_k, top_p=given("top_p", None), seed=given("seed", None))
    except SamplingError as e:
        name = API_NAMES.get(e.param, e.param)
        requirement = TEMPERATURE_RULE if name == "temperature" else e.requirement
        raise RequestError(f"{name}={e.value!r} {requirement}", param=name) from None
    if params.temperature > MAX_TEMPERATURE:
        raise RequestError(f"temperature={params.temperature} {TEMPERATURE_RULE}", param="temperature")
    if params.top_p == 1:
        params.top_p = None  # OpenAI's default: nucleus sampling off
    return params


def parse_completion_request(body, model_name: str, tokenizer, block_size: int) -> CompletionRequest:
    """Validate a /v1/completions body against the served model; RequestError names the bad field.

    Prompts are tokenized here; one longer than the room left for max_tokens keeps its last
    block_size - max_tokens tokens (as `sample --truncate` does), and is refused only when max_tokens leaves
    no room at all. Choice i of a seeded request uses seed + i, so n=3 with a seed is reproducible and each
    choice equals the same request with n=1 and that seed."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model", model_name)
    if model != model_name:
        raise RequestError(f"the model {model!r} does not exist; this server serves {model_name!r}",
                           param="model", code="model_not_found")
    prompt = body.get("prompt", "")  # empty: <|endoftext|> where the tokenizer has it (OpenAI's default)
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise RequestError("prompt must be a string or a non-empty list of strings (token-id prompts are not supported)",
                           param="prompt")
    params = sampling_params(body)
    if params.max_new_tokens >= block_size:
        raise RequestError(f"max_tokens={params.max_new_tokens} leaves no room for the prompt in this model's context "
                           f"of {block_size} tokens; ask for at most {block_size - 1}", param="max_tokens")
    n = _number(body, "n", 1, int, low=1, high=MAX_N)
    if len(prompts) * n > MAX_CHOICES:
        raise RequestError(f"{len(prompts)} prompts x n={n} is more than {MAX_CHOICES} completions in one request; "
                           "split it", param="n")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(f"stop must be a non-empty string or a list of at most {MAX_STOP} of them", param="stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", param="stream")
    if body.get("echo") or body.get("logprobs") or (body.get("best_of") not in (None, 1)) or body.get("suffix"):
        raise RequestError("echo, logprobs, best_of and suffix are not supported by this server")

    request = CompletionRequest(model, prompts, params, n, stop, stream)
    room = block_size - params.max_new_tokens
    for p_index, text in enumerate(prompts):
        try:
            ids = encode_prompt(tokenizer, text)
        except PromptError as e:
            raise RequestError(str(e), param="prompt", code=e.code) from None
        ids = ids[-room:]  # the oldest tokens go first, like a sliding window
        for j in range(n):
            index = p_index * n + j
            seed = None if params.seed is None else params.seed + index
            request.choices.append(Choice(index, p_index, ids, dataclasses.replace(params, seed=seed)))
    return request


class TextStream:
    """Turns one row's tokens into text deltas and applies stop strings.

    push(token) returns (delta, stopped). Text that could be the start of a stop string, or an incomplete
    UTF-8 character of a BPE token, is held back until it is known, so a stream never sends text that the
    final answer does not contain."""

    def __init__(self, tokenizer, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, list(stop)
        self.ids: list[int] = []
        self.sent = 0  # characters of the text already handed out
        self.text = ""
        self.stopped = False

    def push(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        self.text = decode_tokens(self.tokenizer, self.ids)
        cut = self._stop_at()
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            return self._take(len(self.text)), True
        return self._take(self._safe_end()), False

    def flush(self) -> str:
        """The rest of the text once the row is finished."""
        return self._take(len(self.text))

    def _take(self, end: int) -> str:
        end = max(end, self.sent)
        delta, self.sent = self.text[self.sent:end], end
        return delta

    def _stop_at(self) -> int | None:
        # a stop string can only end in the newest text; search from just before what was already sent
        start = max(0, self.sent - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _safe_end(self) -> int:
        end = len(self.text)
        while end > self.sent and self.text[end - 1] == "\ufffd":
            end -= 1  # an incomplete multi-byte character: wait for its next token
        for s in self.stop:
            for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                if self.text[end - k:end] == s[:k]:
                    return end - k  # might be the start of a stop string
        return end


def merge_deltas(events):
    """(choice, delta, finish_reason) events in arrival order -> one per choice, in first-arrival order: what a
    stream sends at once when tokens arrived faster than it could write them."""
    merged = {}
    for i, delta, reason in events:
        text, old_reason = merged.get(i, ("", None))
        merged[i] = (text + delta, reason or old_reason)
    return [(i, text, reason) for i, (text, reason) in merged.items()]


def new_completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion_response(completion_id: str, model: str, texts: list[str], finish_reasons: list[str],
                        prompt_tokens: int, completion_tokens: int, created: int | None = None) -> dict:
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": r}
                    for i, (t, r) in enumerate(zip(texts, finish_reasons))],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_chunk(completion_id: str, model: str, created: int, index: int, text: str,
                     finish_reason: str | None = None) -> dict:
    """One server-sent event of a streamed completion (OpenAI sends the same object with partial text)."""
    return {"id": completion_id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}]}


def sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def models_response(model: str, created: int, owned_by: str = "nanogpt-ray") -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": owned_by}]}


# ---------------------------------------------------------------------------- the model a replica serves

@dataclass
class LoadedModel:
    sampler: Sampler
    iter_num: int | None  # the checkpoint's training step (None for GPT-2 weights)
    mtime: float | None  # ckpt.pt's modification time when it was read
    source: str | None = None  # the ckpt.pt read: for a run's folder (in a bucket), its latest checkpoint then

    @property
    def block_size(self) -> int:
        return self.sampler.model.config.block_size

    def version(self) -> tuple[str | None, float | None]:
        """What --watch compares (checkpoint_version): a new file or a new write means a newer checkpoint."""
        return self.source, self.mtime


def checkpoint_version(cfg: ServeConfig) -> tuple[str, float] | None:
    """(the ckpt.pt that ckpt_path or out_dir means now, its modification time); None when there is none.
    A run's folder in storage (s3://bucket/prefix/run_name) means its latest checkpoint: a new one is a new path
    even within the second that object stores' timestamps resolve."""
    if cfg.init_from != "resume":
        return None
    try:
        source = checkpoint_file(cfg.ckpt_path or cfg.out_dir)
        mtime = modified_time(source)
    except (OSError, UserError):
        return None
    return None if mtime is None else (source, mtime)


def load_served_model(cfg: ServeConfig) -> LoadedModel:
    """Device, dtype, model and tokenizer, as `sample` loads them, plus what --watch needs to notice a newer one."""
    source, mtime = checkpoint_version(cfg) or (None, None)  # before reading: one written meanwhile counts as newer
    sampler, ckpt = load_model_for_sampling(cfg.init_from, cfg.out_dir, source or cfg.ckpt_path, cfg.data_root,
                                            cfg.device, cfg.dtype, cfg.threads)
    return LoadedModel(sampler, ckpt.get("iter_num") if ckpt is not None else None, mtime, source)
