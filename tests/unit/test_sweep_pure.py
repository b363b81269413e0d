"""The pure parts of nanogpt_ray.sweep and sweep_results: presets, search spaces, results, best config, scaling-law fit. No Ray."""

import dataclasses
import math
import os

import numpy as np
import pytest

from nanogpt_ray.config import MODEL_PRESETS, ConfigError, SweepConfig, TrainConfig, load_config
from nanogpt_ray.sweep import (
    base_train_config,
    count_params,
    load_sweep,
    num_trials,
    search_axes,
    trial_concurrency,
    trial_train_config,
)
from nanogpt_ray.sweep_results import (
    SweepError,
    TrialRecord,
    fit_scaling_law,
    format_table,
    learning_curves_figure,
    lr_sweep_figure,
    plot_learning_curves,
    plot_lr_sweep,
    plot_scaling_law,
    read_results_csv,
    summarize,
    write_best_config,
    write_results_csv,
)


def test_presets_include_gpt2_family_and_cpu_sizes():
    assert MODEL_PRESETS["gpt2"] == dict(n_layer=12, n_head=12, n_embd=768)
    assert MODEL_PRESETS["gpt2-medium"] == dict(n_layer=24, n_head=16, n_embd=1024)
    assert MODEL_PRESETS["gpt2-large"] == dict(n_layer=36, n_head=20, n_embd=1280)
    assert MODEL_PRESETS["gpt2-xl"] == dict(n_layer=48, n_head=25, n_embd=1600)
    assert MODEL_PRESETS["tiny"] == dict(n_layer=2, n_head=2, n_embd=64)
    for shape in MODEL_PRESETS.values():
        assert shape["n_embd"] % shape["n_head"] == 0


def test_preset_sets_layer_head_and_embd_together():
    base = TrainConfig(learning_rate=1e-3, min_lr=1e-4)
    cfg = trial_train_config(base, {"model_size": "mini", "learning_rate": 4e-3})
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd) == (4, 4, 128)
    assert cfg.learning_rate == 4e-3
    assert cfg.min_lr == pytest.approx(4e-4)  # keeps the base's lr/min_lr proportion


@pytest.mark.parametrize("count_bias", [False, True])
def test_count_params_matches_the_model(count_bias):
    from nanogpt_ray.model import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=65, block_size=32, bias=count_bias))
    assert count_params(2, 64, 65, bias=count_bias) == model.get_num_params()


def test_unknown_preset_is_one_line_with_hint():
    with pytest.raises(ConfigError, match="unknown model preset 'gpt2-mediun'; did you mean 'gpt2-medium'") as e:
        SweepConfig(model_sizes=["tiny", "gpt2-mediun"])
    assert "\n" not in str(e.value)


def test_search_space_with_unknown_config_key_fails():
    with pytest.raises(ConfigError, match="unknown config key 'learning_rat'; did you mean 'learning_rate'"):
        SweepConfig(search_space={"learning_rat": [1e-3]})
    with pytest.raises(ConfigError, match="train_overrides names unknown config key 'max_iter'"):
        SweepConfig(train_overrides={"max_iter": 10})


def test_unknown_key_from_the_command_line_is_a_sweep_error():
    with pytest.raises(SweepError, match="unknown config key 'search_space'|learning_rat"):
        load_sweep(["--search_space={'learning_rat': [1e-3]}"])


@pytest.mark.parametrize("lo,hi", [(1e-3, 1e-4), (1e-3, 1e-3), (0.0, 1e-3), (-1.0, 1e-3)])
def test_empty_lr_range_fails(lo, hi):
    with pytest.raises(ConfigError, match="lr range .* is empty"):
        SweepConfig(lr_min=lo, lr_max=hi)


def test_model_shape_knobs_are_not_sweepable_one_by_one():
    with pytest.raises(ConfigError, match="model_sizes"):
        SweepConfig(search_space={"n_layer": [2, 4]})


def test_list_flags_parse_from_the_command_line():
    sweep = load_sweep(["--model_sizes=tiny,mini", "--learning_rates=[1e-3, 3e-3]", "--sweep_name=x"])
    assert sweep.model_sizes == ["tiny", "mini"]
    assert sweep.learning_rates == [1e-3, 3e-3]


def test_search_axes_and_trial_count(tmp_path):
    base_file = tmp_path / "base.py"
    base_file.write_text("max_iters = 40\neval_interval = 10\nlearning_rate = 1e-3\n")
    sweep = SweepConfig(base_config=str(base_file), learning_rates=[1e-3, 1e-2], model_sizes=["tiny", "mini"],
                        search_space={"batch_size": [4, 8]}, num_samples=2, train_overrides={"gradient_accumulation_steps": 1})
    base = base_train_config(sweep)
    assert base.max_iters == 40 and base.gradient_accumulation_steps == 1
    axes = search_axes(sweep, base)
    assert axes["learning_rate"] == ("grid", [1e-3, 1e-2])
    assert axes["model_size"] == ("grid", ["tiny", "mini"])
    assert num_trials(axes, sweep.num_samples) == 16
    loguniform = search_axes(SweepConfig(lr_min=1e-4, lr_max=1e-2), base)
    assert loguniform["learning_rate"] == ("loguniform", 1e-4, 1e-2)


def test_invalid_grid_point_fails_before_ray_starts():
    base = TrainConfig(gradient_accumulation_steps=1)
    with pytest.raises(SweepError, match="batch_size=0 must be >= 1"):
        search_axes(SweepConfig(search_space={"batch_size": [4, 0]}), base)


def test_token_budget_sets_max_iters():
    sweep = SweepConfig(train_overrides=dict(batch_size=4, block_size=8, gradient_accumulation_steps=2), token_budget=6400)
    cfg = base_train_config(sweep)
    assert cfg.max_iters == 100 and cfg.lr_decay_iters == 100


def test_concurrency_from_cluster_resources():
    sweep = SweepConfig(workers_per_trial=1, cpus_per_worker=0.99)
    assert trial_concurrency(sweep, {"CPU": 2.0}, n_trials=4) == 2
    assert trial_concurrency(SweepConfig(cpus_per_worker=1.0), {"CPU": 2.0}, n_trials=4) == 1  # 1.01 per trial
    assert trial_concurrency(SweepConfig(max_concurrent_trials=1, cpus_per_worker=0.5), {"CPU": 8.0}, n_trials=4) == 1
    assert trial_concurrency(SweepConfig(cpus_per_worker=0.5), {"CPU": 8.0}, n_trials=3) == 3
    with pytest.raises(SweepError, match="a trial needs 3.01 CPUs .* cluster holds 2") as e:
        trial_concurrency(SweepConfig(workers_per_trial=3, cpus_per_worker=1.0), {"CPU": 2.0}, n_trials=4)
    assert "\n" not in str(e.value)
    with pytest.raises(SweepError, match="GPUs"):
        trial_concurrency(SweepConfig(workers_per_trial=2, gpus_per_worker=1), {"CPU": 16.0, "GPU": 1.0}, n_trials=2)


def _record(trial, lr, size, losses, max_iters=30, status="done"):
    history = [{"iter": i * 10, "loss": 4.0, "val_loss": v} for i, v in enumerate(losses)]
    history.insert(1, {"iter": 5, "loss": 3.9})  # a train-only report between eval points
    return TrialRecord(trial=trial, params={"learning_rate": lr, "model_size": size}, history=history,
                       max_iters=max_iters, n_params=1000, status=status)


def test_results_sorted_by_best_val_loss_and_early_stops_flagged(tmp_path):
    records = [
        _record("a", 1e-4, "tiny", [4.0, 3.5, 3.2, 3.1]),
        _record("b", 1e-3, "tiny", [4.0, 2.9, 2.5, 2.6]),  # best at iter 20, not the last eval
        _record("c", 1e-1, "mini", [4.0, 3.9]),  # stopped at iter 10 of 30
        TrialRecord(trial="d", params={"learning_rate": 1.0, "model_size": "mini"}, status="error", max_iters=30,
                    error="RuntimeError: worker died"),
    ]
    rows = summarize(records)
    assert [r["trial"] for r in rows] == ["b", "a", "c", "d"]
    assert rows[0]["best_val_loss"] == 2.5 and rows[0]["best_iter"] == 20
    assert [r["stopped_early"] for r in rows] == [False, False, True, False]
    assert rows[2]["iters_run"] == 10
    assert rows[3]["best_val_loss"] is None and rows[3]["status"] == "error"
    assert rows[3]["error"] == "RuntimeError: worker died" and rows[0]["error"] == ""
    table = format_table(rows)
    assert table.splitlines()[1].split()[1] == "b"
    path = write_results_csv(rows, str(tmp_path / "results.csv"))
    back = read_results_csv(path)
    assert [r["trial"] for r in back] == ["b", "a", "c", "d"]
    assert float(back[0]["best_val_loss"]) == 2.5 and back[2]["stopped_early"] == "True"
    assert back[3]["error"] == "RuntimeError: worker died"
    plots = [plot_lr_sweep(rows, str(tmp_path / "lr.png")), plot_learning_curves(records, str(tmp_path / "curves.png"))]
    for p in plots:
        assert os.path.getsize(p) > 1000


def test_every_swept_key_is_a_column_and_a_plot_label_and_interrupted_trials_say_so(tmp_path):
    records = []
    for i, (lr, muon_lr) in enumerate([(2e-3, 0.02), (2e-3, 0.05), (4e-3, 0.02), (4e-3, 0.05)]):
        rec = _record(f"t{i}", lr, "", [4.0, 3.0 - i * 0.1], status="interrupted" if i == 0 else "done")
        rec.params["muon_lr"] = muon_lr
        records.append(rec)
    rows = summarize(records)
    table = format_table(rows).splitlines()
    assert table[0].split()[:5] == ["#", "trial", "lr", "size", "muon_lr"]
    assert [line.split()[4] for line in table[1:]] == ["0.05", "0.02", "0.05", "0.02"]
    assert [line.split()[-1] for line in table[1:]] == ["done", "done", "done", "interrupted"]
    assert [line.split()[-2] for line in table[1:]][-1] == "no"  # an interrupted trial was not stopped early
    back = read_results_csv(write_results_csv(rows, str(tmp_path / "results.csv")))
    assert list(back[0])[:5] == ["rank", "trial", "learning_rate", "model_size", "muon_lr"]
    assert sorted(float(r["muon_lr"]) for r in back) == [0.02, 0.02, 0.05, 0.05]
    ax = lr_sweep_figure(rows).axes[0]
    lines = {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()}
    assert lines == {"base muon_lr=0.02": [2e-3, 4e-3], "base muon_lr=0.05": [2e-3, 4e-3]}  # one line each, no zigzag
    curve_labels = [line.get_label() for line in learning_curves_figure(records).axes[0].get_lines()]
    assert all("muon_lr=" in label for label in curve_labels)


def test_best_config_round_trips_through_load_config(tmp_path):
    base = TrainConfig(dataset="shakespeare_char", data_root=str(tmp_path / "data"), gradient_accumulation_steps=1, batch_size=8, block_size=32,
                       max_iters=50, compile=False, resources_per_worker={"custom": 0.5})
    cfg = trial_train_config(base, {"learning_rate": 3e-3, "model_size": "mini"}, out_dir=str(tmp_path / "best"))
    path = write_best_config(cfg, str(tmp_path / "best_config.py"), comment="trial x: val 1.23")
    loaded = load_config(TrainConfig, [path])
    assert dataclasses.asdict(loaded) == dataclasses.asdict(cfg)
    assert "learning_rate = 0.003" in open(path).read()


def test_scaling_law_fit_recovers_known_parameters():
    a, alpha, c = 406.4, 0.34, 1.69
    n = np.array([1e5, 3e5, 1e6, 3e6, 1e7, 1e8])
    losses = a * n ** -alpha + c
    fa, falpha, fc = fit_scaling_law(n, losses)
    assert falpha == pytest.approx(alpha, rel=1e-3)
    assert fa == pytest.approx(a, rel=1e-2)
    assert fc == pytest.approx(c, abs=1e-3)
    noisy = losses + np.random.default_rng(0).normal(0, 1e-3, size=n.size)
    assert fit_scaling_law(n, noisy)[1] == pytest.approx(alpha, rel=0.1)


def test_scaling_law_fit_needs_three_points_and_plots(tmp_path):
    with pytest.raises(SweepError, match=">= 3"):
        fit_scaling_law([1e5, 1e6], [3.0, 2.5])
    with pytest.raises(ConfigError, match="scaling_law needs >= 3 model_sizes"):
        SweepConfig(scaling_law=True, model_sizes=["tiny", "mini"])
    points = [("tiny", 100_000, 2.5), ("mini", 800_000, 2.1), ("small", 10_000_000, 1.8)]
    fit = fit_scaling_law([p[1] for p in points], [p[2] for p in points])
    assert all(math.isfinite(v) for v in fit)
    assert os.path.getsize(plot_scaling_law(points, fit, str(tmp_path / "s.png"))) > 1000


# ------------------------------------------------------------------ training keys given to `tune` as flags

def test_training_flags_reach_every_trial_on_top_of_base_config_and_train_overrides(tmp_path):
    base_file = tmp_path / "base.py"
    base_file.write_text("max_iters = 40\ndata_root = 'elsewhere'\nbatch_size = 4\n")
    sweep_file = tmp_path / "sweep.py"
    sweep_file.write_text(f"base_config = {str(base_file)!r}\ntrain_overrides = {{'batch_size': 8, 'max_iters': 30}}\n"
                          "learning_rates = [1e-3, 3e-3]\nmodel_sizes = ['tiny', 'mini']\n")
    sweep = load_sweep([str(sweep_file), "--data_root=/data", "--batch_size=2", "--sweep_name=flags"])
    assert sweep.sweep_name == "flags" and sweep.learning_rates == [1e-3, 3e-3]  # sweep keys keep their meaning
    base = base_train_config(sweep)
    trials = [trial_train_config(base, {"learning_rate": lr, "model_size": size})
              for lr in sweep.learning_rates for size in sweep.model_sizes]
    assert len(trials) == 4
    for cfg in trials:
        assert cfg.data_root == "/data"  # the flag beats the base config file
        assert cfg.batch_size == 2  # and the sweep file's train_overrides
        assert cfg.max_iters == 30  # keys no flag names keep the file's value
    assert {(c.learning_rate, c.n_layer) for c in trials} == {(1e-3, 2), (1e-3, 4), (3e-3, 2), (3e-3, 4)}


def test_a_flag_neither_sweep_nor_training_knows_names_the_closest_of_both():
    with pytest.raises(SweepError, match=r"^unknown config key 'data_rot'; did you mean 'data_root'\?$"):
        load_sweep(["--data_rot=/data"])
    with pytest.raises(SweepError, match=r"^unknown config key 'sweep_nam'; did you mean 'sweep_name'\?$"):
        load_sweep(["--sweep_nam=x"])
    with pytest.raises(SweepError, match="batch_size"):  # a training key with a bad value fails on its own name
        load_sweep(["--batch_size=many"])


# ------------------------------------------------------------------ plots: units, the best trial, many trials

@pytest.mark.parametrize("n_trials", [4, 32])
def test_plots_label_units_mark_the_best_trial_and_keep_32_curves_readable(tmp_path, n_trials):
    import matplotlib.colors

    sizes = ["tiny", "mini", "small", "gpt2"][: max(2, n_trials // 8)]
    lrs = [float(f"{1e-4 * 10 ** (i / 4):.3g}") for i in range(n_trials // len(sizes))]
    records = []
    for s_i, size in enumerate(sizes):
        for l_i, lr in enumerate(lrs):
            final = 3.0 - 0.1 * s_i + 0.05 * abs(l_i - len(lrs) // 2)  # best: the largest size, middle lr
            records.append(_record(f"t{s_i}_{l_i}", lr, size, [4.0, 3.5, final]))
    best = min(records, key=lambda r: r.best()[1])
    rows = summarize(records)

    fig = learning_curves_figure(records)
    ax = fig.axes[0]
    assert "nats/token" in ax.get_ylabel() and "iteration" in ax.get_xlabel()
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == n_trials and sum(label.startswith("best:") for label in labels) == 1
    [best_line] = [line for line in ax.get_lines() if line.get_label().startswith("best:")]
    assert list(best_line.get_ydata()) == [p[1] for p in best.val_points()]  # the best trial's own curve
    assert best_line.get_linewidth() > max(line.get_linewidth() for line in ax.get_lines() if line is not best_line)
    others = [line for line in ax.get_lines() if line is not best_line]
    colors = {matplotlib.colors.to_hex(line.get_color()) for line in others}
    assert len(colors) == len(sizes)  # one color family per model size, not one per trial
    legend = ax.get_legend()
    assert len(legend.get_texts()) == n_trials
    assert legend.get_bbox_to_anchor().x0 >= ax.get_window_extent().x1  # outside the axes: no curve hidden
    assert legend._ncols == (1 if n_trials <= 16 else 2)

    fig = lr_sweep_figure(rows)
    ax = fig.axes[0]
    assert "log scale" in ax.get_xlabel() and "nats/token" in ax.get_ylabel()
    star_labels = [t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("best:")]
    assert star_labels == [f"best: {best.trial} ({best.best()[1]:.3f})"]
    assert os.path.getsize(plot_learning_curves(records, str(tmp_path / "curves.png"))) > 1000
    assert os.path.getsize(plot_lr_sweep(rows, str(tmp_path / "lr.png"))) > 1000


def test_a_sweep_shares_every_cpu_out_among_its_concurrent_trials():
    from nanogpt_ray.sweep import share_out_cpus

    two_cpus = {"CPU": 2.0}
    one_at_a_time = share_out_cpus(SweepConfig(), two_cpus, n_trials=1)
    assert one_at_a_time.cpus_per_worker == 1.99  # one trial: the whole machine but its driver's 0.01
    assert trial_concurrency(one_at_a_time, two_cpus, n_trials=1) == 1
    two_at_once = share_out_cpus(SweepConfig(), two_cpus, n_trials=4)
    assert two_at_once.cpus_per_worker == 0.99 and trial_concurrency(two_at_once, two_cpus, n_trials=4) == 2
    eight = share_out_cpus(SweepConfig(workers_per_trial=2, max_concurrent_trials=2), {"CPU": 8.0}, n_trials=6)
    assert eight.cpus_per_worker == 1.99 and trial_concurrency(eight, {"CPU": 8.0}, n_trials=6) == 2
    assert share_out_cpus(SweepConfig(cpus_per_worker=0.5), two_cpus, n_trials=4).cpus_per_worker == 0.5  # explicit wins
