"""
A GPT-2 language model in one file, after nanoGPT's model.py.

Module names match OpenAI's GPT-2 checkpoint (wte, wpe, c_attn, c_proj, c_fc, ln_f) so weights map over
with four transposes. Adds what batch inference needs: a KV cache, left-padded batches of different
prompt lengths, per-row random generators, and nucleus sampling.

Imports only torch (plus the standard library).
"""

import inspect
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched against the CUDA device name.
# Order matters: the first substring found wins ("H100 PCIe" before "H100").
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("GH200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
)


def peak_flops_for_device(device_name: str):
    """bf16 peak of a named CUDA device, or None when the table does not know it."""
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops
    return None


_MEASURED_PEAKS = {}


def measure_matmul_flops(device="cpu", dtype=torch.float32, size=1024, repeats=10):
    """Measured matmul throughput of a device, the best achievable peak where no data sheet applies (CPUs)."""
    key = (str(device), dtype, size)
    if key not in _MEASURED_PEAKS:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm up the kernels and thread pool
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            if a.is_cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        _MEASURED_PEAKS[key] = 2 * size**3 / best
    return _MEASURED_PEAKS[key]


def default_peak_flops(device=None):
    """The peak MFU is measured against: data-sheet bf16 for known GPUs, measured fp32 matmul otherwise."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = peak_flops_for_device(name)
        return peak if peak is not None else measure_matmul_flops(device, torch.bfloat16, size=4096)
    return measure_matmul_flops("cpu")


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's cannot drop only the bias)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to block_size."""

    def __init__(self, n_layer, batch_size, n_head, block_size, head_size, device, dtype):
        shape = (batch_size, n_head, block_size, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # positions filled, the same for every layer once a forward pass ends

    def update(self, layer, k, v):
        """Store this step's k, v (B, nh, T, hs) for one layer; return all keys and values so far."""
        start, end = self.length, self.length + k.size(2)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_index=0):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.layer_index = layer_index
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # flash attention is in PyTorch >= 2.0; the masked fallback keeps older versions working
        self.flash = hasattr(torch.nn.functional, "scaled_dot_product_attention")

    def forward(self, x, kv_cache=None, attn_mask=None):
        B, T, C = x.size()  # batch size, sequence length, embedding dimensionality (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_index, k, v)  # (B, nh, S, hs), S = cached + T

        S = k.size(2)
        if attn_mask is None and T == S:
            # the common training case: plain causal attention, the fastest kernel
            is_causal, mask = True, None
        elif attn_mask is None and T == 1:
            is_causal, mask = False, None  # one new token may look at everything before it
        else:
            is_causal = False
            mask = attn_mask if attn_mask is not None else _causal_mask(T, S, x.device)
        dropout_p = self.dropout if self.training else 0.0
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            if is_causal:
                mask = _causal_mask(T, S, x.device)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            att = self.attn_dropout(F.softmax(att, dim=-1))
            y = att @ v  # (B, nh, T, S) x (B, nh, S, hs) -> (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


def _causal_mask(T, S, device):
    """(T, S) boolean mask: query t (at absolute position S - T + t) sees keys up to its own position."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2 was trained with the tanh approximation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config, layer_index=0):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_index)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, attn_mask=None):
        x = x + self.attn(self.ln_1(x), kv_cache, attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2. False: a bit better and faster


GPT2_SHAPES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}

# Hugging Face GPT-2 stores these as Conv1D, (in, out); our nn.Linear wants (out, in).
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None
        assert config.block_size is not None
        self.config = config

        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection reuses the token embedding (fewer params, better samples).
        self.transformer.wte.weight = self.lm_head.weight

        self.apply(self._init_weights)
        # GPT-2's scaled init: residual projections shrink with depth so the residual stream does not grow
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def get_num_params(self, non_embedding=True):
        """Parameter count; position embeddings are left out by default, as they do no matmuls.
        Token embeddings stay in: tied to lm_head, they are the final layer's weights."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, kv_cache=None, positions=None, attn_mask=None):
        """idx (B, T) tokens. With targets: logits (B, T, V) and the mean cross-entropy.
        Without: logits of the last position only (B, 1, V), all inference needs.
        kv_cache/positions/attn_mask serve generate(): cached decoding and left-padded rows."""
        device = idx.device
        b, t = idx.size()
        start = kv_cache.length if kv_cache is not None else 0
        assert start + t <= self.config.block_size, \
            f"Cannot forward sequence of length {start + t}, block size is only {self.config.block_size}"
        if positions is None:
            positions = torch.arange(start, start + t, dtype=torch.long, device=device)  # shape (t)

        tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
        pos_emb = self.transformer.wpe(positions)  # position embeddings of shape (t, n_embd) or (b, t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x, kv_cache, attn_mask)
        if kv_cache is not None:
            kv_cache.length += t
        x = self.transformer.ln_f(x)

        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            # inference-time mini-optimization: only forward the lm_head on the very last position
            logits = self.lm_head(x[:, [-1], :])  # note: using list [-1] to preserve the time dim
            loss = None
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to finetune GPT-2 (block 1024) with a smaller block."""
        assert block_size <= self.config.block_size
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])

    # ------------------------------------------------------------------ pretrained weights

    @classmethod
    def from_pretrained(cls, name_or_path, override_args=None):
        """OpenAI GPT-2 weights: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' from the Hugging Face hub,
        or a local directory written by GPT2LMHeadModel.save_pretrained (works offline)."""
        override_args = dict(override_args or {})
        assert set(override_args) <= {"dropout"}, "only dropout can be overridden on pretrained weights"
        if os.path.isdir(os.path.expanduser(name_or_path)):
            directory = os.path.expanduser(name_or_path)
        elif name_or_path in GPT2_SHAPES:
            directory = _download_gpt2(name_or_path)
        else:
            raise ValueError(f"unknown pretrained model {name_or_path!r}: use one of {', '.join(GPT2_SHAPES)} "
                             "or a directory saved by GPT2LMHeadModel.save_pretrained")
        with open(os.path.join(directory, "config.json")) as f:
            hf_config = json.load(f)
        config = GPTConfig(
            n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=hf_config["n_embd"],
            block_size=hf_config["n_positions"], vocab_size=hf_config["vocab_size"],
            bias=True,  # GPT-2 checkpoints always have biases
            dropout=override_args.get("dropout", 0.0),
        )
        model = cls(config)
        model.load_state_dict(from_hf_state_dict(_read_hf_weights(directory)))
        return model

    # ------------------------------------------------------------------ training helpers

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW where only matrices (>= 2-D: matmul weights, embeddings) decay; biases and norms do not."""
        params = {name: p for name, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for p in params.values() if p.dim() >= 2]
        nodecay_params = [p for p in params.values() if p.dim() < 2]
        optim_groups = [
            {"params": decay_params, "weight_decay": weight_decay},
            {"params": nodecay_params, "weight_decay": 0.0},
        ]
        # The fused kernel is one launch per step instead of several per tensor; it exists for cuda (and cpu in new torch).
        fused_available = "fused" in inspect.signature(torch.optim.AdamW).parameters
        use_fused = fused_available and device_type == "cuda"
        extra_args = dict(fused=True) if use_fused else dict()
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **extra_args)

    def flops_per_token(self):
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·H·Q·T."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=None):
        """Model FLOPs utilization: achieved FLOP/s over the device's peak (default_peak_flops of the
        model's device unless given). fwdbwd_per_iter sequences of block_size tokens took dt seconds."""
        if peak_flops is None:
            peak_flops = default_peak_flops(self.lm_head.weight.device)
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return (flops_per_iter / dt) / peak_flops

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 prompt_lengths=None, generators=None, use_cache=True, context_shift=0):
        """Continue each row of idx (B, T) by max_new_tokens tokens; returns (B, T + max_new_tokens).

        prompt_lengths: rows of different lengths, left-padded to T; each row then generates exactly as it
        would alone. generators: one torch.Generator per row, so a row's sample does not depend on its batch.
        With use_cache the keys and values are kept between steps; past block_size the context is cropped to
        the last block_size tokens and re-prefilled every step, exactly as full recomputation would see it.
        That re-prefill is a full forward per token (learned absolute positions: sliding the window changes
        every kept token's keys and values). context_shift=n > 0 trades that exactness for speed: when the
        context is full, the oldest n tokens are dropped at once and the cache is rebuilt once per n tokens
        (the window jumps instead of sliding; llama.cpp's "context shift").
        """
        B, T0 = idx.shape
        block_size = self.config.block_size
        shift = min(max(int(context_shift or 0), 0), block_size - 1)
        pad = torch.zeros(B, dtype=torch.long, device=idx.device)
        if prompt_lengths is not None:
            pad = T0 - torch.as_tensor(prompt_lengths, dtype=torch.long, device=idx.device)
        cache = None
        start = 0  # with context_shift: where the current window begins
        for _ in range(max_new_tokens):
            T = idx.size(1)
            if shift and T - start > block_size:
                # the window jumps by at least `shift` tokens; the cache is rebuilt once for the new window
                start, cache = max(T - block_size + shift, T - block_size), None
            if shift and start > 0:
                context, window_pad = idx[:, start:], (pad - start).clamp(min=0)
                T = context.size(1)  # <= block_size: the cached path below applies
            elif T > block_size:
                # the window slides: positions of every kept token change, so the cache cannot be reused
                context, window_pad, cache = idx[:, -block_size:], (pad - (T - block_size)).clamp(min=0), None
            else:
                context, window_pad = idx, pad
            if use_cache and cache is not None:
                step_tokens = context[:, -1:]
            else:
                step_tokens = context
                if use_cache and T <= block_size:
                    head_size = self.config.n_embd // self.config.n_head
                    cache = KVCache(self.config.n_layer, B, self.config.n_head, block_size, head_size,
                                    idx.device, self.lm_head.weight.dtype)
            positions, mask = _padding_positions_and_mask(window_pad, context.size(1), step_tokens.size(1))
            if use_cache and T <= block_size and cache is not None:
                logits, _ = self(step_tokens, kv_cache=cache, positions=positions, attn_mask=mask)
            else:
                logits, _ = self(step_tokens, positions=positions, attn_mask=mask)
            idx_next = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generators)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def _padding_positions_and_mask(pad, total_len, step_len):
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


def sample_next_token(logits, temperature=1.0, top_k=None, top_p=None, generators=None):
    """One token per row from logits (B, V): temperature, then top-k, then top-p (nucleus)."""
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


# ---------------------------------------------------------------------- Hugging Face GPT-2 weights

def from_hf_state_dict(hf_state):
    """Map a Hugging Face GPT2LMHeadModel state dict onto ours: same names, four transposed Conv1D weights."""
    out = {}
    for key, value in hf_state.items():
        if key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"):
            continue  # causal-mask buffers, not parameters
        name = key if key.startswith("lm_head.") else (key if key.startswith("transformer.") else "transformer." + key)
        out[name] = value.t().contiguous() if name.endswith(CONV1D_SUFFIXES) else value
    if "lm_head.weight" not in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]  # tied; safetensors stores it once
    return out


def to_hf_state_dict(state):
    """Our state dict in GPT2LMHeadModel's layout (the inverse of from_hf_state_dict)."""
    return {key: (value.t().contiguous() if key.endswith(CONV1D_SUFFIXES) else value) for key, value in state.items()}


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def _read_safetensors(path):
    """Read a .safetensors file with torch alone: an 8-byte header length, a JSON header, raw tensor bytes."""
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
        data = bytearray(f.read())
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        flat = torch.frombuffer(data[start:end], dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
        tensors[name] = flat.reshape(info["shape"]).clone()
    return tensors


def _read_hf_weights(directory):
    safetensors_path = os.path.join(directory, "model.safetensors")
    if os.path.exists(safetensors_path):
        return _read_safetensors(safetensors_path)
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(bin_path):
        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")


def _download_gpt2(name):
    """Fetch an OpenAI GPT-2 checkpoint from the Hugging Face hub (needs network and huggingface_hub)."""
    try:
        from huggingface_hub import snapshot_download  # the one non-torch import, only on this online path
    except ImportError as e:
        raise ImportError(f"loading {name!r} from the hub needs `pip install nanogpt-ray[hf]`, "
                          "or pass a local directory saved by save_pretrained") from e
    return snapshot_download(name, allow_patterns=["config.json", "model.safetensors"])
