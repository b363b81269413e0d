"""The sampler's decoding threads: --threads wins, then an explicit OMP_NUM_THREADS, else a probe picks 1 or all."""

import torch

from nanogpt_ray import sample
from nanogpt_ray.device import autocast_context
from nanogpt_ray.model import GPT, GPTConfig
from nanogpt_ray.sample import Sampler, decode_threads


def tiny_sampler():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50, bias=False)).eval()
    return Sampler(model, None, "cpu", autocast_context("cpu", "float32"))


def test_threads_flag_then_omp_num_threads_win_else_one_probe_per_model_shape(monkeypatch):
    default = torch.get_num_threads()
    sampler = tiny_sampler()
    try:
        assert decode_threads(sampler, threads=1) == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert decode_threads(sampler) == 2 and torch.get_num_threads() == 2  # explicit: left as it is
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(sample, "_PROBED_THREADS", {})
        monkeypatch.setattr(sample, "_DEFAULT_THREADS", 2)  # a 2-core machine's default, wherever this runs
        chosen = decode_threads(sampler)
        assert chosen in (1, 2) and torch.get_num_threads() == chosen
        assert list(sample._PROBED_THREADS.values()) == [chosen]
        torch.set_num_threads(1)
        assert decode_threads(sampler) == chosen and len(sample._PROBED_THREADS) == 1  # cached, not probed again
    finally:
        torch.set_num_threads(default)

