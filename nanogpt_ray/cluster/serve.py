"""OpenAI-compatible completions on Ray Serve: the pure engine and serving.py behind FastAPI.

    nanogpt-ray serve --out_dir=out-shakespeare-char            # then: openai.OpenAI(base_url=".../v1")

Each replica loads the model once and runs one decode thread (engine.ContinuousBatcher): requests join the
running batch between decode steps and leave the moment they finish. HTTP, Serve options and the --watch
poller live here; every rule about requests and responses lives in serving.py.
"""

# no `from __future__ import annotations`: FastAPI must see `request: Request` as a class, not a string
import asyncio
import os
import sys
import threading
import time
import traceback
from functools import partial

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve  # Ray enters here
from ray.serve.config import BackpressureConfig

from ..config import ServeConfig, from_dict, to_dict
from ..engine import BatcherClosed, ContinuousBatcher, Sequence
from ..preflight import check_port_free, is_this_machine
from ..serving import (
    SSE_DONE,
    RequestError,
    TextStream,
    checkpoint_version,
    completion_chunk,
    completion_response,
    error_body,
    load_served_model,
    merge_deltas,
    models_response,
    new_completion_id,
    parse_completion_request,
    sse,
)
from .session import ray_session

# Serve pickles the deployment class when it is decorated: everything it uses is imported above it

APP_NAME = "nanogpt"
app = FastAPI(title="nanogpt-ray")


def error(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None, headers=None):
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


class Engine:
    """One loaded model and the decode thread that serves it."""

    def __init__(self, loaded, max_batch_size: int):
        self.loaded = loaded
        model, self.tokenizer, device, ctx = loaded.sampler
        self.device = device
        self.batcher = ContinuousBatcher(model, device, ctx, max_batch_size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.batcher.run, args=(self.stop,), daemon=True, name="decode")
        self.thread.start()


@serve.deployment(name="CompletionServer")
@serve.ingress(app)
class CompletionServer:
    """A Serve replica: /v1/completions, /v1/models, /health."""

    def __init__(self, config: dict):
        self.cfg = from_dict(ServeConfig, config)
        self.model_name = self.cfg.served_model_name()
        self.created = int(time.time())
        self.engine = Engine(load_served_model(self.cfg), self.cfg.max_batch_size)
        self.closing = threading.Event()
        if self.cfg.watch:
            threading.Thread(target=self._watch, daemon=True, name="watch").start()

    # -- --watch: a newer checkpoint takes new requests; the old engine finishes the ones it holds

    def _watch(self):
        while not self.closing.wait(self.cfg.watch_interval_s):
            version = checkpoint_version(self.cfg)  # a file, or a run's latest checkpoint in a bucket
            if version is None or version == self.engine.loaded.version():
                continue
            try:
                loaded = load_served_model(self.cfg)
            except Exception:
                traceback.print_exc()  # a checkpoint we cannot read: keep serving the one we have
                continue
            old, self.engine = self.engine, Engine(loaded, self.cfg.max_batch_size)
            old.batcher.drain()  # its decode thread returns once its in-flight rows are done
            print(f"serving iter_num={loaded.iter_num} from {self.cfg.ckpt_path or self.cfg.out_dir}", file=sys.stderr)

    def check_health(self):
        """Serve calls this; a dead decode thread restarts the replica instead of hanging every request."""
        if not self.engine.thread.is_alive():
            raise RuntimeError("the decode thread died")

    def __del__(self):
        self.closing.set()
        self.engine.stop.set()

    # -- routes

    @app.get("/health")
    def health(self):
        loaded = self.engine.loaded
        return {"status": "ok", "model": self.model_name, "iter_num": loaded.iter_num, "checkpoint_mtime": loaded.mtime,
                "pid": os.getpid(), "rows": len(self.engine.batcher.rows)}

    @app.get("/v1/models")
    def models(self):
        return models_response(self.model_name, self.created)

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        try:
            body = await request.json()
        except Exception:
            return error(400, "the request body is not valid JSON")
        engine = self.engine  # one model for the whole request, even if --watch swaps meanwhile
        try:
            req = parse_completion_request(body, self.model_name, engine.tokenizer, engine.loaded.block_size)
        except RequestError as e:
            return error(e.status, e.message, param=e.param, code=e.code)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        streams = [TextStream(engine.tokenizer, req.stop) for _ in req.choices]

        def put(item):
            loop.call_soon_threadsafe(events.put_nowait, item)

        def on_token(i, token):  # runs in the decode thread
            delta, stopped = streams[i].push(token)
            if delta:
                put((i, delta, None))
            return not stopped and not cancelled.is_set()

        def on_finish(i, reason):
            put((i, streams[i].flush(), reason))

        seqs = [Sequence(c.prompt_ids, c.params, partial(on_token, c.index), partial(on_finish, c.index), engine.device)
                for c in req.choices]
        try:
            engine.batcher.submit(*seqs)
        except BatcherClosed:  # --watch swapped models since we looked (same run: same tokenizer): take the new one
            engine = self.engine
            engine.batcher.submit(*seqs)
        prompt_tokens = sum(len(c.prompt_ids) for c in req.choices if c.index % req.n == 0)
        completion_id, created = new_completion_id(), int(time.time())

        if req.stream:
            async def chunks():
                left = len(req.choices)
                try:
                    while left:
                        # everything that arrived since the last send goes out as one write: when the client or
                        # Serve's proxy lags, a choice's tokens merge into one chunk instead of queueing per token
                        batch = [await events.get()]
                        while not events.empty():
                            batch.append(events.get_nowait())
                        out = []
                        for i, delta, reason in merge_deltas(batch):
                            if reason is not None:
                                left -= 1
                            reason = "stop" if reason == "error" else reason  # headers are gone: end the choice
                            out.append(sse(completion_chunk(completion_id, self.model_name, created, i, delta, reason)))
                        yield "".join(out)
                    yield SSE_DONE
                finally:
                    cancelled.set()  # the client left: its rows stop at their next token

            return StreamingResponse(chunks(), media_type="text/event-stream")

        texts, reasons = [""] * len(req.choices), [None] * len(req.choices)
        try:
            while any(r is None for r in reasons):
                i, delta, reason = await events.get()
                texts[i] += delta
                reasons[i] = reason or reasons[i]
        finally:
            cancelled.set()
        if "error" in reasons:
            return error(500, "generation failed on the server", type_="server_error")
        completion_tokens = sum(len(s.ids) for s in streams)
        return completion_response(completion_id, self.model_name, texts, reasons, prompt_tokens, completion_tokens,
                                   created)


def build_app(cfg: ServeConfig):
    """The Serve application for a config: replicas, resources, batching and back-pressure."""
    options = dict(
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        # Serve rejects what does not fit in the queue: 503 with Retry-After, never an unbounded wait
        backpressure_config=BackpressureConfig(status_code=503, retry_after_s=cfg.retry_after_s),
    )
    if cfg.max_replicas:
        options["autoscaling_config"] = {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                         "target_ongoing_requests": cfg.target_ongoing_requests}
    else:
        options["num_replicas"] = cfg.num_replicas
    return CompletionServer.options(**options).bind(to_dict(cfg))


def run_server(cfg: ServeConfig) -> None:
    """Deploy on the cluster (a new local one without --address) and block until Ctrl-C."""
    if is_this_machine(cfg.address or os.environ.get("RAY_ADDRESS", "")):
        check_port_free(cfg.host, cfg.port)  # before Ray starts: one line, not a traceback from Serve's proxy
    with ray_session(cfg.address, include_dashboard=cfg.dashboard):
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(build_app(cfg), name=APP_NAME, route_prefix="/")
        print(f"serving {cfg.served_model_name()!r} at http://{cfg.host}:{cfg.port}/v1 (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(3600)
        finally:
            serve.delete(APP_NAME)
