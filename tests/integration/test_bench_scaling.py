"""`bench --scaling=True`: the training loop under TorchTrainer with 1 and 2 workers on the same global batch."""

import json

import pytest

from nanogpt_ray.cli import cmd_bench

pytestmark = pytest.mark.ray


@pytest.mark.timeout(400)
def test_scaling_with_1_and_2_workers_returns_two_rows_with_tokens_per_s(ray_start_2_cpus, tmp_path, capsys):
    out = tmp_path / "scaling.json"
    settings = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, real_data=False, compile=False,
                    device="cpu", warmup_steps=1, timed_steps=3, scaling=True, max_workers=2,
                    gradient_accumulation_steps=2, json=str(out))
    assert cmd_bench([f"--{key}={value}" for key, value in settings.items()]) == 0
    rows = json.loads(out.read_text())
    assert [row["workers"] for row in rows] == [1, 2]
    for row in rows:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] <= 1
        assert row["tokens_per_iter"] == 2 * 4 * 32  # the same global batch whatever the worker count
        assert row["tokens_per_s"] == pytest.approx(row["tokens_per_iter"] / (row["ms_per_iter"] / 1000), rel=1e-6)
    assert rows[0]["scaling_efficiency"] == pytest.approx(1.0)
    assert rows[1]["scaling_efficiency"] == pytest.approx(rows[1]["tokens_per_s"] / (2 * rows[0]["tokens_per_s"]))
    printed = capsys.readouterr().out
    assert "efficiency" in printed and f"{rows[1]['tokens_per_s']:,.0f}" in printed
