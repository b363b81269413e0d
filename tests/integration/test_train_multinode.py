"""Training across two real Ray nodes (ray.cluster_utils.Cluster on this machine), one worker each."""

import pytest
import torch

from nanogpt_ray.checkpoint import CKPT_NAME
from nanogpt_ray.cluster.train import launch as train
from nanogpt_ray.config import TrainConfig, from_dict
from tests.train_data import make_dataset, tiny_config

pytestmark = pytest.mark.ray


@pytest.mark.timeout(240)
def test_strict_spread_puts_one_worker_on_each_node(ray_cluster_2_nodes, tmp_path):
    import ray

    make_dataset(tmp_path / "data")  # on a real cluster data_root is shared storage; here both nodes see /tmp
    cfg = from_dict(TrainConfig, tiny_config(tmp_path / "data", tmp_path / "out", num_workers=2, max_iters=10,
                                             placement_strategy="STRICT_SPREAD"))
    result = train(cfg)
    cluster_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(cluster_nodes) == 2
    assert set(result.metrics["node_ids"]) == cluster_nodes  # every node ran a rank
    assert result.metrics["iter"] == 10
    assert torch.load(tmp_path / "out" / CKPT_NAME, weights_only=True)["iter_num"] == 10
