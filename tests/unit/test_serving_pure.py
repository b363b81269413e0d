"""The serving core without Ray or HTTP: the continuous batcher against plain generation, request validation
(every 400), stop strings in streamed text, and OpenAI's response shapes."""

import threading

import pytest
import torch

from nanogpt_ray.config import ConfigError, SamplingParams, ServeConfig
from nanogpt_ray.engine import BatcherClosed, ContinuousBatcher, Sequence, generate
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.modern import build_gpt
from nanogpt_ray.serving import (
    RequestError,
    TextStream,
    completion_chunk,
    completion_response,
    error_body,
    merge_deltas,
    parse_completion_request,
)
from nanogpt_ray.tokenizer import CharTokenizer


def sampling(max_new_tokens, **overrides):
    """A server row's SamplingParams: unseeded, whole vocabulary, unless the test says otherwise."""
    return SamplingParams(max_new_tokens, **{"temperature": 1.0, "top_k": None, "seed": None, **overrides})

TEXT = "abcdefghijklmnopqrstuvwxyz ,.\n"
BLOCK = 48


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=BLOCK, vocab_size=len(TEXT), n_layer=2, n_head=2, n_embd=32, bias=False))
    with torch.no_grad():  # sharper logits: greedy choices far from ties
        for p in m.parameters():
            p.mul_(10.0)
    return m.eval()


class Collect:
    """What a server does with a row: keep its tokens and how it ended."""

    def __init__(self, stop_after=None):
        self.tokens, self.reason, self.stop_after = [], None, stop_after

    def on_token(self, t):
        self.tokens.append(t)
        return self.stop_after is None or len(self.tokens) < self.stop_after

    def on_finish(self, reason):
        assert self.reason is None, "on_finish is called once"
        self.reason = reason


def run_until_idle(batcher, limit=500):
    for _ in range(limit):
        if not batcher.busy():
            return
        batcher.step()
    raise AssertionError("the batcher never went idle")


def test_rows_joining_between_steps_generate_exactly_what_each_would_alone(model):
    prompts = [[1, 2, 3], [5] * 20, [7, 8], list(range(28)), [9] * 10, [3, 4, 5, 6]]
    lengths = [30, 10, 40, 19, 5, 12]  # 28 + 19 = 47: the cache must drop shared padding to fit
    batcher = ContinuousBatcher(model, max_batch_size=4)  # 6 rows, 4 slots: two wait for a free slot
    rows = [Collect() for _ in prompts]
    seqs = [Sequence(p, sampling(n, top_k=1), r.on_token, r.on_finish) for p, n, r in zip(prompts, lengths, rows)]
    batcher.submit(seqs[0])
    batcher.step()
    batcher.step()
    batcher.submit(seqs[1])  # joins a batch that is already decoding, with a longer prompt
    batcher.step()
    for seq in seqs[2:]:
        batcher.submit(seq)
    run_until_idle(batcher)
    for p, n, r in zip(prompts, lengths, rows):
        expected = generate(model, torch.tensor([p]), n, top_k=1)[0, len(p):].tolist()
        assert r.tokens == expected and r.reason == "length"


def test_seeded_sampled_rows_match_generate_with_the_same_generator(model):
    batcher = ContinuousBatcher(model)
    rows = [Collect() for _ in range(3)]
    for i, r in enumerate(rows):
        batcher.submit(Sequence([1, 2, 3 + i], sampling(15, temperature=0.9, top_k=5, seed=100 + i), r.on_token, r.on_finish))
    run_until_idle(batcher)
    for i, r in enumerate(rows):
        g = torch.Generator().manual_seed(100 + i)
        expected = generate(model, torch.tensor([[1, 2, 3 + i]]), 15, temperature=0.9, top_k=5, generators=[g])
        assert r.tokens == expected[0, 3:].tolist()


def test_a_row_that_says_stop_leaves_and_a_broken_consumer_fails_only_its_row(model):
    batcher = ContinuousBatcher(model)
    stopper, steady = Collect(stop_after=3), Collect()

    def broken(_token):
        raise RuntimeError("client went away")

    broken_row = Collect()
    batcher.submit(Sequence([1, 2], sampling(20, top_k=1), stopper.on_token, stopper.on_finish))
    batcher.submit(Sequence([1, 2], sampling(20, top_k=1), broken, broken_row.on_finish))
    batcher.submit(Sequence([1, 2], sampling(20, top_k=1), steady.on_token, steady.on_finish))
    run_until_idle(batcher)
    assert (len(stopper.tokens), stopper.reason) == (3, "stop")
    assert broken_row.reason == "stop"
    assert len(steady.tokens) == 20 and steady.reason == "length"
    assert steady.tokens[:3] == stopper.tokens


def test_submit_keeps_the_prompt_tail_that_fits_with_max_new_tokens(model):
    batcher = ContinuousBatcher(model)
    row = Collect()
    long_prompt = list(range(len(TEXT))) * 3  # 90 tokens, block 48
    batcher.submit(Sequence(long_prompt, sampling(8, top_k=1), row.on_token, row.on_finish))
    run_until_idle(batcher)
    expected = generate(model, torch.tensor([long_prompt[-(BLOCK - 8):]]), 8, top_k=1)[0, BLOCK - 8:].tolist()
    assert row.tokens == expected
    with pytest.raises(ValueError):
        batcher.submit(Sequence([1], sampling(BLOCK), row.on_token, row.on_finish))


def test_a_drained_batcher_finishes_its_rows_then_stops_and_refuses_new_ones(model):
    batcher = ContinuousBatcher(model)
    rows = [Collect() for _ in range(3)]
    batcher.submit(*[Sequence([1, 2], sampling(30, top_k=1), r.on_token, r.on_finish) for r in rows])
    batcher.drain()  # before the loop even starts: what was submitted still runs to the end
    thread = threading.Thread(target=batcher.run, args=(threading.Event(),))
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert all(len(r.tokens) == 30 and r.reason == "length" for r in rows)
    with pytest.raises(BatcherClosed):
        batcher.submit(Sequence([1], sampling(3), rows[0].on_token, rows[0].on_finish))


# ---------------------------------------------------------------------------- requests

TOK = CharTokenizer.from_text(TEXT)


def parse(**body):
    return parse_completion_request({"model": "m", **body}, "m", TOK, BLOCK)


def test_a_valid_request_expands_into_seeded_choices():
    req = parse(prompt=["ab", "cd"], n=3, seed=7, max_tokens=5, temperature=0.5, top_p=0.9, top_k=4, stop="x")
    assert [c.index for c in req.choices] == [0, 1, 2, 3, 4, 5]
    assert [c.prompt_index for c in req.choices] == [0, 0, 0, 1, 1, 1]
    assert [c.params.seed for c in req.choices] == [7, 8, 9, 10, 11, 12]
    assert req.choices[3].prompt_ids == TOK.encode("cd")
    assert (req.params.top_p, req.params.top_k, req.stop, req.params.max_new_tokens) == (0.9, 4, ["x"], 5)
    assert parse(prompt="a").choices[0].params.seed is None and parse(prompt="a", top_p=1).params.top_p is None


def test_a_prompt_longer_than_the_room_left_keeps_its_tail():
    req = parse(prompt="abcdefghij" * 10, max_tokens=8)
    assert req.choices[0].prompt_ids == TOK.encode(("abcdefghij" * 10)[-(BLOCK - 8):])


@pytest.mark.parametrize("body, param", [
    (dict(model="other"), "model"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=BLOCK), "max_tokens"),  # leaves no room for even one prompt token: cannot crop
    (dict(max_tokens="5"), "max_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(n=0), "n"),
    (dict(prompt="ABC"), "prompt"),  # capitals are not in the vocabulary
    (dict(prompt=[1, 2]), "prompt"),
    (dict(stop=["a", ""]), "stop"),
    (dict(stream="yes"), "stream"),
    (dict(prompt=["ab"] * 9, n=16), "n"),  # 144 completions in one request
    (dict(prompt=""), "prompt"),  # a char vocabulary has no <|endoftext|> to start from
])
def test_bad_requests_raise_a_request_error_naming_the_field(body, param):
    with pytest.raises(RequestError) as e:
        parse(**{"prompt": "ab", **body})
    assert e.value.param == param and e.value.status == 400


def test_a_missing_model_means_the_served_one_and_a_non_object_body_is_refused():
    assert parse_completion_request({"prompt": "ab"}, "m", TOK, BLOCK).model == "m"
    with pytest.raises(RequestError):
        parse_completion_request(["ab"], "m", TOK, BLOCK)


# ---------------------------------------------------------------------------- stop strings and shapes

def stream_text(text, stop):
    stream = TextStream(TOK, stop)
    deltas = []
    for ch in text:
        delta, stopped = stream.push(TOK.encode(ch)[0])
        deltas.append(delta)
        if stopped:
            return deltas, True
    deltas.append(stream.flush())
    return deltas, False


def test_stop_strings_cut_the_text_and_a_stream_never_sends_what_is_cut():
    deltas, stopped = stream_text("hello world. more", ["d. m"])
    assert stopped and "".join(deltas) == "hello worl"
    deltas, stopped = stream_text("abc abd", ["abx"])  # "ab" is held back until 'c'/'d' rules the stop out
    assert not stopped and "".join(deltas) == "abc abd"
    assert deltas[1] == ""  # 'ab' might have begun 'abx'
    deltas, stopped = stream_text("one\ntwo", ["\n", "o"])
    assert stopped and "".join(deltas) == ""  # the earliest stop wins: 'o' at index 0


def test_response_shapes_follow_openai():
    r = completion_response("cmpl-1", "m", ["a", "b"], ["length", "stop"], 3, 4, created=5)
    assert r["object"] == "text_completion" and r["created"] == 5 and r["model"] == "m"
    assert r["choices"][1] == {"text": "b", "index": 1, "logprobs": None, "finish_reason": "stop"}
    assert r["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    chunk = completion_chunk("cmpl-1", "m", 5, 2, "x")
    assert chunk["choices"][0]["index"] == 2 and chunk["choices"][0]["finish_reason"] is None
    assert error_body("bad", param="n")["error"] == {"message": "bad", "type": "invalid_request_error", "param": "n",
                                                     "code": None}


def test_serve_config_validation_and_model_name(tmp_path):
    assert ServeConfig(out_dir=str(tmp_path / "out-shakespeare-char")).served_model_name() == "out-shakespeare-char"
    assert ServeConfig(init_from="gpt2").served_model_name() == "gpt2"
    for bad in (dict(max_batch_size=0), dict(port=0), dict(max_queued_requests=0), dict(init_from="gpt2", watch=True),
                dict(max_replicas=2, min_replicas=3)):
        with pytest.raises(ConfigError):
            ServeConfig(**bad)


def test_merged_stream_events_keep_each_choices_text_in_order():
    events = [(1, "a", None), (0, "x", None), (1, "b", None), (1, "", "length"), (0, "y", None)]
    assert merge_deltas(events) == [(1, "ab", "length"), (0, "xy", None)]


def test_serve_help_lists_its_keys_and_a_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    from nanogpt_ray import cli

    assert cli.main(["serve", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--max_queued_requests=" in out and "--watch=" in out and "serve" in cli.USAGE
    assert cli.main(["serve", f"--out_dir={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint" in err


def test_a_modern_rotary_model_serves_the_same_tokens_as_generate():
    # the recipe's flavour behind the same batcher: rotary positions of rows that join mid-decode must still
    # be their positions in their own text
    torch.manual_seed(2)
    modern = build_gpt(GPTConfig(block_size=BLOCK, vocab_size=len(TEXT), n_layer=2, n_head=2, n_embd=32, bias=False,
                                 arch="modern")).eval()
    with torch.no_grad():  # the recipe zero-initialises the head and projections: give those real weights
        for p in modern.parameters():
            if not p.any():
                p.copy_(torch.randn_like(p) * 0.1)
    prompts, lengths = [[1, 2, 3], [5] * 12, [7, 8, 9, 10]], [20, 8, 15]
    batcher = ContinuousBatcher(modern, max_batch_size=2)
    rows = [Collect() for _ in prompts]
    batcher.submit(Sequence(prompts[0], sampling(lengths[0], top_k=1), rows[0].on_token, rows[0].on_finish))
    batcher.step()
    for p, n, r in list(zip(prompts, lengths, rows))[1:]:
        batcher.submit(Sequence(p, sampling(n, top_k=1), r.on_token, r.on_finish))
    run_until_idle(batcher)
    for p, n, r in zip(prompts, lengths, rows):
        expected = generate(modern, torch.tensor([p]), n, top_k=1)[0, len(p):].tolist()
        assert r.tokens == expected and len(set(expected)) > 1
