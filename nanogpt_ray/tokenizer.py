"""Tokenizers: a character vocabulary (stored as meta.json) and GPT-2 BPE through tiktoken, offline-capable.

The GPT-2 ranks are tiktoken's `r50k_base` (identical to its `gpt2` encoding, but stored as one file, so a
single cached file or an explicit ranks path is enough to work without a network).
"""

from __future__ import annotations

import io
import json
import os
import pickle

from .config import GPT2_VOCAB_SIZE, PADDED_VOCAB_SIZE, UserError
from .storage import is_uri, join, read_text

GPT2_EOT = 50256
# Pattern of r50k_base/gpt2; kept here so an explicit ranks file needs nothing else from tiktoken_ext.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
RANKS_ENV = "NANOGPT_RAY_GPT2_RANKS"


def token_dtype_for(vocab_size: int) -> str:
    """uint16 whenever the vocabulary fits (what nanoGPT's loader reads), uint32 beyond 65,536 tokens."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


class TokenizerError(UserError):
    """Text or a vocabulary file a person has to fix; one line."""


class CharTokenizer:
    """One token per character, ids in sorted character order (nanoGPT's shakespeare_char)."""

    kind = "char"

    def __init__(self, chars):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.vocab_size = len(self.chars)
        self.eot_token = None

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise TokenizerError(f"character {e.args[0]!r} is not in this model's {self.vocab_size}-character vocabulary") from None

    def unknown_chars(self, text: str) -> list[str]:
        return sorted({ch for ch in text if ch not in self.stoi})

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def meta(self) -> dict:
        return {"tokenizer": "char", "vocab_size": self.vocab_size, "chars": self.chars}


class GPT2Tokenizer:
    """GPT-2 BPE; documents are separated by <|endoftext|> (id 50256)."""

    kind = "gpt2"
    vocab_size = GPT2_VOCAB_SIZE
    eot_token = GPT2_EOT

    def __init__(self, ranks_path: str | None = None):
        self.encoding = gpt2_encoding(ranks_path)

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.encoding.decode(list(ids))

    def unknown_chars(self, text: str) -> list[str]:
        return []  # byte-level BPE encodes any text

    def meta(self) -> dict:
        return {"tokenizer": "gpt2", "vocab_size": self.vocab_size}


def gpt2_encoding(ranks_path: str | None = None):
    """tiktoken's GPT-2 encoding: from an explicit ranks file (argument or $NANOGPT_RAY_GPT2_RANKS),
    else tiktoken's own loader, which reads $TIKTOKEN_CACHE_DIR before trying the network."""
    import tiktoken

    ranks_path = ranks_path or os.environ.get(RANKS_ENV)
    if ranks_path:
        from tiktoken.load import load_tiktoken_bpe

        if not os.path.isfile(ranks_path):
            raise TokenizerError(f"GPT-2 ranks file {ranks_path!r} does not exist")
        ranks = load_tiktoken_bpe(ranks_path)
        return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT_STR, mergeable_ranks=ranks,
                                 special_tokens={"<|endoftext|>": GPT2_EOT}, explicit_n_vocab=GPT2_VOCAB_SIZE)
    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception as e:  # network errors from requests/urllib come in many types
        raise TokenizerError(
            "cannot load the GPT-2 BPE ranks (no network?): set TIKTOKEN_CACHE_DIR to a tiktoken cache holding "
            f"r50k_base, or {RANKS_ENV} to an r50k_base.tiktoken file ({type(e).__name__})"
        ) from None


# ---------------------------------------------------------------------- dataset meta

class _StrIntOnlyUnpickler(pickle.Unpickler):
    """nanoGPT's meta.pkl holds dicts of str/int; anything needing a class or function is refused,
    so a hostile pickle cannot run code."""

    def find_class(self, module, name):
        raise TokenizerError(f"meta.pkl refers to {module}.{name}; only dicts of str and int are accepted")


def _read_meta_pkl(path: str) -> dict:
    with open(path, "rb") as f:
        try:
            meta = _StrIntOnlyUnpickler(io.BytesIO(f.read())).load()
        except TokenizerError:
            raise
        except Exception as e:  # a truncated or foreign pickle fails in many ways (EOFError, UnpicklingError, ...)
            raise TokenizerError(f"{path} is not a readable pickle ({type(e).__name__}); prepare the dataset again") from None
    if not isinstance(meta, dict):
        raise TokenizerError(f"{path} does not hold a dict")
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TokenizerError(f"{path} has a non-string key {key!r}")
        if isinstance(value, dict):
            if not all(isinstance(k, (str, int)) and isinstance(v, (str, int)) for k, v in value.items()):
                raise TokenizerError(f"{path}: {key!r} must map str/int to str/int")
        elif not isinstance(value, (str, int)):
            raise TokenizerError(f"{path}: {key!r} has a value of type {type(value).__name__}; only str, int and dicts of them")
    if "itos" in meta:
        itos = meta["itos"]
        meta = {"tokenizer": "char", "vocab_size": meta.get("vocab_size", len(itos)),
                "chars": [itos[i] for i in range(len(itos))]}
    return meta


def read_meta(dataset_dir: str) -> dict | None:
    """meta.json of a prepared dataset (ours), else nanoGPT's meta.pkl read safely, else None."""
    if is_uri(dataset_dir):  # a dataset in a bucket: only its small meta.json is read, not its tokens
        return read_meta_uri(dataset_dir)
    json_path = os.path.join(dataset_dir, "meta.json")
    if os.path.exists(json_path):
        try:
            with open(json_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise TokenizerError(f"{json_path} is not valid JSON ({type(e).__name__}: {e}); "
                                 "prepare the dataset again") from None
        if not isinstance(meta, dict):
            raise TokenizerError(f"{json_path} holds a JSON {type(meta).__name__}, not an object; prepare the dataset again")
        return meta
    pkl_path = os.path.join(dataset_dir, "meta.pkl")
    if os.path.exists(pkl_path):
        return _read_meta_pkl(pkl_path)
    return None


def read_meta_uri(dataset_dir: str) -> dict | None:
    path = join(dataset_dir, "meta.json")
    try:
        meta = json.loads(read_text(path))
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:
        raise TokenizerError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise TokenizerError(f"{path} holds a JSON {type(meta).__name__}, not an object; prepare the dataset again")
    return meta


def model_vocab_size(meta: dict | None) -> int:
    """The vocabulary a model trained from scratch on a dataset gets: a character vocabulary as it is (nanoGPT's
    shakespeare_char), a BPE one padded up to a multiple of 64 for faster matmuls (GPT-2's 50257 -> nanoGPT's
    50304; the padded rows never occur as targets). No meta: GPT-2 BPE, padded, as nanoGPT assumes."""
    if not meta or not meta.get("vocab_size"):
        return PADDED_VOCAB_SIZE
    vocab = int(meta["vocab_size"])
    if meta.get("tokenizer", "char") == "char":  # no tokenizer named: the vocab as given, as nanoGPT reads meta.pkl
        return vocab
    return -(-vocab // 64) * 64


def tokenizer_from_meta(meta: dict | None):
    """The tokenizer a dataset was prepared with; GPT-2 BPE when there is no meta (as nanoGPT assumes)."""
    kind = meta.get("tokenizer", "char" if "chars" in meta else "gpt2") if meta else "gpt2"
    if kind == "char":
        chars = meta.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise TokenizerError("the dataset's meta says tokenizer 'char' but has no 'chars' list of strings; "
                                 "prepare the dataset again")
        return CharTokenizer(chars)
    return GPT2Tokenizer()


def unknown_chars_message(tokenizer, text: str) -> str | None:
    """None when every character of text is in the vocabulary, else one line listing (up to 20 of) the others."""
    unknown = tokenizer.unknown_chars(text)
    if not unknown:
        return None
    shown = ", ".join(repr(ch) for ch in unknown[:20]) + (", ..." if len(unknown) > 20 else "")
    return f"{len(unknown)} character(s) outside the model's {tokenizer.vocab_size}-character vocabulary: {shown}"


def decode_tokens(tokenizer, ids) -> str:
    """Text of token ids; ids past the tokenizer's vocabulary (the padded rows of GPT-2's 50304) are dropped."""
    return tokenizer.decode([int(i) for i in ids if 0 <= int(i) < tokenizer.vocab_size])
