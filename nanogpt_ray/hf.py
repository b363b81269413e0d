"""OpenAI / Hugging Face GPT-2 weights in and out of our GPT. Torch only (transformers only to export).

Our module names match GPT-2's checkpoint, so the mapping is the names plus four transposes: Hugging Face
stores attention and MLP weights as Conv1D, (in, out), where nn.Linear wants (out, in).
"""

from __future__ import annotations

import json
import os

import torch

from .config import GPT2_SHAPES, UserError
from .files import default_file_mode
from .model import GPT, GPTConfig

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


class PretrainedError(UserError):
    """A pretrained model that cannot be found or read; one line."""


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


# ----------------------------------------------------------------------------- reading a model directory

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """Read a .safetensors file with torch alone: an 8-byte header length, a JSON header, raw tensor bytes."""
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
            data = bytearray(f.read())
    except (ValueError, MemoryError, OverflowError) as e:  # a bad header length or header: not safetensors
        raise PretrainedError(f"{path} is not a safetensors file ({type(e).__name__}); save the model again "
                              "with save_pretrained") from None
    if not isinstance(header, dict):
        raise PretrainedError(f"{path} is not a safetensors file (its header is not a JSON object)")
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise PretrainedError(f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}; "
                                  f"readable dtypes are {', '.join(_SAFETENSORS_DTYPES)}")
        start, end = info["data_offsets"]
        try:
            flat = torch.frombuffer(data[start:end], dtype=dtype) if end > start else torch.empty(0, dtype=dtype)
            tensors[name] = flat.reshape(info["shape"]).clone()
        except (ValueError, RuntimeError) as e:  # offsets past the end of a truncated file, or a wrong shape
            raise PretrainedError(f"{path}: tensor {name!r} cannot be read ({type(e).__name__}); "
                                  "the file is truncated or damaged") from None
    return tensors


def read_hf_weights(directory):
    safetensors_path = os.path.join(directory, "model.safetensors")
    if os.path.exists(safetensors_path):
        return read_safetensors(safetensors_path)
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(bin_path):
        try:
            return torch.load(bin_path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load fails in many ways on a damaged or foreign file
            raise PretrainedError(f"{bin_path} does not load with weights_only=True ({type(e).__name__})") from None
    raise PretrainedError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")


def download_gpt2(name):
    """Fetch an OpenAI GPT-2 checkpoint from the Hugging Face hub (needs network and huggingface_hub)."""
    try:
        from huggingface_hub import snapshot_download  # the one non-torch import, only on this online path
    except ImportError:
        raise PretrainedError(f"loading {name!r} from the hub needs huggingface_hub: pip install 'nanogpt-ray[hf]', "
                              "or pass --init_from=<a local directory saved by save_pretrained>") from None
    try:
        return snapshot_download(name, allow_patterns=["config.json", "model.safetensors"])
    except Exception as e:  # offline, no such repo, a proxy, a full disk: the hub raises many types
        raise PretrainedError(f"cannot download {name!r} from the Hugging Face hub ({type(e).__name__}); check the "
                              "network (HF_HUB_OFFLINE=1 allows only cached models), or pass --init_from=<a local "
                              "directory saved by save_pretrained>") from None


GPT2_CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")


def read_gpt2_config(directory) -> dict:
    """config.json of a GPT-2 directory; anything else (a llama, a config without GPT-2's keys) fails in one line."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise PretrainedError(f"{directory} has no config.json; pass a directory saved by GPT2LMHeadModel.save_pretrained")
    try:
        with open(path, encoding="utf-8") as f:
            hf_config = json.load(f)
    except ValueError as e:
        raise PretrainedError(f"{path} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(hf_config, dict):
        raise PretrainedError(f"{path} holds a JSON {type(hf_config).__name__}, not an object")
    model_type = hf_config.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise PretrainedError(f"{path} describes a {model_type!r} model; only GPT-2 (model_type 'gpt2') loads into our GPT")
    missing = [k for k in GPT2_CONFIG_KEYS if not isinstance(hf_config.get(k), int)]
    if missing:
        raise PretrainedError(f"{path} lacks GPT-2's integer key(s) {', '.join(missing)}; is it a GPT-2 config?")
    return hf_config


def from_pretrained(name_or_path, dropout=0.0) -> GPT:
    """OpenAI GPT-2 weights: 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl' from the Hugging Face hub,
    or a local directory written by GPT2LMHeadModel.save_pretrained (works offline)."""
    if os.path.isdir(os.path.expanduser(name_or_path)):
        directory = os.path.expanduser(name_or_path)
    elif name_or_path in GPT2_SHAPES:
        directory = download_gpt2(name_or_path)
    else:
        raise PretrainedError(f"unknown pretrained model {name_or_path!r}: use one of {', '.join(GPT2_SHAPES)} "
                         "or a directory saved by GPT2LMHeadModel.save_pretrained")
    hf_config = read_gpt2_config(directory)
    config = GPTConfig(
        n_layer=hf_config["n_layer"], n_head=hf_config["n_head"], n_embd=hf_config["n_embd"],
        block_size=hf_config["n_positions"], vocab_size=hf_config["vocab_size"],
        bias=True,  # GPT-2 checkpoints always have biases
        dropout=dropout,
        # OpenAI's GPT-2 uses the tanh approximation ("gelu_new"); an exported nanoGPT model says "gelu"
        gelu="exact" if hf_config.get("activation_function") == "gelu" else "tanh",
    )
    model = GPT(config)
    weights = read_hf_weights(directory)
    try:
        model.load_state_dict(from_hf_state_dict(weights))
    except (RuntimeError, KeyError) as e:  # missing keys, or shapes that contradict config.json
        details = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        # torch's first line is only "Error(s) in loading state_dict for GPT:"; the next says which key
        raise PretrainedError(f"the weights in {directory} do not fit its config.json: {details[min(1, len(details) - 1)][:300]}") from None
    return model


# ----------------------------------------------------------------------------- writing one

HF_ACTIVATIONS = {"tanh": "gelu_new", "exact": "gelu"}  # transformers' names for our two GELUs


def _bytes_to_unicode():
    """GPT-2's table from bytes to printable characters: vocab.json spells every byte-level token with it."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:  # whitespace and control bytes move past 255 so no token contains a bare space
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def gpt2_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab.json and merges.txt of GPT-2 rebuilt from tiktoken's ranks (no download): the merge behind
    the token of rank r is what byte-pair merging of that token yields when only ranks below r may merge."""
    to_char = _bytes_to_unicode()

    def spell(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    def last_merge(token: bytes, max_rank: int) -> list[bytes]:
        parts = [bytes([b]) for b in token]
        while True:
            best = None
            for i in range(len(parts) - 1):
                rank = ranks.get(parts[i] + parts[i + 1])
                if rank is not None and rank < max_rank and (best is None or rank < best[1]):
                    best = (i, rank)
            if best is None:
                return parts
            i = best[0]
            parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]

    vocab, merges = {}, []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[spell(token)] = rank
        if len(token) > 1:
            left, right = last_merge(token, rank)
            merges.append((spell(left), spell(right)))
    return vocab, merges


def hf_tokenizer(tokenizer):
    """A transformers tokenizer equal to ours: GPT-2 BPE from the tiktoken ranks we already read, or a
    one-token-per-character vocabulary for a char model. Needs transformers and tokenizers (the hf extra)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Tokenizer, PreTrainedTokenizerFast

    if tokenizer.kind == "gpt2":
        vocab, merges = gpt2_vocab_and_merges(tokenizer.encoding._mergeable_ranks)
        vocab["<|endoftext|>"] = tokenizer.eot_token
        return GPT2Tokenizer(vocab=vocab, merges=merges, clean_up_tokenization_spaces=False)
    # char: every character is a token, and decoding joins them with nothing in between (the default joins
    # with spaces); no unknown token, so text outside the vocabulary fails rather than silently changing
    backend = Tokenizer(models.WordLevel(vocab={ch: i for i, ch in enumerate(tokenizer.chars)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False,
                                   model_max_length=int(1e30))


def export_hf(model: GPT, out_dir: str, tokenizer=None) -> str:
    """Write a complete Hugging Face model directory: config.json and model.safetensors (GPT2LMHeadModel),
    generation_config.json, and, given our tokenizer, its transformers twin (tokenizer.json and friends),
    so `transformers.pipeline("text-generation", model=out_dir)` runs with no code of ours.
    Models trained with bias=False get zero biases, which compute the same thing."""
    cfg = model.config
    if cfg.arch != "gpt2":
        raise PretrainedError(f"cannot export an arch={cfg.arch!r} model to Hugging Face GPT-2: its rotary positions, "
                              "RMSNorm and ReLU² MLP have no GPT2LMHeadModel equivalent (only arch='gpt2' exports)")
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel  # the hf extra; only needed here

    # GPT-2's <|endoftext|> is begin, end and (for batched generation) padding; a char vocabulary has
    # no such token, and GPT2Config's default 50256 would point past a 65-token vocabulary
    eot = getattr(tokenizer, "eot_token", None) if tokenizer is not None else None
    if eot is not None and eot >= cfg.vocab_size:
        eot = None
    hf_config = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                           n_layer=cfg.n_layer, n_head=cfg.n_head,
                           activation_function=HF_ACTIVATIONS[cfg.gelu],
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                           bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    hf_model = GPT2LMHeadModel(hf_config)
    ours = to_hf_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    hf_state = hf_model.state_dict()
    for key in hf_state:
        if key in ours:
            hf_state[key] = ours[key].to(hf_state[key].dtype)
        elif key.endswith(".bias") and key.replace(".bias", ".weight") in ours:
            hf_state[key] = torch.zeros_like(hf_state[key])  # bias=False models: a zero bias is no bias
    hf_model.load_state_dict(hf_state, strict=False)
    hf_model.generation_config = GenerationConfig(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    os.makedirs(out_dir, exist_ok=True)
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    os.chmod(os.path.join(out_dir, "model.safetensors"), default_file_mode())  # safetensors writes it 0600
    if tokenizer is not None:
        hf_tok = hf_tokenizer(tokenizer)
        hf_tok.model_max_length = cfg.block_size
        hf_tok.save_pretrained(out_dir)
    return out_dir
