"""Which launch mode `nanogpt-ray train` picks for each combination of cluster, worker count, elastic bounds,
storage_path and torchrun: a pure function, no Ray."""

import itertools

import pytest

from nanogpt_ray.config import TrainConfig
from nanogpt_ray.launch_mode import RAY_JOB_ENV, choose_launch_mode
from nanogpt_ray.preflight import LaunchError

CLUSTER_SIGNALS = ("address", "ray_address_env", "in_ray_job", "ray_connected")


def _mode(num_workers=1, elastic=False, storage_path="", address="", ray_address_env=False, in_ray_job=False,
          ray_connected=False, torchrun=False):
    cfg = TrainConfig(num_workers=num_workers, storage_path=storage_path, address=address, gradient_accumulation_steps=4,
                      **(dict(min_workers=1, max_workers=2) if elastic else {}))
    environ = {}
    if ray_address_env:
        environ["RAY_ADDRESS"] = "127.0.0.1:6379"
    if in_ray_job:
        environ[RAY_JOB_ENV] = "{}"
    if torchrun:
        environ.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    return choose_launch_mode(cfg, environ, ray_connected)


@pytest.mark.parametrize("num_workers,elastic,storage,address,ray_address_env,in_ray_job,ray_connected",
                         list(itertools.product([1, 2], [False, True], [False, True], [False, True], [False, True],
                                                [False, True], [False, True])))
def test_local_mode_only_for_one_worker_with_no_cluster_named_nothing_elastic_and_no_storage_path(
        num_workers, elastic, storage, address, ray_address_env, in_ray_job, ray_connected):
    mode = _mode(num_workers, elastic, "/shared/ckpts" if storage else "", "10.0.0.1:6379" if address else "",
                 ray_address_env, in_ray_job, ray_connected)
    wants_ray = num_workers > 1 or elastic or storage or address or ray_address_env or in_ray_job or ray_connected
    assert mode.local is not wants_ray
    assert mode.start_line().startswith("local mode" if mode.local else "Ray Train workers")
    assert "--num_workers=" in mode.other  # the start line says how to get the other mode


@pytest.mark.parametrize("signal", CLUSTER_SIGNALS)
def test_num_workers_zero_is_local_mode_even_inside_a_ray_job_but_not_with_an_explicit_address(signal):
    if signal == "address":
        with pytest.raises(LaunchError, match=r"num_workers=0 runs in Ray Train's local mode, which does not use --address"):
            _mode(num_workers=0, address="10.0.0.1:6379")
    else:
        assert _mode(num_workers=0, **{signal: True}).local


@pytest.mark.parametrize("asked", ["num_workers", "torchrun"])
@pytest.mark.parametrize("conflict,fragment", [(dict(storage_path="/shared"), "--storage_path"),
                                               (dict(elastic=True), "min_workers/max_workers")])
def test_local_mode_asked_for_with_what_only_ray_workers_do_is_one_line(asked, conflict, fragment):
    kwargs = dict(num_workers=0) if asked == "num_workers" else dict(torchrun=True)
    with pytest.raises(LaunchError, match=fragment) as caught:
        _mode(**kwargs, **conflict)
    assert len(str(caught.value).splitlines()) == 1


def test_torchrun_is_local_mode_whatever_the_environment_names():
    assert _mode(torchrun=True, ray_address_env=True, in_ray_job=True).local
    with pytest.raises(LaunchError, match="num_workers=2"):
        _mode(torchrun=True, num_workers=2)
