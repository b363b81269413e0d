"""Tokenizers: char vocab round trips, GPT-2 BPE offline, nanoGPT's meta.pkl read without unpickling code."""

import json
import os
import pathlib
import pickle

import pytest

from nanogpt_ray.tokenizer import CharTokenizer, GPT2Tokenizer, TokenizerError, read_meta, tokenizer_from_meta

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
R50K_RANKS = SHARED_DATA / "tiktoken_cache" / "0ea1e91bbb3a60f729a8dc8f777fd2fc07cd8df4"

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def test_char_tokenizer_round_trips_and_orders_ids_by_character():
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.vocab_size == len(set(TEXT))
    assert tok.encode("\n") == [0]  # sorted order: '\n' is the smallest character here
    assert ids[0] == tok.chars.index("F")


def test_char_vocab_round_trips_through_meta_json(tmp_path):
    tok = CharTokenizer.from_text(TEXT)
    (tmp_path / "meta.json").write_text(json.dumps(tok.meta()))
    meta = read_meta(str(tmp_path))
    again = tokenizer_from_meta(meta)
    assert isinstance(again, CharTokenizer)
    assert again.chars == tok.chars
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert again.decode(tok.encode(TEXT)) == TEXT


def test_unknown_character_raises_tokenizer_error_naming_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(TokenizerError, match="'z'"):
        tok.encode("abz")
    assert tok.unknown_chars("zaqz") == ["q", "z"]


def test_gpt2_bpe_hello_world_offline_from_tiktoken_cache_dir():
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR")
    assert cache_dir and os.path.samefile(cache_dir, SHARED_DATA / "tiktoken_cache"), cache_dir
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.decode([15496, 995]) == "Hello world"
    assert tok.eot_token == 50256 and tok.vocab_size == 50257


def test_gpt2_bpe_hello_world_from_explicit_ranks_file():
    assert R50K_RANKS.is_file()
    tok = GPT2Tokenizer(str(R50K_RANKS))
    assert tok.encode("Hello world") == [15496, 995]
    text = "It's 2024 -- naïve café, ünïcödé!"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode(text) == GPT2Tokenizer().encode(text)


def test_missing_ranks_file_is_a_tokenizer_error(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        GPT2Tokenizer(str(tmp_path / "nope.tiktoken"))


def test_no_meta_means_gpt2_bpe(tmp_path):
    assert read_meta(str(tmp_path)) is None
    assert isinstance(tokenizer_from_meta(None), GPT2Tokenizer)


def test_nanogpt_meta_pkl_is_read(tmp_path):
    chars = sorted(set(TEXT))
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {c: i for i, c in enumerate(chars)}}
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    tok = tokenizer_from_meta(read_meta(str(tmp_path)))
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == chars
    assert tok.decode(tok.encode(TEXT)) == TEXT


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_meta_pkl_is_rejected_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 3, "itos": exploit}, f)
    with pytest.raises(TokenizerError, match="system"):
        read_meta(str(tmp_path))
    assert not marker.exists()


def test_meta_pkl_with_other_types_is_rejected(tmp_path):
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 3.5}, f)
    with pytest.raises(TokenizerError, match="vocab_size"):
        read_meta(str(tmp_path))
