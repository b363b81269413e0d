"""What a sweep leaves behind, computed from its trials' reports: the results table and results.csv,
best_config.py, the scaling-law fit, PNG plots and TensorBoard logs. Pure Python (matplotlib and
TensorBoard's writer are optional imports); unit-tested without Ray.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass, field

from .config import PATH_KEYS, TrainConfig, UserError, field_doc, is_uri, missing_extra
from .files import atomic_open, atomic_write_text

METRIC = "val_loss"
"""What ASHA and the results table rank trials by (reported by the train loop at eval points)."""
TIME_ATTR = "iter"
"""ASHA's clock: training iterations, as reported by the train loop."""


class SweepError(UserError):
    """A sweep that cannot run as asked; one line that says why and what to change."""


CSV_COLUMNS = ("rank", "trial", "learning_rate", "model_size", "params", "best_val_loss", "best_iter",
               "iters_run", "max_iters", "stopped_early", "status", "error", "checkpoint_path")
"""results.csv's columns; every other key a sweep varies (search_space: muon_lr, batch_size, ...) comes right
after model_size."""


# ----------------------------------------------------------------------------- results

@dataclass
class TrialRecord:
    """What one trial did, read back from Tune: its parameters and every report it made."""

    trial: str
    params: dict
    history: list[dict] = field(default_factory=list)
    """Reported metrics in order (iter, loss, val_loss at eval points, checkpoint_path, ...)."""
    max_iters: int = 0
    n_params: int = 0
    status: str = "done"
    """'done' (ran to max_iters, or ASHA stopped it), 'error' when the trial failed, 'interrupted' when the
    sweep ended before the trial did."""
    error: str = ""
    """The last line of the trial's exception, when it failed."""

    def val_points(self) -> list[tuple[int, float]]:
        return [(int(r[TIME_ATTR]), float(r[METRIC])) for r in self.history
                if _finite(r.get(METRIC)) and r.get(TIME_ATTR) is not None]

    def best(self) -> tuple[int | None, float | None]:
        points = self.val_points()
        if not points:
            return None, None
        it, loss = min(points, key=lambda p: p[1])
        return it, loss

    def iters_run(self) -> int:
        iters = [int(r[TIME_ATTR]) for r in self.history if r.get(TIME_ATTR) is not None and _finite(r.get(TIME_ATTR))]
        return max(iters) if iters else 0

    def stopped_early(self) -> bool:
        return self.status == "done" and self.iters_run() < self.max_iters

    def best_checkpoint(self) -> str:
        """The checkpoint saved at the best eval, else the latest one that still exists."""
        best_iter, _ = self.best()
        paths = [(r.get(TIME_ATTR), r.get("checkpoint_path")) for r in self.history if isinstance(r.get("checkpoint_path"), str)]
        for it, path in paths:
            if it == best_iter and os.path.exists(path):
                return path
        for _, path in reversed(paths):
            if os.path.exists(path):
                return path
        return ""


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def swept_keys(params: list[dict]) -> list[str]:
    """The keys a sweep varies beyond learning_rate and model_size (its search_space), in first-seen order."""
    keys: list[str] = []
    for p in params:
        keys += [k for k in p if k not in ("learning_rate", "model_size") and k not in keys]
    return keys


def trial_label(row_or_params: dict, keys: list[str]) -> str:
    """'mini muon_lr=0.05': the model size and every other swept key of one trial, for plot labels."""
    size = row_or_params.get("model_size") or "base"
    return " ".join([size, *(f"{k}={_fmt(row_or_params.get(k))}" for k in keys)])


def _fmt(value) -> str:
    return "-" if value is None or value == "" else f"{value:g}" if isinstance(value, float) else str(value)


def summarize(records: list[TrialRecord]) -> list[dict]:
    """One row per trial, best val loss first; trials with no val loss (errors) last."""
    rows = []
    extra = swept_keys([rec.params for rec in records])
    for rec in records:
        best_iter, best_loss = rec.best()
        rows.append(dict(trial=rec.trial, learning_rate=rec.params.get("learning_rate"),
                         **{k: rec.params.get(k) for k in extra},
                         model_size=rec.params.get("model_size", ""), params=rec.n_params,
                         best_val_loss=best_loss, best_iter=best_iter, iters_run=rec.iters_run(),
                         max_iters=rec.max_iters, stopped_early=rec.stopped_early(), status=rec.status, error=rec.error,
                         checkpoint_path=rec.best_checkpoint()))
    rows.sort(key=lambda r: (r["best_val_loss"] is None, r["best_val_loss"] if r["best_val_loss"] is not None else 0.0, r["trial"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def csv_columns(rows: list[dict]) -> list[str]:
    """CSV_COLUMNS with the sweep's other swept keys after model_size."""
    at = CSV_COLUMNS.index("model_size") + 1
    extra = [k for k in swept_keys(rows) if k not in CSV_COLUMNS]
    return [*CSV_COLUMNS[:at], *extra, *CSV_COLUMNS[at:]]


def format_table(rows: list[dict]) -> str:
    extra = [k for k in swept_keys(rows) if k not in CSV_COLUMNS]
    header = ("#", "trial", "lr", "size", *extra, "params", "best val", "@iter", "iters", "early", "status")
    lines = [header]
    for r in rows:
        lr = r["learning_rate"]
        loss = r["best_val_loss"]
        lines.append((str(r["rank"]), r["trial"], f"{lr:.2e}" if lr is not None else "-", r["model_size"] or "-",
                      *(_fmt(r.get(k)) for k in extra), human_count(r["params"]), f"{loss:.4f}" if loss is not None else "-",
                      str(r["best_iter"]) if r["best_iter"] is not None else "-", f"{r['iters_run']}/{r['max_iters']}",
                      "yes" if r["stopped_early"] else "no", r["status"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def human_count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def write_results_csv(rows: list[dict], path: str) -> str:
    with atomic_open(path, "w") as f:
        columns = csv_columns(rows)
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


def read_results_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_best_config(cfg: TrainConfig, path: str, comment: str = "") -> str:
    """cfg as a training config file (`key = value`), every value that differs from TrainConfig's defaults."""
    defaults = TrainConfig()
    lines = ['"""Best trial of a nanogpt-ray sweep. Train it: nanogpt-ray train <this file>"""', ""]
    if comment:
        lines += [f"# {line}" for line in comment.splitlines()] + [""]
    for f in dataclasses.fields(TrainConfig):
        value = getattr(cfg, f.name)
        if f.name in PATH_KEYS and value and not is_uri(value):
            value = os.path.abspath(os.path.expanduser(value))  # the file may be run from anywhere
        elif value == getattr(defaults, f.name):
            continue
        doc = field_doc(TrainConfig, f.name).split(". ")[0].rstrip(".")
        lines.append(f"{f.name} = {value!r}" + (f"  # {doc}" if doc else ""))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def fit_scaling_law(n_params, losses) -> tuple[float, float, float]:
    """Least-squares fit of L(N) = a * N^-alpha + c; returns (a, alpha, c). numpy only.

    For a fixed alpha the model is linear in (a, c), so we solve that exactly and search alpha alone:
    a log-spaced scan, then golden-section refinement around the best scan point.
    """
    import numpy as np

    n = np.asarray(n_params, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if n.shape != y.shape or n.size < 3:
        raise SweepError(f"a scaling-law fit needs >= 3 (params, loss) points, got {n.size}")
    if np.any(n <= 0) or not np.all(np.isfinite(y)):
        raise SweepError("a scaling-law fit needs positive parameter counts and finite losses")
    n0 = float(np.exp(np.mean(np.log(n))))  # scale N so N^-alpha stays well-conditioned

    def solve(alpha: float):
        x = (n / n0) ** -alpha
        design = np.stack([x, np.ones_like(x)], axis=1)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        sse = float(np.sum((design @ coef - y) ** 2))
        return sse, float(coef[0]), float(coef[1])

    alphas = np.logspace(-4, np.log10(5.0), 400)
    sses = [solve(a)[0] for a in alphas]
    i = int(np.argmin(sses))
    lo, hi = alphas[max(i - 1, 0)], alphas[min(i + 1, len(alphas) - 1)]
    golden = (math.sqrt(5) - 1) / 2
    for _ in range(100):
        m1, m2 = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if solve(m1)[0] < solve(m2)[0]:
            hi = m2
        else:
            lo = m1
    alpha = (lo + hi) / 2
    _, a_scaled, c = solve(alpha)
    return a_scaled * n0 ** alpha, float(alpha), c


def scaling_law(n: float, a: float, alpha: float, c: float) -> float:
    return a * n ** -alpha + c


def best_per_size(rows: list[dict]) -> list[tuple[str, int, float]]:
    """(size, params, lowest val loss over all lrs) per model size, smallest model first."""
    best: dict[str, tuple[int, float]] = {}
    for r in rows:
        if r["best_val_loss"] is None or not r["model_size"]:
            continue
        if r["model_size"] not in best or r["best_val_loss"] < best[r["model_size"]][1]:
            best[r["model_size"]] = (int(r["params"]), float(r["best_val_loss"]))
    return sorted(((s, p, l) for s, (p, l) in best.items()), key=lambda t: t[1])


# ----------------------------------------------------------------------------- plots and TensorBoard

def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise missing_extra(e, "plotting the sweep") or e from None
    return plt


LOSS_LABEL = "val loss (cross-entropy, nats/token)"
LR_LABEL = "peak learning rate (log scale)"
ITER_LABEL = "iteration (optimizer steps)"


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=100, bbox_inches="tight")  # tight: keeps a legend placed outside the axes
    _pyplot().close(fig)
    return path


def _size_colors(sizes: list[str]) -> dict[str, tuple]:
    """One color per model size, so 32 trials read as a few families rather than 32 unrelated lines."""
    cmap = _pyplot().get_cmap("tab10")
    return {size: cmap(i % 10) for i, size in enumerate(sizes)}


def lr_sweep_figure(rows: list[dict]):
    """Best val loss against learning rate, one line per model size and value of every other swept key (so a
    muon_lr sweep draws one line per muon_lr, not a zigzag); the best trial is starred."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    extra = [k for k in swept_keys(rows) if k not in CSV_COLUMNS]
    groups = sorted({trial_label(r, extra) for r in rows})
    colors = _size_colors(groups)
    scored = [r for r in rows if r["best_val_loss"] is not None and r["learning_rate"]]
    for group in groups:
        pts = sorted((r["learning_rate"], r["best_val_loss"]) for r in scored if trial_label(r, extra) == group)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[group], label=group)
    early = [(r["learning_rate"], r["best_val_loss"]) for r in scored if r["stopped_early"]]
    if early:
        ax.scatter([p[0] for p in early], [p[1] for p in early], marker="x", color="k", zorder=3, label="stopped early")
    if scored:
        best = min(scored, key=lambda r: r["best_val_loss"])
        ax.scatter([best["learning_rate"]], [best["best_val_loss"]], marker="*", s=250, color="gold",
                   edgecolors="k", zorder=4, label=f"best: {best['trial']} ({best['best_val_loss']:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel(LR_LABEL)
    ax.set_ylabel("best " + LOSS_LABEL)
    ax.set_title("best val loss vs learning rate, per model size" + "".join(f" and {k}" for k in extra))
    ax.legend(title=" ".join(["model size", *extra]), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def plot_lr_sweep(rows: list[dict], path: str) -> str:
    return _save(lr_sweep_figure(rows), path)


def learning_curves_figure(records: list[TrialRecord]):
    """Val loss per trial against iterations. Color is the model size, shade the learning rate (darker =
    higher); the best trial is drawn thick and black on top. The legend sits outside the axes and wraps into
    columns, so 32 trials stay readable."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    curves = [(rec, rec.val_points()) for rec in records]
    curves = [(rec, pts) for rec, pts in curves if pts]
    sizes = sorted({rec.params.get("model_size", "") or "base" for rec, _ in curves})
    colors = _size_colors(sizes)
    lrs = sorted({rec.params.get("learning_rate") for rec, _ in curves if rec.params.get("learning_rate")})
    extra = swept_keys([rec.params for rec, _ in curves])
    best = min(curves, key=lambda c: c[0].best()[1])[0] if curves else None
    for rec, pts in curves:
        size = rec.params.get("model_size", "") or "base"
        lr = rec.params.get("learning_rate")
        label = f"{trial_label(rec.params, extra)} lr={lr:.1e}" if lr else rec.trial
        # shade by lr rank: light (0.35) for the lowest, full color for the highest
        alpha = 0.35 + 0.65 * (lrs.index(lr) / max(1, len(lrs) - 1)) if lr in lrs else 1.0
        if rec is best:
            continue  # drawn last, on top
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[size], alpha=alpha, linewidth=1.2, label=label)
    if best is not None:
        pts = best.val_points()
        lr = best.params.get("learning_rate")
        label = f"best: {trial_label(best.params, extra)} lr={lr:.1e} ({best.best()[1]:.3f})" if lr else f"best: {best.trial} ({best.best()[1]:.3f})"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="k", linewidth=2.5, marker="o", markersize=4,
                label=label, zorder=5)
    ax.set_xlabel(ITER_LABEL)
    ax.set_ylabel(LOSS_LABEL)
    ax.set_title(f"learning curves of {len(curves)} trials (color: model size, shade: learning rate)")
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=max(1, math.ceil(len(curves) / 16)))
    return fig


def plot_learning_curves(records: list[TrialRecord], path: str) -> str:
    return _save(learning_curves_figure(records), path)


def plot_scaling_law(points: list[tuple[str, int, float]], fit: tuple[float, float, float], path: str) -> str:
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    n = np.array([p[1] for p in points], dtype=float)
    ax.scatter(n, [p[2] for p in points], zorder=3)
    for size, params, loss in points:
        ax.annotate(size, (params, loss), textcoords="offset points", xytext=(4, 4), fontsize=8)
    grid = np.logspace(np.log10(n.min()) - 0.3, np.log10(n.max()) + 0.3, 100)
    a, alpha, c = fit
    ax.plot(grid, [scaling_law(x, a, alpha, c) for x in grid], label=f"L(N) = {a:.3g}·N^-{alpha:.3f} + {c:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (log scale)")
    ax.set_ylabel("best " + LOSS_LABEL)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_tensorboard(records: list[TrialRecord], log_dir: str) -> str:
    """One TensorBoard run per trial: val_loss and train loss against training iterations."""
    from torch.utils.tensorboard import SummaryWriter

    for rec in records:
        run_dir = os.path.join(log_dir, rec.trial)
        if os.path.isdir(run_dir):  # written by an earlier pass (resume): rewrite, do not duplicate points
            import shutil

            shutil.rmtree(run_dir)
        writer = SummaryWriter(run_dir)
        for r in rec.history:
            it = r.get(TIME_ATTR)
            if it is None or not _finite(it):
                continue
            for key in (METRIC, "loss", "lr"):
                if _finite(r.get(key)):
                    writer.add_scalar(key, float(r[key]), int(it))
        hparams = {k: v for k, v in rec.params.items() if isinstance(v, (int, float, str, bool))}
        best = rec.best()[1]
        if hparams and best is not None:
            writer.add_hparams(hparams, {"hparam/best_val_loss": best}, run_name=".")
        writer.close()
    return log_dir
