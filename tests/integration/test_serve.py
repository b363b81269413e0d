"""`nanogpt-ray serve` for real: Ray Serve on a local 2-CPU cluster, answering the `openai` client over HTTP.

One application (the tiny char model, --watch on) serves every test; a second one with one request in flight
and one queued shows back-pressure. The checkpoint is a random 2-layer model written here; expected texts come
from `sample.generate_ids` over the same checkpoint (what `nanogpt-ray sample --top_k=1` prints).
"""

import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import ray
import torch
from ray import serve

from nanogpt_ray.checkpoint import save_checkpoint
from nanogpt_ray.cluster.serve import build_app
from nanogpt_ray.config import SampleConfig, SamplingParams, ServeConfig
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.sample import decode_tokens, encode_prompt, generate_ids, load_sampler
from nanogpt_ray.tokenizer import CharTokenizer

pytestmark = pytest.mark.ray

TEXT = "ROMEO:\nBut soft, what light through yonder window breaks?\nJULIET:\nAy me!\n"
BLOCK_SIZE = 64
MODEL = "tiny"


def write_checkpoint(out_dir, data_root, seed, iter_num):
    torch.manual_seed(seed)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=BLOCK_SIZE, bias=False,
                      vocab_size=len(sorted(set(TEXT))), dropout=0.0)
    model = GPT(GPTConfig(**model_args))
    with torch.no_grad():  # sharper logits than the init, so greedy choices are far from ties
        for p in model.parameters():
            p.mul_(20.0)
    ckpt = {"model": model.state_dict(), "optimizer": {}, "model_args": model_args, "iter_num": iter_num,
            "best_val_loss": 1e9, "config": {"dataset": "tiny_char", "data_root": str(data_root)}}
    save_checkpoint(ckpt, str(out_dir / "ckpt.pt"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data_root = root / "data"
    (data_root / "tiny_char").mkdir(parents=True)
    (data_root / "tiny_char" / "meta.json").write_text(json.dumps(CharTokenizer.from_text(TEXT).meta()))
    write_checkpoint(root / "out", data_root, seed=0, iter_num=10)
    return dict(out_dir=root / "out", data_root=data_root)


@pytest.fixture(scope="module")
def server(run_dir):
    """A local Ray cluster with 2 CPUs, Serve's proxy on a free loopback port, and two applications."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # ours, not a `ray start` one
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = dict(out_dir=str(run_dir["out_dir"]), data_root=str(run_dir["data_root"]), model_name=MODEL, port=port,
                  device="cpu", dtype="float32", cpus_per_replica=0.5)
    serve.run(build_app(ServeConfig(**common, watch=True, watch_interval_s=0.3, max_batch_size=16)),
              name="nanogpt", route_prefix="/")
    # one request running, one queued, the rest turned away: back-pressure
    serve.run(build_app(ServeConfig(**common, max_ongoing_requests=1, max_queued_requests=1, retry_after_s=2)),
              name="busy", route_prefix="/busy")
    base = f"http://127.0.0.1:{port}"
    yield dict(base=base, client=openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0), **run_dir)
    serve.shutdown()
    ray.shutdown()


def expected_greedy(run_dir, prompt, max_tokens):
    """What `nanogpt-ray sample --top_k=1 --start=PROMPT` prints after the prompt, for the current checkpoint."""
    cfg = SampleConfig(out_dir=str(run_dir["out_dir"]), data_root=str(run_dir["data_root"]), device="cpu", dtype="float32")
    sampler = load_sampler(cfg)
    ids = encode_prompt(sampler.tokenizer, prompt)
    (row,) = generate_ids(sampler, ids, 1, SamplingParams(max_tokens, temperature=1.0, top_k=1))
    return decode_tokens(sampler.tokenizer, row[len(ids):])


@pytest.mark.timeout(120)
def test_a_greedy_completion_via_the_openai_client_equals_sample_top_k_1(server):
    r = server["client"].completions.create(model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL and r.id.startswith("cmpl-")
    assert len(r.choices) == 1 and r.choices[0].finish_reason == "length" and r.choices[0].index == 0
    assert r.choices[0].text == expected_greedy(server, "ROMEO:", 30)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 30, 36)
    models = server["client"].models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert httpx.get(f"{server['base']}/health").json()["status"] == "ok"


@pytest.mark.timeout(120)
def test_a_streamed_completion_concatenates_to_the_plain_one(server):
    plain = server["client"].completions.create(model=MODEL, prompt="JULIET:", max_tokens=40, temperature=0)
    chunks = list(server["client"].completions.create(model=MODEL, prompt="JULIET:", max_tokens=40, temperature=0,
                                                      stream=True))
    assert len(chunks) > 1  # streamed token by token, not one blob
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    with httpx.stream("POST", f"{server['base']}/v1/completions", timeout=30,
                      json={"model": MODEL, "prompt": "Ay", "max_tokens": 5, "stream": True}) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = [line for line in raw.iter_lines() if line]
    assert events[-1] == "data: [DONE]" and all(e.startswith("data: ") for e in events)


@pytest.mark.timeout(120)
def test_n_choices_with_a_seed_are_reproducible_and_stop_strings_end_a_choice(server):
    ask = dict(model=MODEL, prompt=["But", "what"], n=3, seed=11, max_tokens=25, temperature=1.0)
    first, second = (server["client"].completions.create(**ask) for _ in range(2))
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == list(range(6))
    assert texts == [c.text for c in second.choices]
    assert len(set(texts)) > 1  # the choices differ from each other: one seed per row, not one per request
    greedy = expected_greedy(server, "ROMEO:", 30)
    stop = greedy[10:12]
    r = server["client"].completions.create(model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == greedy[:greedy.index(stop)]


@pytest.mark.timeout(180)
def test_32_concurrent_clients_all_get_their_own_complete_answer(server):
    prompts = [TEXT[i:i + 3 + i % 7] for i in range(32)]  # 32 different prompts of 3..9 characters
    lengths = [10 + (i * 7) % 30 for i in range(32)]
    expected = {}
    for p, n in zip(prompts, lengths):
        expected[(p, n)] = expected_greedy(server, p, n)

    def ask(i):
        r = server["client"].completions.create(model=MODEL, prompt=prompts[i], max_tokens=lengths[i], temperature=0)
        return r.choices[0].text, r.choices[0].finish_reason

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    for i, (text, reason) in enumerate(answers):
        assert reason == "length" and text == expected[(prompts[i], lengths[i])], i


@pytest.mark.timeout(120)
def test_bad_requests_get_openai_style_400s_and_the_replica_keeps_serving(server):
    url = f"{server['base']}/v1/completions"
    good = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 4}
    bad = [
        ({**good, "model": "gpt-4"}, "model"),
        ({**good, "max_tokens": 0}, "max_tokens"),
        ({**good, "temperature": -1}, "temperature"),
        ({**good, "prompt": "ROMEO: 42 \u00e9"}, "prompt"),  # digits and accents are outside the char vocabulary
        ({**good, "prompt": "R" * 200, "max_tokens": BLOCK_SIZE}, "max_tokens"),  # too long and cannot be cropped
    ]
    for body, param in bad:
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param and r.json()["error"]["message"]
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400
    with pytest.raises(openai.BadRequestError):
        server["client"].completions.create(model="nope", prompt="R", max_tokens=2)
    assert httpx.post(url, json=good, timeout=30).json()["choices"][0]["finish_reason"] == "length"


@pytest.mark.timeout(120)
def test_an_overloaded_deployment_answers_503_with_a_retry_hint(server):
    url = f"{server['base']}/busy/v1/completions"
    body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 60, "n": 16}

    def ask(_):
        return httpx.post(url, json=body, timeout=60)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(ask, range(12)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    rejected = next(r for r in answers if r.status_code == 503)
    assert rejected.headers.get("retry-after") == "2"
    assert all(len(c["text"]) == 60 for r in answers if r.status_code == 200 for c in r.json()["choices"])


@pytest.mark.timeout(120)
def test_watch_swaps_to_a_newer_checkpoint_without_failing_requests_in_flight(server):
    before = expected_greedy(server, "ROMEO:", 30)
    assert httpx.get(f"{server['base']}/health").json()["iter_num"] == 10
    failures, done, stop = [], [], threading.Event()

    def keep_asking():  # traffic across the swap: every answer must be whole
        while not stop.is_set():
            try:
                r = server["client"].completions.create(model=MODEL, prompt="ROMEO:", max_tokens=50, temperature=0, n=4)
                assert [c.finish_reason for c in r.choices] == ["length"] * 4
                done.append(r.choices[0].text)
            except Exception as e:  # noqa: BLE001 - collected and reported by the assert below
                failures.append(repr(e))

    threads = [threading.Thread(target=keep_asking) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    write_checkpoint(server["out_dir"], server["data_root"], seed=1, iter_num=20)
    after = expected_greedy(server, "ROMEO:", 30)
    assert after != before  # otherwise the test could not tell the two models apart
    deadline = time.time() + 30
    while httpx.get(f"{server['base']}/health").json()["iter_num"] != 20:
        assert time.time() < deadline, "the server never picked up the new checkpoint"
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not failures and done
    r = server["client"].completions.create(model=MODEL, prompt="ROMEO:", max_tokens=30, temperature=0)
    assert r.choices[0].text == after


@pytest.mark.timeout(180)
def test_a_replica_killed_under_load_is_replaced_and_serving_resumes(server):
    pid = httpx.get(f"{server['base']}/health").json()["pid"]
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                server["client"].completions.create(model=MODEL, prompt="ROMEO:", max_tokens=40, timeout=10)
            except Exception:  # noqa: BLE001 - requests that were on the killed replica may fail
                time.sleep(0.1)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    deadline, new_pid = time.time() + 120, None
    while new_pid in (None, pid):
        assert time.time() < deadline, "no replica came back after the kill"
        try:
            new_pid = httpx.get(f"{server['base']}/health", timeout=5).json()["pid"]
        except Exception:  # noqa: BLE001 - the route fails until Serve has a replica again
            time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    expected = expected_greedy(server, "JULIET:", 20)
    for _ in range(3):
        r = server["client"].completions.create(model=MODEL, prompt="JULIET:", max_tokens=20, temperature=0)
        assert r.choices[0].text == expected
