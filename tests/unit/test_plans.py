"""Pure decisions the Ray wing acts on, tested without Ray: which batch goes to which sampling actor and what
an actor's death costs, how many workers a cluster can place, and one benchmark actor per GPU or node."""

import pytest

from nanogpt_ray.batch_sampling import BatchDispatcher, SampleRow
from nanogpt_ray.bench import BenchError, plan_bench_actors
from nanogpt_ray.config import SampleConfig, TrainConfig
from nanogpt_ray.preflight import LaunchError, check_placement, max_placeable_workers


def batches(n, rows_each=2):
    return [[SampleRow(f"{b}-{r}", 0, "p", 4, 1.0, None, None, 1) for r in range(rows_each)] for b in range(n)]


def dispatcher(n_actors, n_batches, in_flight=2, max_attempts=3, max_restarts=2):
    return BatchDispatcher(n_actors, batches(n_batches), in_flight, max_attempts, max_restarts)


# ---------------------------------------------------------------------------- sampling batches

def test_dispatcher_fills_every_actor_up_to_its_in_flight_limit_in_input_order():
    plan = dispatcher(2, 5)
    sent = plan.assignments()
    assert [actor for actor, *_ in sent] == [0, 0, 1, 1]
    assert [batch[0].id for _, batch, _, _ in sent] == ["0-0", "1-0", "2-0", "3-0"]
    assert plan.assignments() == []  # both actors are full
    plan.finished(1)
    [(actor, batch, attempts, _)] = plan.assignments()
    assert (actor, batch[0].id, attempts) == (1, "4-0", 0)
    plan.finished(0), plan.finished(0), plan.finished(1), plan.finished(1)
    assert plan.assignments() == [] and not plan.work_left()


def test_a_crash_with_several_batches_in_flight_counts_once_against_its_actor():
    plan = dispatcher(2, 4, in_flight=2, max_restarts=1)
    sent = plan.assignments()
    on_actor_0 = [s for s in sent if s[0] == 0]
    assert len(on_actor_0) == 2
    # the process dies: both of its batches fail, but that is one death (one restart used), not two
    for actor, batch, attempts, incarnation in on_actor_0:
        assert plan.actor_died(actor, batch, attempts, incarnation) is None  # queued again
    assert plan.deaths[0] == 1 and 0 in plan.alive
    assert plan.resubmitted == 2
    # the failed batches go to the other actor first (actor 1 frees a slot)
    plan.finished(1)
    [(actor, batch, attempts, _)] = plan.assignments()
    assert actor == 1 and attempts == 1 and batch[0].id in ("0-0", "1-0")


def test_an_actor_out_of_restarts_gets_no_more_work_and_a_batch_out_of_attempts_gets_error_rows():
    plan = dispatcher(1, 1, in_flight=1, max_attempts=2, max_restarts=0)
    [(actor, batch, attempts, incarnation)] = plan.assignments()
    assert plan.actor_died(actor, batch, attempts, incarnation) is None
    assert plan.alive == set()  # no restart left: Ray will not bring it back
    assert plan.assignments() == [] and plan.work_left()  # the caller reports that every actor is gone
    rows = dispatcher(1, 1, in_flight=1, max_attempts=1).actor_died(0, batch, 0, 0)
    assert [r["error"] for r in rows] == ["sampling actor died 1 times on this batch"] * 2


def test_with_one_actor_left_a_retry_may_go_back_to_the_actor_that_failed_it():
    plan = dispatcher(1, 1, in_flight=1, max_restarts=3)
    [(actor, batch, attempts, incarnation)] = plan.assignments()
    plan.actor_died(actor, batch, attempts, incarnation)
    [(actor, again, attempts, incarnation)] = plan.assignments()
    assert (actor, again is batch, attempts, incarnation) == (0, True, 1, 1)


# ---------------------------------------------------------------------------- training workers on nodes

NODES = [{"Resources": {"CPU": 4.0, "GPU": 2.0}}, {"Resources": {"CPU": 2.0}}]


@pytest.mark.parametrize("strategy, expected", [("PACK", 3), ("SPREAD", 3), ("STRICT_PACK", 2), ("STRICT_SPREAD", 2)])
def test_max_placeable_workers_per_strategy(strategy, expected):
    assert max_placeable_workers(NODES, {"CPU": 2.0}, strategy) == expected


def test_gpu_workers_fit_only_where_the_gpus_are():
    assert max_placeable_workers(NODES, {"CPU": 1.0, "GPU": 1}, "PACK") == 2
    assert max_placeable_workers(NODES, {"CPU": 0.5}, "PACK") == 12
    assert max_placeable_workers([], {"CPU": 1.0}, "PACK") == 0


def test_check_placement_names_what_does_not_fit():
    cfg = TrainConfig(num_workers=4, gradient_accumulation_steps=4, cpus_per_worker=2.0, device="cpu")
    with pytest.raises(LaunchError, match=r"num_workers=4 but the Ray cluster \(2 node\(s\)\) can hold at most 3"):
        check_placement(cfg, NODES)
    assert check_placement(TrainConfig(num_workers=2, gradient_accumulation_steps=2, device="cpu"), NODES)[1] is False


# ---------------------------------------------------------------------------- benchmark actors

def node(node_id, cpus, gpus=0, alive=True):
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return {"NodeID": node_id, "Alive": alive, "NodeManagerHostname": f"host-{node_id}", "Resources": resources}


def test_bench_plans_one_actor_per_gpu_on_gpu_clusters():
    plans = plan_bench_actors([node("b", 8, gpus=2), node("a", 4), node("c", 8, gpus=1, alive=False)], "auto")
    assert [(p["node_id"], p["device"], p["num_gpus"]) for p in plans] == [("b", "cuda", 1), ("b", "cuda", 1)]


def test_bench_plans_one_whole_node_actor_per_cpu_node_using_all_its_threads():
    plans = plan_bench_actors([node("b", 2), node("a", 4)], "auto")
    assert [(p["node_id"], p["device"], p["num_threads"], p["num_cpus"]) for p in plans] == [
        ("a", "cpu", 4, 1), ("b", "cpu", 2, 1)]
    assert [p["device"] for p in plan_bench_actors([node("g", 8, gpus=1)], "cpu")] == ["cpu"]


def test_bench_plans_refuse_cuda_without_gpus_and_empty_clusters():
    with pytest.raises(BenchError, match="has no GPUs"):
        plan_bench_actors([node("a", 4)], "cuda")
    with pytest.raises(BenchError, match="no alive node"):
        plan_bench_actors([node("a", 4, alive=False)], "auto")


# ---------------------------------------------------------------------------- devices

@pytest.mark.parametrize("requested, local_rank, assigned, visible, expected", [
    ("auto", 0, None, 0, "cpu"),
    ("cpu", 3, 1, 4, "cpu"),
    ("auto", 2, None, 4, "cuda:2"),     # torchrun: one process per GPU, by local rank
    ("cuda", 1, None, 4, "cuda:1"),
    ("cuda", 3, None, 4, "cuda:3"),
    ("auto", 0, 3, 4, "cuda:3"),        # Ray assigned the worker the 4th visible GPU
    ("cuda", 1, 0, 1, "cuda:0"),        # Ray shows each worker only its own GPU
    ("cuda", 3, 2, 4, "cuda:2"),        # the assignment wins over the local rank
    ("cuda:1", 0, None, 2, "cuda:1"),   # an explicit index is taken as given
])
def test_device_choice_gives_each_worker_its_own_gpu(requested, local_rank, assigned, visible, expected):
    from nanogpt_ray.device import choose_device

    assert choose_device(requested, local_rank, assigned, visible) == expected


@pytest.mark.parametrize("requested, local_rank, visible, message", [
    ("cuda", 0, 0, "has no CUDA GPU"),
    ("cuda:0", 0, 0, "has no CUDA GPU"),
    ("cuda:2", 0, 2, r"sees 2 CUDA device\(s\)"),
    ("cuda", 2, 2, "local rank 2 has no GPU of its own"),
])
def test_device_choice_refuses_gpus_that_are_not_there(requested, local_rank, visible, message):
    from nanogpt_ray.config import UserError
    from nanogpt_ray.device import choose_device

    with pytest.raises(UserError, match=message):
        choose_device(requested, local_rank, None, visible)


def test_cpu_workers_get_the_node_divided_by_the_workers_on_it():
    from nanogpt_ray.preflight import default_cpus_per_worker

    two_cpus = [{"Resources": {"CPU": 2.0}}]
    assert default_cpus_per_worker(two_cpus, 1, "PACK", use_gpu=False) == 2.0
    assert default_cpus_per_worker(two_cpus, 2, "PACK", use_gpu=False) == 1.0
    assert default_cpus_per_worker(two_cpus, 3, "PACK", use_gpu=False) == 1.0  # cannot fit: placement says so
    two_nodes = [{"Resources": {"CPU": 8.0}}, {"Resources": {"CPU": 8.0}}]
    assert default_cpus_per_worker(two_nodes, 4, "SPREAD", use_gpu=False) == 4.0
    assert default_cpus_per_worker(two_nodes, 4, "STRICT_PACK", use_gpu=False) == 2.0
    assert default_cpus_per_worker(two_nodes, 1, "PACK", use_gpu=True) == 1.0


def test_an_explicit_cpus_per_worker_wins_over_the_default():
    cfg = TrainConfig(num_workers=1, device="cpu", cpus_per_worker=0.5)
    resolved, _ = check_placement(cfg, [{"Resources": {"CPU": 2.0}}])
    assert resolved.cpus_per_worker == 0.5
    resolved, _ = check_placement(TrainConfig(num_workers=1, device="cpu"), [{"Resources": {"CPU": 2.0}}])
    assert resolved.cpus_per_worker == 2.0


def sampling(**overrides) -> SampleConfig:
    return SampleConfig(**{"device": "cpu", **overrides})


def test_actor_plan_is_one_per_gpu_or_per_cpu():
    from nanogpt_ray.cluster.sampling import ClusterError, plan_sampler_actors  # imports ray; starts nothing

    assert plan_sampler_actors(sampling(num_actors=0), {"CPU": 3.0}) == (3, {"num_cpus": 1})
    assert plan_sampler_actors(sampling(num_actors=0, device="auto"), {"CPU": 8.0, "GPU": 4.0}) == \
        (4, {"num_gpus": 1.0, "num_cpus": 0})
    assert plan_sampler_actors(sampling(num_actors=0, device="auto", gpus_per_actor=0.5), {"GPU": 2.0})[0] == 4
    assert plan_sampler_actors(sampling(num_actors=5), {"CPU": 2.0})[0] == 5
    with pytest.raises(ClusterError, match="fewer than gpus_per_actor"):
        plan_sampler_actors(sampling(num_actors=0, gpus_per_actor=1.0), {"CPU": 2.0})
