"""batch_sampling without Ray: rows, seeds, validation, batch planning, generation, prompt files, outputs."""

import json
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from nanogpt_ray.batch_sampling import (
    BatchSampleError,
    ResultWriter,
    SampleRow,
    derive_seed,
    done_keys,
    expand_rows,
    generate_batch,
    generator_seed,
    left_pad,
    plan_batches,
    prompt_error_and_ids,
    read_prompts,
    read_results,
    result_row,
    sample_rows,
    unique_ids,
)
from nanogpt_ray.engine import generate
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.tokenizer import CharTokenizer

TEXT = "abcdefghijklmnopqrstuvwxyz ,.\n"
BLOCK = 24


def defaults(**overrides):
    values = dict(num_samples=1, max_new_tokens=6, temperature=1.0, top_k=None, top_p=None, seed=1337)
    return SimpleNamespace(**{**values, **overrides})


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    tokenizer = CharTokenizer.from_text(TEXT)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=tokenizer.vocab_size, n_layer=2, n_head=2, n_embd=32)).eval()
    return model, tokenizer


def rows_of(prompts, **overrides):
    return list(expand_rows([{"id": i, "prompt": p} for i, p in enumerate(prompts)], defaults(**overrides)))


# ---------------------------------------------------------------------------- seeds and rows

def test_derived_seeds_are_stable_and_differ_per_id_and_global_seed():
    assert derive_seed(1337, 5) == derive_seed(1337, 5)
    assert derive_seed(1337, 5) != derive_seed(1337, 6)
    assert derive_seed(1337, 5) != derive_seed(1338, 5)
    assert derive_seed(1337, 5) != derive_seed(1337, "5")  # ids keep their type
    assert 0 <= derive_seed(1, "x") < 2**63
    assert generator_seed(100, 3) == 103


def test_expand_rows_gives_one_row_per_sample_with_row_overrides():
    records = [{"id": "a", "prompt": "ab", "seed": 7, "top_k": 3, "max_new_tokens": 2},
               {"id": "b", "prompt": "cd", "temperature": 0.5}]
    rows = list(expand_rows(records, defaults(num_samples=3)))
    assert [(r.id, r.sample) for r in rows] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert rows[0].seed == 7 and rows[0].top_k == 3 and rows[0].max_new_tokens == 2 and rows[0].temperature == 1.0
    assert rows[3].seed == derive_seed(1337, "b") and rows[3].temperature == 0.5 and rows[3].top_k is None
    assert all(r.error is None for r in rows)


@pytest.mark.parametrize("bad, word", [({"temperature": 0}, "temperature"), ({"top_k": 0}, "top_k"),
                                       ({"max_new_tokens": 1.5}, "max_new_tokens"), ({"top_p": 2.0}, "top_p"),
                                       ({"seed": "x"}, "seed")])
def test_a_bad_row_setting_becomes_that_rows_error(bad, word):
    rows = list(expand_rows([{"id": 1, "prompt": "ab", **bad}, {"id": 2, "prompt": "ab"}], defaults()))
    assert word in rows[0].error
    assert rows[1].error is None


# ---------------------------------------------------------------------------- validation

def test_prompt_validation_names_each_problem(model_and_tokenizer):
    _, tok = model_and_tokenizer
    assert prompt_error_and_ids(tok, "", BLOCK, False)[0] == "empty prompt"
    error, _ = prompt_error_and_ids(tok, "abc XYZ", BLOCK, False)
    assert "outside the model's" in error and "'X'" in error
    long = "abcdefghij" * 3
    error, _ = prompt_error_and_ids(tok, long, BLOCK, False)
    assert "longer than the model's block_size=24" in error
    error, ids = prompt_error_and_ids(tok, long, BLOCK, True)
    assert error is None and ids == tok.encode(long)[-BLOCK:]
    assert prompt_error_and_ids(tok, "hello", BLOCK, False) == (None, tok.encode("hello"))


# ---------------------------------------------------------------------------- planning

def test_plan_batches_is_deterministic_complete_and_groups_settings():
    records = [{"id": i, "prompt": "a" * (1 + (i * 7) % 11), "max_new_tokens": 4 if i % 3 else 8} for i in range(50)]
    records.append({"id": 99, "prompt": "ab", "temperature": -1})
    rows = list(expand_rows(records, defaults(num_samples=2)))
    first = [[r.key() for r in b] for b in plan_batches(rows, batch_size=8, window=40)]
    again = [[r.key() for r in b] for b in plan_batches(list(expand_rows(records, defaults(num_samples=2))), 8, 40)]
    assert first == again
    flat = [k for b in first for k in b]
    assert sorted(flat, key=str) == sorted((r.key() for r in rows), key=str) and len(flat) == len(set(flat))
    by_key = {r.key(): r for r in rows}
    for batch in first:
        assert 1 <= len(batch) <= 8
        kinds = {(by_key[k].settings(), by_key[k].error is None) for k in batch}
        assert len(kinds) == 1  # one setting per batch, errors apart
        lengths = [len(by_key[k].prompt) for k in batch]
        assert lengths == sorted(lengths)


def test_left_pad_puts_padding_on_the_left():
    x, lengths = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert x.tolist() == [[1, 2, 3], [0, 0, 4]] and lengths == [3, 1]


# ---------------------------------------------------------------------------- generation

def test_a_rows_completion_is_the_same_alone_or_in_any_batch(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = ["hello", "a", "the quick fox", "zz", "sampling is fun"]
    rows = rows_of(prompts, max_new_tokens=10)
    batched = generate_batch(model, tok, rows, BLOCK)
    alone = [generate_batch(model, tok, [row], BLOCK)[0] for row in rows_of(prompts, max_new_tokens=10)]
    assert [r["completion"] for r in batched] == [r["completion"] for r in alone]
    assert all(r["tokens"] == 10 and len(r["completion"]) == 10 and r["error"] is None for r in batched)
    reversed_batch = generate_batch(model, tok, rows_of(prompts, max_new_tokens=10)[::-1], BLOCK)
    assert [r["completion"] for r in reversed_batch[::-1]] == [r["completion"] for r in batched]
    other_seed = generate_batch(model, tok, rows_of(prompts, max_new_tokens=10, seed=1), BLOCK)
    assert [r["completion"] for r in other_seed] != [r["completion"] for r in batched]


def test_samples_of_one_prompt_differ_and_greedy_rows_agree(model_and_tokenizer):
    model, tok = model_and_tokenizer
    rows = list(expand_rows([{"id": 1, "prompt": "abc"}], defaults(num_samples=4, max_new_tokens=12)))
    completions = [r["completion"] for r in generate_batch(model, tok, rows, BLOCK)]
    assert len(set(completions)) > 1
    greedy = list(expand_rows([{"id": 1, "prompt": "abc"}], defaults(num_samples=3, top_k=1)))
    assert len({r["completion"] for r in generate_batch(model, tok, greedy, BLOCK)}) == 1


def test_generation_runs_past_block_size(model_and_tokenizer):
    model, tok = model_and_tokenizer
    [result] = generate_batch(model, tok, rows_of(["abcdefghij" * 2], max_new_tokens=20), BLOCK)
    assert result["error"] is None and result["tokens"] == 20


def test_bad_rows_get_an_error_and_the_rest_generate(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = ["good one", "", "BAD", "x" * 40, "fine too"]
    results = list(sample_rows(model, tok, rows_of(prompts), BLOCK, batch_size=2))
    by_id = {r["id"]: r for r in results}
    assert len(results) == 5 and set(by_id) == {0, 1, 2, 3, 4}
    assert by_id[1]["error"] == "empty prompt"
    assert "'B'" in by_id[2]["error"]
    assert "block_size" in by_id[3]["error"]
    for i in (0, 4):
        assert by_id[i]["error"] is None and by_id[i]["tokens"] == 6
    assert all(by_id[i]["completion"] is None and by_id[i]["tokens"] == 0 for i in (1, 2, 3))
    truncated = list(sample_rows(model, tok, rows_of(["x" * 40]), BLOCK, truncate=True))
    assert truncated[0]["error"] is None


# ---------------------------------------------------------------------------- files

def test_txt_prompts_are_numbered_by_line(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("first\n\nthird\n")
    assert list(read_prompts(str(path))) == [{"id": 1, "prompt": "first"}, {"id": 2, "prompt": ""},
                                             {"id": 3, "prompt": "third"}]


def test_jsonl_prompts_keep_ids_and_settings_and_reject_bad_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "x", "prompt": "hi", "seed": 3}) + "\n\n" + json.dumps({"prompt": "yo"}) + "\n")
    assert list(read_prompts(str(path))) == [{"id": "x", "prompt": "hi", "seed": 3}, {"id": 3, "prompt": "yo"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    with pytest.raises(BatchSampleError, match="no 'prompt'"):
        list(read_prompts(str(bad)))
    with pytest.raises(BatchSampleError, match="must end in"):
        list(read_prompts(str(tmp_path / "p.csv")))
    with pytest.raises(BatchSampleError, match="appears twice"):
        list(unique_ids([{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}]))


def test_parquet_prompts_with_and_without_ids(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"], "top_k": [None, 5], "other": [1, 2]}), path)
    assert list(read_prompts(str(path))) == [{"prompt": "a", "top_k": None, "id": 1},
                                             {"prompt": "b", "top_k": 5, "id": 2}]


def _result(i, sample=0):
    row = SampleRow(i, sample, "p", 6, 1.0, None, None, 1)
    return result_row(row, "done", 6)


def test_jsonl_writer_streams_resumes_and_repairs_a_torn_line(tmp_path):
    out = str(tmp_path / "o.jsonl")
    with ResultWriter(out) as w:
        w.write([_result(1), _result(2)])
    with open(out, "a") as f:
        f.write('{"id": 3, "sam')  # a kill in the middle of a line
    assert done_keys(out) == {("1", 0), ("2", 0)}
    with ResultWriter(out, resume=True) as w:
        w.write([_result(3)])
    assert [r["id"] for r in read_results(out)] == [1, 2, 3]
    with ResultWriter(out) as w:  # no resume: a fresh file
        w.write([_result(9)])
    assert [r["id"] for r in read_results(out)] == [9]


def test_parquet_writer_converts_at_close_and_resume_keeps_earlier_rows(tmp_path):
    out = str(tmp_path / "o.parquet")
    w = ResultWriter(out)
    w.write([_result(1)])
    w.file.close()  # killed before close(): only the partial stream exists
    assert done_keys(out) == {("1", 0)}
    with ResultWriter(out, resume=True) as w:
        w.write([_result(2)])
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == [1, 2] and table.schema.field("error").type == pa.string()
    assert not (tmp_path / "o.parquet.partial.jsonl").exists()
    with ResultWriter(out, resume=True) as w:
        w.write([_result(3, sample=1)])
    assert [(r["id"], r["sample"]) for r in read_results(out)] == [(1, 0), (2, 0), (3, 1)]


@pytest.mark.parametrize("shift", [1, 8, 23])
def test_context_shift_cache_equals_recomputation_of_the_same_windows(model_and_tokenizer, shift):
    model, _ = model_and_tokenizer
    torch.manual_seed(3)
    idx = torch.randint(0, model.config.vocab_size, (2, 5))
    cached = generate(model, idx, 50, top_k=1, context_shift=shift)
    uncached = generate(model, idx, 50, top_k=1, context_shift=shift, use_cache=False)
    assert torch.equal(cached, uncached)
    # windows that jump, not slide: past block_size the tokens differ from the sliding window's
    sliding = generate(model, idx, 50, top_k=1)
    assert torch.equal(cached[:, :BLOCK + 1], sliding[:, :BLOCK + 1])  # identical while the context fits
    if shift > 1:
        assert not torch.equal(cached, sliding)
    else:
        assert torch.equal(cached, sliding)  # a shift of one token is the sliding window itself


def test_generate_batch_passes_context_shift(model_and_tokenizer):
    model, tok = model_and_tokenizer
    plain = generate_batch(model, tok, rows_of(["abc"], max_new_tokens=40), BLOCK)
    shifted = generate_batch(model, tok, rows_of(["abc"], max_new_tokens=40), BLOCK, context_shift=12)
    assert plain[0]["completion"][:BLOCK - 3] == shifted[0]["completion"][:BLOCK - 3]
    assert plain[0]["completion"] != shifted[0]["completion"]
