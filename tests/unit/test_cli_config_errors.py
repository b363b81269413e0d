"""A config mistake on the command line ends in one readable line on stderr and exit code 2."""

import dataclasses
import pathlib
import subprocess
import sys

from nanogpt_ray.config import SampleConfig, TrainConfig

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nanogpt_ray.cli", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_misspelled_key_is_one_line_with_the_closest_key():
    result = cli("train", "--learning_rat=1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "did you mean 'learning_rate'" in lines[0]
    assert "Traceback" not in result.stderr


def test_n_embd_not_divisible_by_n_head_is_one_line():
    result = cli("train", "--n_embd=100", "--n_head=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "n_embd=100" in lines[0] and "n_head=3" in lines[0]


def test_sample_help_lists_every_key():
    result = cli("sample", "--help")
    assert result.returncode == 0, result.stderr
    for f in dataclasses.fields(SampleConfig):
        assert f"--{f.name}=" in result.stdout, f.name
    assert "--temperature=0.8" in result.stdout  # with its default


def test_train_help_lists_every_key():
    result = cli("train", "--help")
    assert result.returncode == 0, result.stderr
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}=" in result.stdout, f.name
