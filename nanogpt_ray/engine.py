"""Generation over a GPT: a KV cache, left-padded batches of different prompt lengths, one random generator
per row, temperature / top-k / top-p, and what happens when the text outgrows the context window.

`model.GPT.generate` is the short reference (nanoGPT's: a full forward per token); `generate` here computes
the same tokens with a cache, and the tests hold the two equal. The model is any callable with GPT's
forward signature and a `.config`, so a `torch.compile`d GPT runs compiled here.

Past block_size there are two ways to keep going:
- exact (context_shift=0, the default): the window slides one token a step, exactly as nanoGPT. Learned
  absolute positions then move under every kept token, so no cached key stays valid: each step past the
  window is a full forward of block_size tokens.
- context shift (context_shift=n): when the window is full, the oldest n tokens go at once and the cache is
  rebuilt once per n tokens (llama.cpp's "context shift"): much faster, but not nanoGPT's tokens.

A model with rotary positions (arch="modern") never rebuilds its cache: attention between a rotated query and
a rotated key depends only on their distance, so when the window moves the oldest cached entries are dropped
and the rest stay valid; every new token costs one single-token step. Each token is then computed once, with
the block_size tokens before it in view (sliding-window attention, as Mistral's): the same tokens as a full
forward over the whole text with a banded causal mask of width block_size, not as nanoGPT's re-prefilled
window (there, older tokens are recomputed as if the text began at the window's start).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import traceback

import torch
from torch.nn import functional as F

_SDPA = hasattr(F, "scaled_dot_product_attention")  # model.py's flash path, which takes float masks


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to block_size."""

    def __init__(self, n_layer, batch_size, n_head, block_size, head_size, device, dtype):
        shape = (batch_size, n_head, block_size, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # positions filled, the same for every layer once a forward pass ends
        self.dropped = 0  # positions let go from the front (rotary sliding window): the next position is dropped + length

    @classmethod
    def view(cls, store, batch_size, length):
        """A cache over the first batch_size rows of preallocated (keys, values) tensors, `length` filled."""
        cache = cls.__new__(cls)
        cache.keys = [t[:batch_size] for t in store[0]]
        cache.values = [t[:batch_size] for t in store[1]]
        cache.length = length
        cache.dropped = 0  # the batcher keeps every row's positions itself (passed to the model each step)
        return cache

    @classmethod
    def for_model(cls, model, batch_size, device):
        cfg = model.config
        return cls(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head, device,
                   model.lm_head.weight.dtype)

    def update(self, layer, k, v):
        """Store this step's k, v (B, nh, T, hs) for one layer; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


    def drop_oldest(self, n):
        """Forget the n oldest positions of every layer (rotary models only: their cached keys do not depend
        on where the window begins)."""
        keep = self.length - n
        for cache in self.keys + self.values:
            cache[:, :, :keep] = cache[:, :, n:self.length].clone()
        self.length, self.dropped = keep, self.dropped + n


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generators=None):
    """One token per row from logits (B, V): temperature, then top-k, then top-p (nucleus). top_k=1 is greedy:
    the likeliest token, taken without a draw."""
    if top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("Inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (the first token always stays)
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(1, sorted_index, drop_sorted)
        logits = logits.masked_fill(drop, -float("Inf"))
    probs = F.softmax(logits, dim=-1)
    if generators is None:
        return torch.multinomial(probs, num_samples=1)
    return torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def padding_positions_and_mask(pad, total_len, step_len):
    """Positions (B, step_len) and attention mask (B, 1, step_len, total_len) for left-padded rows,
    or (None, None) when no row is padded so attention takes its fastest path."""
    if not bool((pad > 0).any()):
        return None, None
    device = pad.device
    absolute = torch.arange(total_len - step_len, total_len, device=device)  # positions of this step's tokens
    positions = (absolute.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)  # (B, step_len)
    keys = torch.arange(total_len, device=device)
    causal = keys.unsqueeze(0) <= absolute.unsqueeze(1)  # (step_len, total_len)
    real_key = keys.unsqueeze(0) >= pad.unsqueeze(1)  # (B, total_len)
    mask = causal.unsqueeze(0) & real_key.unsqueeze(1)  # (B, step_len, total_len)
    # a padding query sees no real key; letting it see itself avoids an all-masked (NaN) softmax row
    mask = mask | (keys.unsqueeze(0) == absolute.unsqueeze(1)).unsqueeze(0)
    return positions, mask.unsqueeze(1)


def window_start(length, block_size, context_shift, start):
    """Where the context the next token sees begins, for a text of `length` tokens whose window began at
    `start`: unchanged while it fits; past block_size, one token further (exact) or `context_shift` further."""
    if length - start <= block_size:
        return start
    return length - block_size + context_shift


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             prompt_lengths=None, generators=None, use_cache=True, context_shift=0):
    """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

    prompt_lengths: rows of different lengths, left-padded to T; each row then generates exactly as it
    would alone. generators: one torch.Generator per row, so a row's sample does not depend on its batch.
    use_cache=False recomputes the whole window every step (the reference the cache is tested against).
    context_shift: see the module docstring.
    """
    B, T0 = idx.shape
    block_size = model.config.block_size
    rotary = model.relative_positions  # the cache can slide (module docstring)
    shift = min(max(int(context_shift or 0), 0), block_size - 1)
    pad = torch.zeros(B, dtype=torch.long, device=idx.device)
    if prompt_lengths is not None:
        pad = T0 - torch.as_tensor(prompt_lengths, dtype=torch.long, device=idx.device)
    start, cache = 0, None
    for _ in range(max_new_tokens):
        length = idx.size(1)
        new_start = window_start(length, block_size, shift, start)
        if new_start != start:
            if rotary and cache is not None:
                cache.drop_oldest(new_start - start)  # relative positions: the kept keys stay valid
            else:
                cache = None  # the window moved: cached keys sit at stale (learned) positions
            start = new_start
        context = idx[:, start:]
        if cache is not None:
            step_tokens = context[:, -1:]  # the cache holds everything before the newest token
        else:
            step_tokens = context  # prefill the window
            # a cache pays off only if the window stays put for the next step
            stays = rotary or shift > 0 or context.size(1) < block_size
            cache = KVCache.for_model(model, B, idx.device) if use_cache and stays else None
        positions, mask = padding_positions_and_mask((pad - start).clamp(min=0), context.size(1), step_tokens.size(1))
        if rotary:  # each token keeps the position it has in its row's text, however far the window slid
            step_len = step_tokens.size(1)
            absolute = torch.arange(length - step_len, length, device=idx.device)
            positions = (absolute.unsqueeze(0) - pad.unsqueeze(1)).clamp(min=0)  # (B, step_len)
        logits, _ = model(step_tokens, kv_cache=cache, positions=positions, attn_mask=mask)
        idx_next = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generators)
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def row_generator(device: str, seed: int | None) -> torch.Generator:
    """The random generator of one row: seeded, so a row's sample depends on its seed alone; or, without a seed,
    seeded by the OS, so unseeded rows differ from each other."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


# ---------------------------------------------------------------------------- continuous batching

class Sequence:
    """One row a server wants generated with its SamplingParams (config.py; context_shift does not apply: a row
    keeps the prompt tail that fits). The batcher calls on_token(token) from its thread for every new token
    (return False to stop the row there: a stop string was seen, or the client left) and then on_finish(reason)
    exactly once: 'length' (max_new_tokens reached), 'stop' (on_token said so) or 'error'."""

    def __init__(self, prompt, params, on_token, on_finish, device="cpu"):
        self.prompt = list(prompt)
        self.params = params
        self.max_new_tokens = params.max_new_tokens
        self.on_token, self.on_finish = on_token, on_finish
        self.generator = row_generator(device, params.seed)
        self.generated = 0

    def sampling_key(self):
        """Rows with equal keys sample together in one call."""
        return (self.params.temperature, self.params.top_k, self.params.top_p)


class BatcherClosed(RuntimeError):
    """submit() on a batcher that was drained and has stopped."""


PREFILL_GROUP = 4  # newcomers prefilled in one forward


class ContinuousBatcher:
    """A decode loop that admits new rows between steps (continuous batching) over one shared KV cache.

    Rows are right-aligned in the cache: the rows that arrived since the last step are prefilled in small groups
    before that step (their first token waits for no running row), and their keys are copied in with left
    padding, the same padding `generate` uses for ragged prompts, so positions and masks come from
    `padding_positions_and_mask`. Finished rows leave at once and
    free their slot; when the cache fills up, the columns every row pads are dropped. A row never needs more
    than block_size positions: `submit` keeps the last block_size - max_new_tokens prompt tokens.

    submit() is thread-safe; step() and run() belong to one decode thread.
    """

    def __init__(self, model, device="cpu", ctx=None, max_batch_size=32):
        self.model, self.device, self.max_batch_size = model, device, int(max_batch_size)
        self.ctx = ctx if ctx is not None else contextlib.nullcontext()
        self.block_size = model.config.block_size
        self.pending: collections.deque[Sequence] = collections.deque()  # submitted, not yet admitted
        self.wakeup = threading.Condition()  # guards pending/draining/closed against submit racing a drain
        self.draining = self.closed = False
        self.rows: list[Sequence] = []
        self.store = None  # (keys, values): per layer (capacity, nh, block_size, hs); rows 0..B-1 are live
        self.length = 0  # positions filled, shared by every row (rows are right-aligned)
        self.pad: list[int] = []  # leading positions each row does not use
        self.last: list[int] = []  # each row's newest token, not yet in the cache

    # -- called from any thread

    def submit(self, *seqs: Sequence) -> None:
        """Queue rows for the decode thread, all or none (a request's choices stay on one model); raises
        BatcherClosed once a drained batcher has stopped, so the caller can go to the newer one."""
        for seq in seqs:
            if seq.max_new_tokens < 1 or seq.max_new_tokens >= self.block_size:
                raise ValueError(f"max_new_tokens={seq.max_new_tokens} must be in 1..{self.block_size - 1}")
            if not seq.prompt:
                raise ValueError("empty prompt")
            seq.prompt = seq.prompt[-(self.block_size - seq.max_new_tokens):]
        with self.wakeup:
            if self.closed:
                raise BatcherClosed("this batcher was drained and has stopped")
            self.pending.extend(seqs)
            self.wakeup.notify()

    def busy(self) -> bool:
        return bool(self.rows) or bool(self.pending)

    # -- the decode thread

    def run(self, stop: threading.Event) -> None:
        """Decode until `stop` is set, or until drain() was called and every row has finished."""
        while not stop.is_set():
            if not self.rows:
                with self.wakeup:
                    if not self.pending:
                        if self.draining:
                            self.closed = True  # under the lock: no submit can slip in after this check
                            return
                        self.wakeup.wait(0.05)  # idle: sleep until a request arrives
                        continue
            try:
                self.step()
            except Exception:
                traceback.print_exc()  # step() already failed the rows it held; keep serving the next ones

    def drain(self) -> None:
        """Finish what was submitted, then let run() return (a newer model takes the new requests)."""
        with self.wakeup:
            self.draining = True
            self.wakeup.notify()

    @torch.no_grad()
    def step(self) -> None:
        """Admit waiting rows (prefill + first token), then decode one token for every row."""
        admitting = []
        try:
            with self.ctx:
                # newcomers prefill a few at a time: one forward per group saves per-call overhead, and small
                # groups hand out first tokens sooner than one big forward over a burst of arrivals
                while len(self.rows) < self.max_batch_size and self.pending:
                    while (len(admitting) < PREFILL_GROUP and len(self.rows) + len(admitting) < self.max_batch_size
                           and self.pending):
                        admitting.append(self.pending.popleft())
                    self._admit(admitting)
                    admitting = []
                if self.rows:
                    self._decode()
        except Exception:
            # a failed step must not kill the loop (and with it the replica): fail the rows it held
            for seq in self.rows + admitting:
                _finish(seq, "error")
            self._reset()
            raise

    def _sample(self, logits, rows):
        """One token per row of logits (B, V), rows with the same settings in one call."""
        out = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        groups = {}
        for i, seq in enumerate(rows):
            groups.setdefault(seq.sampling_key(), []).append(i)
        for (temperature, top_k, top_p), index in groups.items():
            gens = [rows[i].generator for i in index]
            out[index] = sample_next_token(logits[index], temperature, top_k, top_p, gens).view(-1)
        return out

    def _emit(self, seq, token) -> bool:
        """Hand a token to its row; True while the row goes on."""
        seq.generated += 1
        try:
            keep_going = seq.on_token(token) is not False
        except Exception:
            keep_going = False  # a broken consumer ends its own row, never the batch
        if not keep_going:
            _finish(seq, "stop")
            return False
        if seq.generated >= seq.max_new_tokens:
            _finish(seq, "length")
            return False
        return True

    def _admit(self, seqs):
        """Prefill every newcomer in one left-padded forward, hand out its first token, copy its cache in."""
        T = max(len(seq.prompt) for seq in seqs)
        x = torch.tensor([[0] * (T - len(seq.prompt)) + seq.prompt for seq in seqs], dtype=torch.long, device=self.device)
        prompt_pad = torch.tensor([T - len(seq.prompt) for seq in seqs], dtype=torch.long, device=self.device)
        fresh = KVCache.for_model(self.model, len(seqs), self.device)
        positions, mask = padding_positions_and_mask(prompt_pad, T, T)
        logits, _ = self.model(x, kv_cache=fresh, positions=positions, attn_mask=mask)
        tokens = self._sample(logits[:, -1, :], seqs).tolist()
        for r, (seq, token) in enumerate(zip(seqs, tokens)):
            if self._emit(seq, token):
                self._join(seq, token, fresh, r, T)

    def _join(self, seq, token, fresh, r, T):
        """Copy row r of a prefill cache (its prompt ends at T) into the batch, right-aligned."""
        B, new_length = len(self.rows), len(seq.prompt)
        if self.store is None or B == self.store[0][0].size(0):
            self._grow(B)
        length = self.length if B else new_length
        if new_length > length:  # the newcomer is longer: move every row right to make room on the left
            self._shift(new_length - length)
            length = new_length
        offset = length - new_length
        for store, new in zip(self.store, (fresh.keys, fresh.values)):
            for layer in range(len(store)):
                store[layer][B, :, offset:length] = new[layer][r, :, T - new_length:T]
        self.length = length
        self.pad.append(offset)
        self.last.append(token)
        self.rows.append(seq)

    def _grow(self, B):
        """Room for more rows: capacity doubles (up to max_batch_size), so joining rows copy nothing."""
        capacity = min(max(4, 2 * B), self.max_batch_size)
        fresh = KVCache.for_model(self.model, capacity, self.device)
        if self.store is not None:
            for old, new in zip(self.store, (fresh.keys, fresh.values)):
                for layer in range(len(old)):
                    new[layer][:B] = old[layer][:B]
        self.store = (fresh.keys, fresh.values)

    def _shift(self, n):
        """Move every row n positions right (n > 0) or -n positions left (n < 0), keeping its content. What is left
        behind is stale but finite, and masked out as padding."""
        B, length = len(self.rows), self.length
        for store in self.store:
            for t in store:
                if n > 0:
                    t[:B, :, n:length + n] = t[:B, :, :length].clone()
                else:
                    t[:B, :, :length + n] = t[:B, :, -n:length].clone()
        self.length += n
        self.pad = [p + n for p in self.pad]

    def _decode(self):
        B, min_pad = len(self.rows), min(self.pad)
        if self.length + 1 > self.block_size or min_pad >= 32:
            self._shift(-min_pad)  # columns every row pads: drop them (room for the next token, cheaper attention)
        cache = KVCache.view(self.store, B, self.length)
        pad = torch.tensor(self.pad, dtype=torch.long, device=self.device)
        positions, mask = padding_positions_and_mask(pad, self.length + 1, 1)
        if mask is not None and _SDPA:
            # an additive float mask, built once per step: cheaper in every layer's attention than a boolean one
            mask = torch.zeros(mask.shape, device=self.device).masked_fill_(~mask, float("-inf"))
        last = torch.tensor(self.last, dtype=torch.long, device=self.device).view(-1, 1)
        logits, _ = self.model(last, kv_cache=cache, positions=positions, attn_mask=mask)
        self.length = cache.length
        self.last = self._sample(logits[:, -1, :], self.rows).tolist()
        done = [i for i, (seq, token) in enumerate(zip(self.rows, self.last)) if not self._emit(seq, token)]
        for i in reversed(done):  # the last row moves into the freed slot: one row copied, not the batch
            j = len(self.rows) - 1
            if i != j:
                for store in self.store:
                    for t in store:
                        t[i] = t[j]
                self.rows[i], self.pad[i], self.last[i] = self.rows[j], self.pad[j], self.last[j]
            self.rows.pop(), self.pad.pop(), self.last.pop()
        if not self.rows:
            self._reset()

    def _reset(self):
        self.rows, self.pad, self.last, self.length = [], [], [], 0  # the storage stays for the next rows


def _finish(seq, reason):
    try:
        seq.on_finish(reason)
    except Exception:
        pass  # the consumer is gone; nothing left to tell it
