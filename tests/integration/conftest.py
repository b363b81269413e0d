"""Real Ray clusters for integration tests. Every Ray test module gets a hard timeout (pyproject: 600 s)."""

import pytest
import ray


@pytest.fixture(scope="module")
def ray_start_2_cpus():
    """A fresh local Ray cluster with 2 logical CPUs, shut down after the module."""
    if ray.is_initialized():
        ray.shutdown()
    context = ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=True,
                       runtime_env={"env_vars": {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}})
    yield context
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster_2_nodes():
    """Two real Ray nodes on this machine (ray.cluster_utils.Cluster), 1 CPU each."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def speeches_dir(tmp_path_factory, shakespeare_path):
    """Tiny Shakespeare's speeches as 24 txt files (a document each) and 2 line-mode files, one over 2 MB."""
    root = tmp_path_factory.mktemp("speeches")
    text = shakespeare_path.read_text(encoding="utf-8")
    speeches = [s for s in text.split("\n\n") if s.strip()]
    per = -(-len(speeches) // 24)
    (root / "txt").mkdir()
    for i in range(24):
        (root / "txt" / f"{i:02d}.txt").write_text("\n\n".join(speeches[i * per:(i + 1) * per]))
    (root / "lines").mkdir()
    (root / "lines" / "a.txt").write_text(text + text.upper())
    (root / "lines" / "b.txt").write_text(text[:200_000])
    return root
