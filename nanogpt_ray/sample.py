"""Sample from a trained model, after nanoGPT's sample.py. Pure: model, tokenizer, checkpoint, device, config.

    nanogpt-ray sample --out_dir=out-shakespeare-char --start="ROMEO:" --num_samples=3

`sample_main` is the command line; `load_sampler`, `resolve_tokenizer`, `read_start` and `encode_prompt`
are the pieces batch sampling (and its Ray actors) and serving reuse: a prompt is encoded in one place.
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

import torch

from .checkpoint import load_model
from .config import GPT2_VOCAB_SIZE, SampleConfig, SamplingParams, UserError
from .device import autocast_context, enable_tf32, resolve_device, resolve_dtype
from .engine import generate, row_generator
from .tokenizer import GPT2Tokenizer, decode_tokens, read_meta, tokenizer_from_meta, unknown_chars_message

SEPARATOR = "---------------"
FILE_PREFIX = "FILE:"


class SampleError(UserError):
    """Sampling input a person has to fix (a prompt, a vocabulary); one line."""


class Sampler(NamedTuple):
    """What generation needs, loaded once: `model, tokenizer, device, ctx = load_sampler(cfg)`."""

    model: torch.nn.Module
    tokenizer: object
    device: str
    ctx: object  # autocast context manager for the forward passes (a no-op in float32); reusable


# ---------------------------------------------------------------------------- tokenizer

def _meta_candidates(ckpt: dict, data_root: str) -> tuple[str | None, list[str]]:
    """The checkpoint's dataset name and the folders its meta may sit in: the run's data_root first
    (where it was trained), then this command's data_root (the data moved, or a nanoGPT checkpoint)."""
    config = ckpt.get("config") or {}
    dataset = config.get("dataset") if isinstance(config, dict) else None
    if not dataset:
        return None, []
    roots = [config.get("data_root"), data_root]
    folders = []
    for root in roots:
        if root:
            folder = os.path.join(os.path.expanduser(str(root)), str(dataset))
            if folder not in folders:
                folders.append(folder)
    return str(dataset), folders


def resolve_tokenizer(ckpt: dict | None, init_from: str, data_root: str = "data"):
    """The tokenizer a model was trained with: the char vocab (meta.json, or nanoGPT's meta.pkl) of the
    checkpoint's dataset, else GPT-2 BPE, which is also what GPT-2 weights (init_from=gpt2*/dir) use."""
    if init_from != "resume" or ckpt is None:
        return GPT2Tokenizer()
    dataset, folders = _meta_candidates(ckpt, data_root)
    for folder in folders:
        meta = read_meta(folder)
        if meta is not None:
            return tokenizer_from_meta(meta)
    vocab_size = (ckpt.get("model_args") or {}).get("vocab_size")
    if vocab_size is not None and vocab_size < GPT2_VOCAB_SIZE:
        # no meta, and GPT-2 BPE would produce ids the model does not have: say where we looked
        where = ", ".join(folders) if folders else "nowhere (the checkpoint names no dataset)"
        raise SampleError(f"no meta.json or meta.pkl for dataset {dataset!r} (looked in {where}); the model's "
                          f"vocab_size={vocab_size} is too small for GPT-2 BPE; pass --data_root=<folder holding {dataset}>")
    return GPT2Tokenizer()  # nanoGPT's assumption when a dataset has no meta


# ---------------------------------------------------------------------------- prompts

def read_start(start: str) -> str:
    """The prompt: the text itself, or the contents of a file given as FILE:path (as in nanoGPT)."""
    if not start.startswith(FILE_PREFIX):
        return start
    path = os.path.expanduser(start[len(FILE_PREFIX):])
    if os.path.isdir(path):
        raise SampleError(f"prompt file {path!r} is a directory; start=FILE:path reads the prompt from one text file")
    if not os.path.isfile(path):
        raise SampleError(f"prompt file {path!r} does not exist (start=FILE:path reads the prompt from a file)")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise SampleError(f"prompt file {path!r} is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} at "
                          f"offset {e.start}); save it as UTF-8") from None


class PromptError(SampleError):
    """A prompt the model cannot start from; `code` says why ('unknown_characters' or 'empty_prompt')."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code

    def __reduce__(self):
        return type(self), (str(self), self.code)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a prompt; characters outside a char vocabulary are listed in one error line.
    An empty prompt starts from <|endoftext|> where the tokenizer has one."""
    unknown = unknown_chars_message(tokenizer, text)
    if unknown:
        raise PromptError(f"the prompt has {unknown}", "unknown_characters")
    ids = tokenizer.encode(text)
    if not ids:
        if tokenizer.eot_token is None:
            raise PromptError("the prompt is empty and a char vocabulary has no start token; give it some text",
                              "empty_prompt")
        ids = [tokenizer.eot_token]
    return ids


# ---------------------------------------------------------------------------- model

def load_model_for_sampling(init_from: str, out_dir: str, ckpt_path: str, data_root: str, device: str, dtype: str,
                            threads: int = 0):
    """(Sampler, checkpoint dict or None): the model (checkpoint or GPT-2) in eval mode on the resolved device,
    its tokenizer, and the autocast context; torch's threads set for decoding it (decode_threads). Shared by
    `sample`, the sampling actors and `serve`."""
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    if device.startswith("cuda"):
        enable_tf32()
    model, ckpt = load_model(init_from, out_dir, ckpt_path, device)
    tokenizer = resolve_tokenizer(ckpt, init_from, data_root)
    check_tokenizer_fits(tokenizer, model)
    sampler = Sampler(model, tokenizer, device, autocast_context(device, dtype))
    decode_threads(sampler, threads)
    return sampler, ckpt


def check_tokenizer_fits(tokenizer, model) -> None:
    if tokenizer.vocab_size > model.config.vocab_size:
        raise SampleError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                          f"{model.config.vocab_size}: the checkpoint's dataset meta does not belong to it")


# Threads chosen by probe_threads, per model shape and dtype: one probe per process.
_PROBED_THREADS: dict[tuple, int] = {}
_DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before any probe lowers it


def decode_threads(sampler: Sampler, threads: int = 0) -> int:
    """Set torch's intra-op threads for decoding on CPU, and return them: `threads` when given; else an explicit
    OMP_NUM_THREADS (Ray sets it in every actor and replica to its CPUs); else 1 or all of torch's default
    threads, whichever decodes this model faster here and now (a probe of a fraction of a second, once per model
    shape in a process). Decoding one token is a string of small kernels: on busy cores each parallel one waits
    for its slowest thread, while on quiet cores a wide model still gains from more (benchmarks/sample_speed.py
    --threads_table measures both)."""
    if threads > 0:
        torch.set_num_threads(threads)
        return threads
    many = _DEFAULT_THREADS
    if not sampler.device.startswith("cpu") or os.environ.get("OMP_NUM_THREADS") or many <= 1:
        return torch.get_num_threads()
    cfg = sampler.model.config
    key = (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size, next(sampler.model.parameters()).dtype, many)
    if key not in _PROBED_THREADS:
        _PROBED_THREADS[key] = probe_threads(sampler, (1, many))
    torch.set_num_threads(_PROBED_THREADS[key])
    return _PROBED_THREADS[key]


@torch.no_grad()
def probe_threads(sampler: Sampler, candidates: tuple[int, ...], new_tokens: int = 8, rounds: int = 2) -> int:
    """The thread count among `candidates` whose best of `rounds` interleaved batch-1 decodes of `new_tokens`
    (with the KV cache, as sampling runs) is fastest; a warm-up decode first. Costs ~2 * rounds * new_tokens
    decoding steps."""
    x = torch.zeros((1, 1), dtype=torch.long, device=sampler.device)
    with sampler.ctx:
        generate(sampler.model, x, 2, top_k=1)  # first-call allocations, not threads
        best = {n: float("inf") for n in candidates}
        for _ in range(rounds):
            for n in candidates:
                torch.set_num_threads(n)
                t0 = time.perf_counter()
                generate(sampler.model, x, new_tokens, top_k=1)
                best[n] = min(best[n], time.perf_counter() - t0)
    return min(candidates, key=lambda n: best[n])


def load_sampler(cfg: SampleConfig) -> Sampler:
    """Seed, then the model, tokenizer and device of a sample config (optionally compiled)."""
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)
    sampler, _ = load_model_for_sampling(cfg.init_from, cfg.out_dir, cfg.ckpt_path, cfg.data_root, cfg.device, cfg.dtype,
                                         cfg.threads)
    if sampler.device.startswith("cuda") and cfg.seed is not None:
        torch.cuda.manual_seed(cfg.seed)
    if cfg.compile:
        # pays off for long generations; engine.generate calls this compiled module, so it is what runs
        sampler = sampler._replace(model=torch.compile(sampler.model))
    return sampler


@torch.no_grad()
def generate_ids(sampler: Sampler, prompt_ids: list[int], num_samples: int, params: SamplingParams,
                 batch_size: int = 16):
    """num_samples continuations of one prompt, yielded one at a time as token-id lists (prompt included).
    Rows generate together in batches; row i has its own generator seeded params.seed + i, so a sample does not
    depend on num_samples or batch_size."""
    model, _, device, ctx = sampler
    for first in range(0, num_samples, batch_size):
        rows = range(first, min(first + batch_size, num_samples))
        x = torch.tensor([prompt_ids] * len(rows), dtype=torch.long, device=device)
        generators = [row_generator(device, None if params.seed is None else params.seed + i) for i in rows]
        with ctx:
            y = generate(model, x, **params.generation_kwargs(), generators=generators)
        yield from y.tolist()


def sample_main(cfg: SampleConfig) -> None:
    """nanoGPT's sample.py: print num_samples samples of the prompt, each followed by a separator line."""
    prompt = read_start(cfg.start)  # a missing prompt file fails before the model loads
    sampler = load_sampler(cfg)
    prompt_ids = encode_prompt(sampler.tokenizer, prompt)
    for ids in generate_ids(sampler, prompt_ids, cfg.num_samples, cfg.sampling_params(), cfg.batch_size):
        print(decode_tokens(sampler.tokenizer, ids))
        print(SEPARATOR, flush=True)
