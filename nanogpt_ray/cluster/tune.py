"""Ray Tune runs a sweep: every trial is one Ray Train run of nanoGPT's loop.

Tune starts a tiny driver per trial (0.01 CPU) which builds the TorchTrainer exactly as `nanogpt-ray train`
does (cluster/train.py's build_trainer) and forwards its reports to Tune with `TuneReportCallback`; ASHA stops
poor trials early on `val_loss` at eval points. Planning and the report are pure (sweep.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ray
from ray import tune
from ray.train.v2._internal.constants import DEFAULT_WORKER_GROUP_START_TIMEOUT_S  # private: only for the message
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from ..config import SweepConfig, TrainConfig
from ..plan import describe_cluster, sweep_plan, total_resources
from ..preflight import check_dataset, check_placement, resolve_use_gpu
from ..storage import check_writable, exists, is_uri, join
from ..sweep import (
    DRIVER_CPUS,
    METRIC,
    TIME_ATTR,
    SweepError,
    SweepReport,
    TrialSettings,
    base_train_config,
    local_sweep_dir,
    num_trials,
    records_from_results,
    search_axes,
    share_out_cpus,
    trial_concurrency,
    trial_train_config,
    write_report,
)
from .session import DEFAULT_HEALTH_CHECK_INTERVAL_S, connect, nodes_for_plan, user_errors_in_one_line, worker_env_vars
from .train import build_trainer


def train_driver_fn(config: dict, base: dict | None = None, settings: TrialSettings | None = None) -> None:
    """One Tune trial: build this trial's TorchTrainer and run it; Train's reports reach Tune through the callback."""
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_train_config(TrainConfig(**base), config, **settings.train_overrides(trial_id))
    # The run name is the trial id, which Tune keeps across restores: a resumed trial resumes its Train run
    # (and a trial that had finished its run resumes at the end and trains zero iterations).
    # a trial whose workers cannot be placed fails (after one more try) instead of holding the sweep forever
    trainer = build_trainer(cfg, settings.use_gpu, callbacks=[TuneReportCallback()],  # Train -> Tune
                            startup_retries=TRIAL_STARTUP_RETRIES)
    try:
        trainer.fit()
    except Exception as e:
        if isinstance(getattr(e, "controller_failure", None), WorkerGroupStartupTimeoutError):
            raise SweepError(workers_did_not_start(cfg, TRIAL_STARTUP_RETRIES + 1)) from None
        raise


TRIAL_STARTUP_RETRIES = 1


def workers_did_not_start(cfg: TrainConfig, tries: int) -> str:
    timeout = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", DEFAULT_WORKER_GROUP_START_TIMEOUT_S))
    need = {"CPU": cfg.cpus_per_worker, **cfg.resources_per_worker}
    return (f"its {cfg.num_workers} worker(s) ({', '.join(f'{k}: {v:g}' for k, v in need.items() if v)} each) could not "
            f"be placed within {timeout:g} s, {tries} tries: the cluster has no room for them "
            "(RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S sets the wait)")


def init_ray(sweep: SweepConfig) -> None:
    # each trial's driver runs in a Tune actor: what its Train controller and workers read must travel with the job
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", DEFAULT_HEALTH_CHECK_INTERVAL_S)
    env = worker_env_vars(("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"))
    # the dashboard must run: Train's placement-group cleaner asks its State API whether a trial's controller
    # lives; without it, trials that ASHA stops leak their placement groups and later trials wait for CPUs
    connect(sweep.address, env_vars=env, include_dashboard=True)
    # a trial that fails with one of our one-line errors (its workers cannot be placed) says so in one line
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(user_errors_in_one_line)


def _tune_space(axes: dict[str, tuple]) -> dict:
    space = {}
    for key, axis in axes.items():
        space[key] = tune.grid_search(axis[1]) if axis[0] == "grid" else tune.loguniform(axis[1], axis[2])
    return space


def run_sweep(sweep: SweepConfig) -> SweepReport | None:
    """Run (or resume) the sweep on the connected Ray cluster, then write results, best config and plots.
    --dry_run: the same checks, then the plan (None), with no Ray started."""
    base = base_train_config(sweep)
    axes = search_axes(sweep, base)
    scheduler = "none" if sweep.scaling_law else sweep.scheduler
    if sweep.scaling_law and sweep.scheduler == "asha":
        print("scaling_law: every size runs the whole token budget, so ASHA is off for this sweep")
    n_trials = num_trials(axes, sweep.num_samples)
    sweep_dir = sweep.sweep_dir() if is_uri(sweep.sweep_dir()) else os.path.abspath(sweep.sweep_dir())

    check_dataset(base)  # a missing dataset fails here in one line, not in every trial
    # a bucket: unknown scheme, no bucket, no credentials...; a dry run creates no local folder
    check_writable(sweep.storage_path, "storage_path", create=not sweep.dry_run)
    if exists(join(sweep_dir, "tuner.pkl")) and not sweep.resume:
        raise SweepError(f"sweep {sweep_dir} already exists; pass --resume=True to continue it, "
                         "or choose another --sweep_name")
    if sweep.dry_run:  # the local cluster this would start is this machine; a named one is asked, not used
        nodes, where = nodes_for_plan(sweep.address)
    else:
        init_ray(sweep)
        nodes, where = [n for n in ray.nodes() if n.get("Alive")], "the Ray cluster"
    resources = total_resources(nodes)
    first_trial = trial_train_config(base, {}, num_workers=sweep.workers_per_trial, cpus_per_worker=1.0)
    use_gpu = resolve_use_gpu(first_trial, resources.get("GPU", 0))
    sweep = share_out_cpus(sweep, resources, n_trials, use_gpu=use_gpu)
    first_trial = trial_train_config(base, {}, num_workers=sweep.workers_per_trial, cpus_per_worker=sweep.cpus_per_worker)
    concurrency = trial_concurrency(sweep, resources, n_trials, use_gpu=use_gpu)
    check_placement(first_trial, nodes)  # the workers of one trial fit on the nodes as they are split up
    if sweep.dry_run:
        print(sweep_plan(sweep, base, axes, n_trials, concurrency, describe_cluster(nodes, where), sweep_dir), flush=True)
        return None
    print(f"sweep {sweep.sweep_name}: {n_trials} trials, {concurrency} at a time "
          f"({sweep.workers_per_trial} workers x {sweep.cpus_per_worker:g} CPU each), results in {sweep_dir}")
    # Train reports val_loss only at eval points; the other reports (train loss, lr) must not fail Tune's check.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

    settings = TrialSettings(sweep_dir=sweep_dir, workers_per_trial=sweep.workers_per_trial,
                             cpus_per_worker=sweep.cpus_per_worker, use_gpu=use_gpu, local_dir=local_sweep_dir(sweep_dir))
    resources = {"cpu": DRIVER_CPUS}
    trainable = tune.with_resources(tune.with_parameters(train_driver_fn, base=dataclasses.asdict(base), settings=settings),
                                    resources)
    if sweep.resume and tune.Tuner.can_restore(sweep_dir):
        print(f"resuming sweep {sweep_dir}: finished trials are kept, unfinished ones continue")
        tuner = tune.Tuner.restore(sweep_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        sched = None
        if scheduler == "asha":
            grace = sweep.grace_period or 2 * base.eval_interval
            sched = ASHAScheduler(time_attr=TIME_ATTR, metric=METRIC, mode="min", max_t=max(base.max_iters, grace),
                                  grace_period=grace, reduction_factor=sweep.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            param_space=_tune_space(axes),
            tune_config=tune.TuneConfig(scheduler=sched, num_samples=sweep.num_samples, max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name=sweep.sweep_name, storage_path=sweep_dir.rstrip("/").rsplit("/", 1)[0],
                                      failure_config=tune.FailureConfig(max_failures=0), verbose=1),
        )
    result_grid = tuner.fit()
    records = records_from_results(result_grid, base)
    report = write_report(sweep, base, records, sweep_dir)
    report.concurrency = concurrency
    return report
