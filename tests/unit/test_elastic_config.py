"""Elastic training's pure parts: which worker counts a run may use, and the one-line refusals."""

import pytest

from nanogpt_ray.config import ConfigError, TrainConfig, from_dict
from nanogpt_ray.preflight import LaunchError, check_placement
from tests.train_data import tiny_config


def node(cpus: float) -> dict:
    return {"Alive": True, "Resources": {"CPU": cpus}}


def test_elastic_range_is_every_count_from_min_to_max():
    cfg = from_dict(TrainConfig, {"min_workers": 1, "max_workers": 4, "gradient_accumulation_steps": 12})
    assert cfg.is_elastic() and list(cfg.worker_counts()) == [1, 2, 3, 4]
    assert list(from_dict(TrainConfig, {"num_workers": 2, "gradient_accumulation_steps": 4}).worker_counts()) == [2]


def test_a_worker_count_in_range_that_cannot_split_the_global_batch_is_one_line():
    with pytest.raises(ConfigError, match=r"every worker count from min_workers=2 to max_workers=4 \(3 does not\)"):
        from_dict(TrainConfig, {"min_workers": 2, "max_workers": 4, "gradient_accumulation_steps": 8})


@pytest.mark.parametrize("bounds", [(0, 2), (3, 2), (2, 0)])
def test_min_and_max_workers_must_be_ordered_and_positive(bounds):
    with pytest.raises(ConfigError, match="1 <= min_workers <= max_workers"):
        from_dict(TrainConfig, {"min_workers": bounds[0], "max_workers": bounds[1], "gradient_accumulation_steps": 12})


def test_elastic_placement_needs_room_for_min_workers_and_sizes_cpus_for_max():
    cfg = from_dict(TrainConfig, {"min_workers": 1, "max_workers": 2, "gradient_accumulation_steps": 2, "device": "cpu"})
    placed, use_gpu = check_placement(cfg, [node(2)])  # one 2-CPU node: 1 CPU each so both may run on it
    assert placed.cpus_per_worker == 1.0 and not use_gpu
    big = from_dict(TrainConfig, {"min_workers": 3, "max_workers": 4, "gradient_accumulation_steps": 12,
                                  "device": "cpu", "cpus_per_worker": 1})
    with pytest.raises(LaunchError, match="min_workers=3 but the Ray cluster"):
        check_placement(big, [node(2)])


def test_elastic_bounds_become_rays_elastic_scaling_config(tmp_path):
    from nanogpt_ray.cluster.train import scaling_config  # imports ray; starts nothing

    cfg = from_dict(TrainConfig, tiny_config(tmp_path, tmp_path, min_workers=1, max_workers=2, elastic_resize_interval_s=3))
    scaling = scaling_config(cfg, False, {"CPU": 1})
    assert scaling.elasticity_enabled and (scaling.min_workers, scaling.max_workers) == (1, 2)
    assert scaling.elastic_resize_monitor_interval_s == 3
