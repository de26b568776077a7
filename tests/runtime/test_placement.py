"""das_core.runtime.placement: whether a label run's encoder actors and a decode task fit the nodes, node by node."""

from __future__ import annotations

from das_core.runtime.placement import Demand, describe_nodes, misfits

GiB = 2**30


def node(cpus: float, gpus: float = 0, memory: float = 8 * GiB) -> dict:
    return {"CPU": cpus, "GPU": gpus, "memory": memory}


def demand(actors=1, cpus=1.0, gpus=0.0) -> Demand:
    return Demand(actors=actors, cpus_per_actor=cpus, gpus_per_actor=gpus, decode_cpus=1.0, decode_memory=768 * 2**20)


def test_a_two_cpu_machine_runs_the_default():
    assert misfits([node(2)], demand()) == []


def test_half_a_cpu_actor_on_one_cpu_nodes_leaves_no_room_for_decoding():
    # the case of issue 20: the actor takes 0.5 of a 1-CPU node, the 1-CPU decode tasks fit nowhere
    (why,) = misfits([node(1)], demand(cpus=0.5))
    assert "no node has 1 CPU and 768 MiB memory left for a decode task" in why
    (why,) = misfits([node(1), node(1)], demand(actors=3, cpus=0.5))
    assert "left for a decode task" in why
    # per node, not cluster totals: 2 CPUs in all, yet no node hosts a 2-CPU actor
    (why,) = misfits([node(1), node(1)], demand(cpus=2))
    assert "no node can host one encoder actor of 2 CPU" in why and "1 CPU" in why


def test_fits_when_some_placement_leaves_a_node_for_decoding():
    assert misfits([node(1), node(1), node(1)], demand(actors=2, cpus=0.5)) == []
    assert misfits([node(1), node(1)], demand(actors=2, cpus=0.5)) == []            # both actors on one node
    assert misfits([node(4, gpus=1), node(2)], demand(gpus=1)) == []


def test_gpus_memory_and_counts():
    (why,) = misfits([node(8)], demand(gpus=1))
    assert "no node can host one encoder actor of 1 CPU + 1 GPU" in why
    (why,) = misfits([node(8, gpus=1)], demand(actors=2, gpus=1))
    assert "only 1 of the 2 encoder actors" in why
    (why,) = misfits([node(8, memory=0.5 * GiB)], demand())
    assert "768 MiB memory" in why
    assert misfits([], demand()) == ["the cluster has no live node"]


def test_describe_nodes():
    text = describe_nodes([{"CPU": 0.5, "memory": GiB}], [node(1, memory=2 * GiB)])
    assert text == "node 1: 0.5/1 CPU, 1.0/2.0 GiB memory free"
