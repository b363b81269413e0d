"""Two real Ray nodes on this machine (ray.cluster_utils.Cluster, 1 CPU each), one module-scoped cluster for every
test that needs two nodes: STRICT_SPREAD training, `bench --cluster`, FSDP and elastic worker groups under Ray Train.

Order matters: the tests before the elastic run use both nodes as they are; the elastic run then removes one node
mid-run and adds one back. A bad `bench --cluster` address failing fast starts no cluster: tests/unit/test_bad_input.py."""

import threading
import time

import pytest
import torch

from nanogpt_ray.checkpoint import CKPT_NAME
from nanogpt_ray.cluster.train import launch as train
from nanogpt_ray.config import BenchConfig, TrainConfig, from_dict
from tests.train_data import make_dataset, tiny_config

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_dataset(root)  # on a real cluster data_root is shared storage; here both nodes see /tmp
    return root


@pytest.fixture(autouse=True)
def fast_reports(monkeypatch):
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")


@pytest.mark.timeout(240)
def test_strict_spread_puts_one_worker_on_each_node(ray_cluster_2_nodes, data_root, tmp_path):
    import ray

    cfg = from_dict(TrainConfig, tiny_config(data_root, tmp_path / "out", num_workers=2, max_iters=10,
                                             placement_strategy="STRICT_SPREAD"))
    result = train(cfg)
    cluster_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(cluster_nodes) == 2
    assert set(result.metrics["node_ids"]) == cluster_nodes  # every node ran a rank
    assert result.metrics["iter"] == 10
    assert torch.load(tmp_path / "out" / CKPT_NAME, weights_only=True)["iter_num"] == 10


@pytest.mark.timeout(300)
def test_cluster_mode_returns_one_row_per_node_with_distinct_node_ids(ray_cluster_2_nodes, capsys):
    import ray

    from nanogpt_ray.cluster.bench import bench_cluster

    tiny = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, real_data=False, compile=False,
                device="cpu", warmup_steps=1, timed_steps=3)
    rows = bench_cluster(BenchConfig(**tiny, cluster=True))
    node_ids = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(node_ids) == 2
    assert len(rows) == 2
    assert {row["node"] for row in rows} == node_ids  # each node benchmarked, each exactly once
    for row in rows:
        assert row["node_id"] == row["node"] and row["hostname"]
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] <= 1
    out = capsys.readouterr().out
    slowest = min(rows, key=lambda r: r["tokens_per_s"])
    assert f"slowest node: {slowest['node']}" in out
    assert "ms/iter" in out and "tokens/s" in out and "MFU" in out


@pytest.mark.timeout(240)
def test_fsdp_on_two_ray_workers_matches_the_plain_loop(ray_cluster_2_nodes, data_root, tmp_path):
    from nanogpt_ray.train_loop import run_bare

    cfg = from_dict(TrainConfig, tiny_config(data_root, tmp_path / "fsdp", num_workers=2, max_iters=10,
                                             parallelism="fsdp", cpus_per_worker=1))
    result = train(cfg)
    assert result.metrics["world_size"] == 2 and result.metrics["iter"] == 10
    one = run_bare(from_dict(TrainConfig, tiny_config(data_root, tmp_path / "one", max_iters=10)))
    assert abs(one.history[-1]["val_loss"] - result.metrics["val_loss"]) <= 1e-4  # 1 worker x 2 micro-steps
    ckpt = torch.load(tmp_path / "fsdp" / CKPT_NAME, weights_only=True)
    assert ckpt["iter_num"] == 10 and ckpt["config"]["parallelism"] == "fsdp"


def _saved(out_dir) -> tuple[int, int]:
    """(iteration, worker count) of out_dir/ckpt.pt, or (-1, 0)."""
    try:
        ckpt = torch.load(out_dir / CKPT_NAME, weights_only=True)
    except Exception:  # not written yet
        return -1, 0
    return ckpt["iter_num"], ckpt["resume"]["num_workers"]


def _wait_for(predicate, timeout_s: float, what: str, out_dir) -> None:
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; (iteration, workers) saved: {_saved(out_dir)}")
        time.sleep(0.2)


@pytest.mark.timeout(600)
def test_elastic_run_shrinks_when_a_node_goes_and_grows_when_one_comes(ray_cluster_2_nodes, data_root, tmp_path,
                                                                       monkeypatch):
    # Ray Train learns of the lost node from its autoscaling coordinator, which looks at the cluster every 20 s: until
    # then it asks for two workers again and waits this long for a placement group that cannot come (Ray's default:
    # 60 s) before it asks anew; a failed start is retried without end (build_trainer's startup_retries)
    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "5")
    cluster = ray_cluster_2_nodes
    out_dir = tmp_path / "elastic"
    cfg = from_dict(TrainConfig, tiny_config(
        data_root, out_dir, min_workers=1, max_workers=2, cpus_per_worker=1, max_iters=1500, eval_interval=20,
        log_interval=20, eval_iters=2, max_failures=5, num_checkpoints_to_keep=200, elastic_resize_interval_s=2,
        n_embd=64, block_size=64))
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(result=train(cfg)), daemon=True)
    runner.start()
    _wait_for(lambda: _saved(out_dir)[0] >= 40 and _saved(out_dir)[1] == 2, 240, "two workers to save", out_dir)
    cluster.remove_node(next(iter(cluster.worker_nodes)))
    removed_at = _saved(out_dir)[0]
    _wait_for(lambda: _saved(out_dir)[1] == 1 and _saved(out_dir)[0] >= removed_at + 40, 240, "one worker to save", out_dir)
    cluster.add_node(num_cpus=1)
    runner.join(timeout=300)  # it grows back to two workers within elastic_resize_interval_s and a restart
    assert not runner.is_alive() and "result" in outcome
    result = outcome["result"]
    assert result.metrics["iter"] == 1500
    reports = sorted((metrics for _, metrics in result.best_checkpoints), key=lambda m: m["iter"])
    worlds = [m["world_size"] for m in reports]
    first_one = worlds.index(1)
    assert 2 in worlds[:first_one] and 2 in worlds[first_one:], worlds  # two, then one, then two again
    assert {m["tokens_per_iter"] for m in reports} == {cfg.tokens_per_iter()}
    assert _saved(out_dir) == (1500, worlds[-1])
