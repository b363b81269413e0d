"""Sweeps over learning rate and model size, planned without Ray: `nanogpt-ray tune configs/sweep_*.py`.

Every trial is one Ray Train run of nanoGPT's loop. Tune starts a tiny driver per trial (0.01 CPU) which
builds the TorchTrainer exactly as `nanogpt-ray train` does and forwards its reports to Tune with
`TuneReportCallback`; ASHA stops poor trials early on `val_loss` at eval points.

    <storage_path>/<sweep_name>/
        results.csv       one row per trial, sorted by best val loss
        best_config.py    the best trial as a runnable training config file
        plots/            val loss vs lr per size, learning curves, the scaling-law fit
        tensorboard/      val and train loss per trial (`tensorboard --logdir ...`)
        trials/<trial>/   each trial's Ray Train run (checkpoints) and its out_dir

This module is pure (configs, search spaces, concurrency, the final report) and unit-tested without Ray;
cluster/tune.py runs the trials on Ray Tune. Tables, plots and the scaling-law fit come from sweep_results.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from .config import (
    PATH_KEYS,
    ConfigError,
    SweepConfig,
    TrainConfig,
    coerce,
    config_fields,
    is_uri,
    load_config,
    model_preset,
    split_args,
    split_overrides,
)
from .sweep_results import (  # noqa: F401  (SweepError and the results helpers are part of this module's API)
    METRIC,
    TIME_ATTR,
    SweepError,
    TrialRecord,
    best_per_size,
    fit_scaling_law,
    format_table,
    human_count,
    plot_learning_curves,
    plot_lr_sweep,
    plot_scaling_law,
    scaling_law,
    summarize,
    write_best_config,
    write_results_csv,
    write_tensorboard,
)

DRIVER_CPUS = 0.01
"""CPU reserved for each trial's driver (Tune rejects 0); the Train workers reserve the real CPUs."""


# ----------------------------------------------------------------------------- trials from the config

def load_sweep(argv: list[str]) -> SweepConfig:
    """The sweep from its config files and flags. A flag naming a training key (--data_root=/data) applies
    to every trial, on top of base_config and the file's train_overrides; sweep keys keep their meaning."""
    files, overrides = split_args(argv)
    try:
        sweep_flags, train_flags = split_overrides(overrides, SweepConfig, TrainConfig)
        sweep = load_config(SweepConfig, files, sweep_flags)
        if train_flags:
            sweep = dataclasses.replace(sweep, train_overrides={**sweep.train_overrides, **train_flags})
    except ConfigError as e:
        raise SweepError(str(e)) from None
    if sweep.base_config:
        sweep = dataclasses.replace(sweep, base_config=os.path.abspath(os.path.expanduser(sweep.base_config)))
    return sweep


def apply_overrides(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """cfg with `overrides` coerced to each field's type (paths made absolute), validated again."""
    fields = config_fields(TrainConfig)
    values = dataclasses.asdict(cfg)
    for key, value in overrides.items():
        if key not in fields:
            raise SweepError(f"unknown config key {key!r} in the sweep's overrides")
        value = coerce(TrainConfig, key, value)
        if key in PATH_KEYS and value and not is_uri(value):
            value = os.path.abspath(os.path.expanduser(value))
        values[key] = value
    try:
        return TrainConfig(**values)
    except ConfigError as e:
        raise SweepError(str(e)) from None


def base_train_config(sweep: SweepConfig) -> TrainConfig:
    """The training config every trial starts from: base_config, then train_overrides, then token_budget."""
    try:
        cfg = load_config(TrainConfig, [sweep.base_config] if sweep.base_config else [])
    except ConfigError as e:
        raise SweepError(f"base_config: {e}") from None
    cfg = apply_overrides(cfg, sweep.train_overrides)
    if sweep.token_budget:
        iters = max(1, sweep.token_budget // cfg.tokens_per_iter())
        cfg = apply_overrides(cfg, dict(max_iters=iters, lr_decay_iters=iters, warmup_iters=min(cfg.warmup_iters, iters // 10)))
    return cfg


def search_axes(sweep: SweepConfig, base: TrainConfig) -> dict[str, tuple]:
    """The search space in plain terms: {key: ('grid', values) | ('loguniform', lo, hi)}.

    Every combination is checked against TrainConfig here, so a bad preset or value fails before Ray starts.
    """
    axes: dict[str, tuple] = {}
    if sweep.learning_rates:
        axes["learning_rate"] = ("grid", [float(lr) for lr in sweep.learning_rates])
    elif sweep.lr_max:
        axes["learning_rate"] = ("loguniform", sweep.lr_min, sweep.lr_max)
    if sweep.model_sizes:
        axes["model_size"] = ("grid", list(sweep.model_sizes))
    for key, values in sweep.search_space.items():
        axes[key] = ("grid", list(values))
    # validate every grid point now (log-uniform lrs are > 0 by construction)
    grid_keys = [k for k, axis in axes.items() if axis[0] == "grid"]
    for point in _grid_points({k: axes[k][1] for k in grid_keys}):
        try:
            trial_train_config(base, point)
        except (ConfigError, SweepError) as e:
            raise SweepError(f"trial {point} is not a valid training config: {e}") from None
    return axes


def _grid_points(grid: dict[str, list]):
    points = [{}]
    for key, values in grid.items():
        points = [dict(p, **{key: v}) for p in points for v in values]
    return points


def num_trials(axes: dict[str, tuple], num_samples: int) -> int:
    return num_samples * math.prod(len(axis[1]) for axis in axes.values() if axis[0] == "grid")


def trial_train_config(base: TrainConfig, params: dict, **ray_settings) -> TrainConfig:
    """One trial's training config: the base with the trial's lr, model preset and other keys applied."""
    overrides = {k: v for k, v in params.items() if k != "model_size"}
    if params.get("model_size"):
        overrides.update(model_preset(params["model_size"]))
    if "learning_rate" in params and base.learning_rate > 0:
        # keep nanoGPT's min_lr ~ learning_rate / 10 proportion of the base config
        overrides.setdefault("min_lr", float(f"{params['learning_rate'] * base.min_lr / base.learning_rate:.6g}"))
    overrides.update(ray_settings)
    return apply_overrides(base, overrides)


def count_params(n_layer: int, n_embd: int, vocab_size: int, bias: bool = False, arch: str = "gpt2") -> int:
    """GPT.get_num_params() of a preset, built on the meta device (no memory, no init)."""
    import torch

    from .model import GPTConfig
    from .modern import build_gpt

    with torch.device("meta"):
        model = build_gpt(GPTConfig(n_layer=n_layer, n_head=1, n_embd=n_embd, vocab_size=vocab_size, bias=bias, block_size=8,
                              arch=arch))
    return model.get_num_params()


def dataset_vocab_size(cfg: TrainConfig) -> int:
    """The vocabulary the loop builds the model with (tokenizer.model_vocab_size)."""
    from .tokenizer import model_vocab_size, read_meta

    try:
        meta = read_meta(cfg.dataset_dir())
    except Exception:  # an unreadable meta fails the trials themselves, with the loop's message
        meta = None
    return model_vocab_size(meta)


@dataclass(frozen=True)
class TrialSettings:
    """What every trial's driver needs besides its search-space point."""

    sweep_dir: str
    workers_per_trial: int
    cpus_per_worker: float
    use_gpu: bool
    local_dir: str = ""
    """Where trials keep their local out_dir when sweep_dir is a URI (a bucket holds their Ray checkpoints)."""

    def train_overrides(self, trial_id: str) -> dict:
        """Where a trial trains and on how many workers: its own out_dir and Ray Train run, named by trial id."""
        trials_dir = os.path.join(self.sweep_dir, "trials")
        out_root = os.path.join(self.local_dir, "trials") if is_uri(self.sweep_dir) else trials_dir
        return dict(out_dir=os.path.join(out_root, trial_id, "out"), storage_path=trials_dir, run_name=trial_id,
                    num_workers=self.workers_per_trial, cpus_per_worker=self.cpus_per_worker)


def share_out_cpus(sweep: SweepConfig, cluster: dict, n_trials: int, use_gpu: bool = False) -> SweepConfig:
    """cpus_per_worker=0: the sweep with CPUs per worker decided, the rule `train` follows per node. As many
    trials at once as fit with one CPU per worker (capped by the trials and max_concurrent_trials), then every
    CPU shared out among their workers: 1 trial on 2 CPUs gets 1.99, 2 trials 0.99 each (drivers take 0.01)."""
    if sweep.cpus_per_worker:
        return sweep
    if use_gpu or sweep.gpus_per_worker:
        return dataclasses.replace(sweep, cpus_per_worker=1.0 - DRIVER_CPUS)
    cpus = float(cluster.get("CPU", 0))
    at_once = trial_concurrency(dataclasses.replace(sweep, cpus_per_worker=1.0 - DRIVER_CPUS), cluster, n_trials)
    share = (cpus - at_once * DRIVER_CPUS) / (at_once * sweep.workers_per_trial)
    return dataclasses.replace(sweep, cpus_per_worker=math.floor(share * 100) / 100)


def trial_concurrency(sweep: SweepConfig, cluster: dict, n_trials: int, use_gpu: bool = False) -> int:
    """How many trials fit on the cluster at once (driver + workers each); SweepError when not even one does."""
    cpus_needed = sweep.workers_per_trial * sweep.cpus_per_worker + DRIVER_CPUS
    cpus = float(cluster.get("CPU", 0))
    fits = int(cpus / cpus_needed + 1e-9)
    gpus_per_worker = sweep.gpus_per_worker or (1.0 if use_gpu else 0.0)
    if gpus_per_worker:
        gpus_needed = sweep.workers_per_trial * gpus_per_worker
        gpus = float(cluster.get("GPU", 0))
        if gpus + 1e-9 < gpus_needed:
            raise SweepError(f"a trial needs {gpus_needed:g} GPUs ({sweep.workers_per_trial} workers x {gpus_per_worker:g}) "
                             f"but the cluster holds {gpus:g}; lower workers_per_trial or gpus_per_worker")
        fits = min(fits, int(gpus / gpus_needed + 1e-9))
    if fits < 1:
        raise SweepError(f"a trial needs {cpus_needed:g} CPUs ({sweep.workers_per_trial} workers x {sweep.cpus_per_worker:g} "
                         f"+ {DRIVER_CPUS} for its driver) but the cluster holds {cpus:g}; "
                         "lower workers_per_trial or cpus_per_worker")
    limit = min(fits, max(1, n_trials))
    if sweep.max_concurrent_trials:
        limit = min(limit, sweep.max_concurrent_trials)
    return limit


# ----------------------------------------------------------------------------- the report

@dataclass
class SweepReport:
    sweep_dir: str
    rows: list[dict]
    records: list[TrialRecord]
    best_config_path: str = ""
    best_checkpoint: str = ""
    results_csv: str = ""
    plots: list[str] = field(default_factory=list)
    scaling_fit: tuple | None = None
    concurrency: int = 0
    """Trials that ran at once (derived from the cluster when the sweep started)."""


def trial_statuses(result_grid) -> list[str]:
    """Each result's outcome, in order: 'done' (Tune terminated it: it ran to its end or ASHA stopped it),
    'error', or 'interrupted' (the sweep ended while it was pending, running or paused)."""
    trials = getattr(getattr(result_grid, "_experiment_analysis", None), "trials", None)  # Tune's own record (private)
    if trials is None or len(trials) != len(result_grid):
        return ["error" if result.error else "done" for result in result_grid]
    return [{"TERMINATED": "done", "ERROR": "error"}.get(str(t.status), "interrupted") for t in trials]


def records_from_results(result_grid, base: TrainConfig) -> list[TrialRecord]:
    vocab = dataset_vocab_size(base)
    records = []
    for result, status in zip(result_grid, trial_statuses(result_grid)):
        df = result.metrics_dataframe
        history = [] if df is None else [{k: v for k, v in row.items() if _keep(v)} for row in df.to_dict("records")]
        params = {k: v for k, v in (result.config or {}).items() if k not in ("base", "settings")}
        shape = model_preset(params["model_size"]) if params.get("model_size") else dict(n_layer=base.n_layer, n_embd=base.n_embd)
        trial = (result.metrics or {}).get("trial_id") or _trial_id_from_path(result.path)
        records.append(TrialRecord(trial=trial, params=params, history=history,
                                   max_iters=int(params.get("max_iters", base.max_iters)),
                                   n_params=count_params(shape["n_layer"], shape["n_embd"], vocab, base.bias,
                                                           params.get("arch", base.arch)),
                                   status="error" if result.error else status, error=_error_line(result.error)))
    return records


def _error_line(error) -> str:
    if not error:
        return ""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def _keep(value) -> bool:
    if isinstance(value, float):
        return not math.isnan(value)
    return value is not None


def _trial_id_from_path(path: str) -> str:
    # Tune names trial dirs <trainable>_<trial id>_<index>_<params>...; the id is two fields: xxxxx_00000
    parts = os.path.basename(os.path.normpath(path)).split("_")
    for i in range(len(parts) - 1):
        if len(parts[i]) == 5 and parts[i + 1].isdigit() and len(parts[i + 1]) == 5:
            return f"{parts[i]}_{parts[i + 1]}"
    return os.path.basename(os.path.normpath(path))


def local_sweep_dir(sweep_dir: str) -> str:
    """Where a sweep's local files go: sweep_dir itself, or for a URI this machine's mirror of it (the report is
    written there, then uploaded; trials keep their out_dir there)."""
    if not is_uri(sweep_dir):
        return sweep_dir
    from .storage import cache_dir_for

    return cache_dir_for(sweep_dir, "sweeps")


REPORT_FILES = ("results.csv", "best_config.py", "plots", "tensorboard")


def write_report(sweep: SweepConfig, base: TrainConfig, records: list[TrialRecord], sweep_dir: str) -> SweepReport:
    """REPORT_FILES in sweep_dir; for a URI they are written to local_sweep_dir first, then uploaded."""
    if is_uri(sweep_dir):
        from .storage import join, upload_dir, write_bytes

        local = local_sweep_dir(sweep_dir)
        report = write_report(sweep, base, records, local)
        for name in REPORT_FILES:
            path = os.path.join(local, name)
            if os.path.isdir(path):
                upload_dir(path, join(sweep_dir, name))
            elif os.path.isfile(path):
                with open(path, "rb") as f:
                    write_bytes(join(sweep_dir, name), f.read())
        print(f"uploaded {', '.join(REPORT_FILES)} to {sweep_dir}")
        return report
    rows = summarize(records)
    report = SweepReport(sweep_dir=sweep_dir, rows=rows, records=records)
    print(format_table(rows))
    report.results_csv = write_results_csv(rows, os.path.join(sweep_dir, "results.csv"))
    if rows and rows[0]["best_val_loss"] is not None:
        best = rows[0]
        rec = next(r for r in records if r.trial == best["trial"])
        # a fresh out_dir and run name: training the best config must not resume the trial's finished run
        cfg = trial_train_config(base, rec.params, out_dir=os.path.join(sweep_dir, "best_run"), storage_path="", run_name="")
        report.best_config_path = write_best_config(
            cfg, os.path.join(sweep_dir, "best_config.py"),
            comment=f"sweep {sweep.sweep_name}, trial {best['trial']}: best val loss {best['best_val_loss']:.4f} "
                    f"at iter {best['best_iter']}\ncheckpoint: {best['checkpoint_path'] or '(none kept)'}")
        report.best_checkpoint = best["checkpoint_path"]
        print(f"best trial {best['trial']}: val loss {best['best_val_loss']:.4f} (lr {best['learning_rate']}, "
              f"size {best['model_size'] or 'base'})")
        print(f"best config: {report.best_config_path}   (train it: nanogpt-ray train {report.best_config_path})")
        print(f"best checkpoint: {report.best_checkpoint or '(none kept)'}")
    plots_dir = os.path.join(sweep_dir, "plots")
    os.makedirs(plots_dir, exist_ok=True)
    report.plots = [plot_lr_sweep(rows, os.path.join(plots_dir, "val_loss_vs_lr.png")),
                    plot_learning_curves(records, os.path.join(plots_dir, "learning_curves.png"))]
    if sweep.scaling_law:
        points = best_per_size(rows)
        if len(points) < 3:
            print(f"scaling law: only {len(points)} sizes have a val loss; need 3 to fit")
        else:
            report.scaling_fit = fit_scaling_law([p[1] for p in points], [p[2] for p in points])
            a, alpha, c = report.scaling_fit
            print(f"scaling law: L(N) = {a:.4g} * N^-{alpha:.4f} + {c:.4f}   (fit to {len(points)} sizes, "
                  f"{sweep.token_budget or base.tokens_per_iter() * base.max_iters} tokens each)")
            for size, n, loss in points:
                print(f"  {size:12s} N={human_count(n):>8s}  best val {loss:.4f}  fit {scaling_law(n, a, alpha, c):.4f}")
            report.plots.append(plot_scaling_law(points, report.scaling_fit, os.path.join(plots_dir, "scaling_law.png")))
    tb_dir = write_tensorboard(records, os.path.join(sweep_dir, "tensorboard"))
    print(f"results: {report.results_csv}\nplots: {plots_dir}\ntensorboard: tensorboard --logdir {tb_dir}")
    return report
