"""Benchmarks across a real Ray cluster: one actor per node (2-node ray.cluster_utils.Cluster). A bad address
failing fast starts no cluster: tests/unit/test_bad_input.py."""

import pytest

from nanogpt_ray.config import BenchConfig

TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, real_data=False, compile=False,
            device="cpu", warmup_steps=1, timed_steps=3)

pytestmark = pytest.mark.ray


@pytest.mark.timeout(300)
def test_cluster_mode_returns_one_row_per_node_with_distinct_node_ids(ray_cluster_2_nodes, capsys):
    import ray

    from nanogpt_ray.cluster.bench import bench_cluster

    rows = bench_cluster(BenchConfig(**TINY, cluster=True))
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
