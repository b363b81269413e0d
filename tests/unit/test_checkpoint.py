"""Checkpoints: nanoGPT's dict round-trips, keys come back clean, writes are atomic, loads are weights_only."""

import os
import pickle

import pytest
import torch

from nanogpt_ray.checkpoint import (
    CheckpointError,
    clean_state_dict,
    load_checkpoint,
    load_model,
    model_from_checkpoint,
    save_checkpoint,
)
from nanogpt_ray.model import GPT, GPTConfig

MODEL_ARGS = dict(n_layer=2, n_head=2, n_embd=16, block_size=32, bias=False, vocab_size=65, dropout=0.0)


def make_ckpt(seed=0, iter_num=100):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**MODEL_ARGS))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    x = torch.randint(0, 65, (2, 8))
    _, loss = model(x, x)
    loss.backward()
    optimizer.step()  # the optimizer state now holds exp_avg / exp_avg_sq tensors
    return model, {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": dict(MODEL_ARGS),
        "iter_num": iter_num,
        "best_val_loss": torch.tensor(2.5),
        "config": {"dataset": "shakespeare_char", "data_root": "/data", "learning_rate": 1e-3, "compile": False},
        "resume": {"torch_rng_state": torch.get_rng_state(), "data_position": 1234},
    }


def leftover_temp_files(directory):
    return [name for name in os.listdir(directory) if name != "ckpt.pt"]


def test_checkpoint_round_trips_tensors_and_metadata(tmp_path):
    model, ckpt = make_ckpt()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(ckpt, str(path))
    loaded = load_checkpoint(str(tmp_path))  # an out_dir finds its ckpt.pt
    assert loaded["iter_num"] == 100
    assert loaded["config"] == ckpt["config"]
    assert loaded["model_args"] == MODEL_ARGS
    assert set(loaded["model"]) == set(ckpt["model"])
    for key, value in ckpt["model"].items():
        assert torch.equal(loaded["model"][key], value), key
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], ckpt["optimizer"]["state"][0]["exp_avg"])
    assert torch.equal(loaded["resume"]["torch_rng_state"], ckpt["resume"]["torch_rng_state"])

    again = model_from_checkpoint(loaded).eval()
    x = torch.randint(0, 65, (1, 10))
    assert torch.equal(again(x)[0], model.eval()(x)[0])


def test_everything_loads_with_weights_only_true(tmp_path):
    _, ckpt = make_ckpt()
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    loaded = torch.load(tmp_path / "ckpt.pt", map_location="cpu", weights_only=True)
    assert loaded["iter_num"] == ckpt["iter_num"]


def test_prefixed_keys_from_compile_and_ddp_are_cleaned(tmp_path):
    model, ckpt = make_ckpt()
    state = model.state_dict()
    prefixes = ("_orig_mod.", "module.", "module._orig_mod.", "_orig_mod.module.")
    prefixed = {prefixes[i % 4] + k: v for i, (k, v) in enumerate(state.items())}
    assert set(clean_state_dict(prefixed)) == set(state)
    ckpt["model"] = prefixed
    save_checkpoint(ckpt, str(tmp_path / "ckpt.pt"))
    loaded_model, _ = load_model("resume", str(tmp_path))
    for key, value in state.items():
        assert torch.equal(loaded_model.state_dict()[key], value), key


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed mid-write")


def test_interrupted_write_leaves_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpt.pt"
    _, old = make_ckpt(seed=0, iter_num=100)
    save_checkpoint(old, str(path))
    _, new = make_ckpt(seed=1, iter_num=200)
    new["zzz_broken"] = _Unpicklable()  # pickled after the tensors: the write fails half way through
    with pytest.raises(RuntimeError, match="killed mid-write"):
        save_checkpoint(new, str(path))
    loaded = load_checkpoint(str(path))
    assert loaded["iter_num"] == 100
    assert torch.equal(loaded["model"]["lm_head.weight"], old["model"]["lm_head.weight"])
    assert leftover_temp_files(tmp_path) == []


def test_interrupted_first_write_leaves_nothing(tmp_path):
    _, ckpt = make_ckpt()
    ckpt["zzz_broken"] = _Unpicklable()
    with pytest.raises(RuntimeError):
        save_checkpoint(ckpt, str(tmp_path / "out" / "ckpt.pt"))
    assert os.listdir(tmp_path / "out") == []


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model("resume", str(tmp_path))  # an empty out_dir


def test_a_file_that_is_not_ours_is_a_checkpoint_error(tmp_path):
    # not a torch file at all
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(str(tmp_path / "text.pt"))
    # a torch file without our keys
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="model_args"):
        load_checkpoint(str(tmp_path / "other.pt"))
    # a pickle that needs arbitrary classes: refused by weights_only, never executed
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"model": Exploit(), "model_args": {}}, f, protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "evil.pt"))
    assert not marker.exists()
