"""Whether a label run's tasks and actors fit the nodes of a cluster, without Ray: the check before work starts,
and the words for what is pending when a run stalls.

A node is a dict of Ray resources (``CPU``, ``GPU``, ``memory`` in bytes). Every encoder actor asks the same
(``cpus_per_actor``, ``gpus_per_actor``), so how many of them a node can host is a division; the pipeline
moves only if, with every actor placed, some node still has room for one decode task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EPS = 1e-9


@dataclass(frozen=True)
class Demand:
    """What a label run asks of the cluster."""

    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    decode_cpus: float
    decode_memory: float        # bytes

    def describe(self) -> str:
        """The demand in words (what a stall's warning says is pending)."""
        gpu = f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return (f"{self.actors} encoder actor(s) of {self.cpus_per_actor:g} CPU{gpu} each, and decode tasks of "
                f"{self.decode_cpus:g} CPU + {self.decode_memory / 2**20:.0f} MiB memory each")


def _actors_on(node: dict, demand: Demand, reserve_cpus: float = 0.0, reserve_memory: float = 0.0) -> float:
    """How many encoder actors ``node`` hosts, after keeping ``reserve_*`` free for a decode task."""
    cpus = float(node.get("CPU", 0)) - reserve_cpus
    gpus = float(node.get("GPU", 0))
    if cpus < -EPS or float(node.get("memory", 0)) < reserve_memory - EPS:
        return -1.0
    counts = [math.inf]
    if demand.cpus_per_actor > 0:
        counts.append(math.floor((cpus + EPS) / demand.cpus_per_actor))
    if demand.gpus_per_actor > 0:
        counts.append(math.floor((gpus + EPS) / demand.gpus_per_actor))
    return min(counts)


def misfits(nodes: list[dict], demand: Demand) -> list[str]:
    """Why ``d`` can never run on ``nodes`` (empty when some placement lets the pipeline move).

    Some node must host each actor, and with all of them placed some node must still hold one decode task.
    """
    if not nodes:
        return ["the cluster has no live node"]
    if not any(_actors_on(n, demand) >= 1 for n in nodes):
        biggest = max(nodes, key=lambda n: (float(n.get("GPU", 0)), float(n.get("CPU", 0))))
        return [f"no node can host one encoder actor of {demand.cpus_per_actor:g} CPU"
                + (f" + {demand.gpus_per_actor:g} GPU" if demand.gpus_per_actor else "")
                + f" (the largest node offers {describe_node(biggest)})"]
    if sum(_actors_on(n, demand) for n in nodes) < demand.actors:
        return [f"the nodes can host only {sum(_actors_on(n, demand) for n in nodes):g} of the {demand.actors} "
                "encoder actors "
                f"of {demand.cpus_per_actor:g} CPU each"]
    for host in range(len(nodes)):
        room = sum(_actors_on(n, demand, *((demand.decode_cpus, demand.decode_memory) if i == host else (0.0, 0.0)))
                   for i, n in enumerate(nodes))
        if _actors_on(nodes[host], demand, demand.decode_cpus, demand.decode_memory) >= 0 and room >= demand.actors:
            return []
    return [f"with the {demand.actors} encoder actor(s) of {demand.cpus_per_actor:g} CPU placed, no node has "
            f"{demand.decode_cpus:g} CPU and {demand.decode_memory / 2**20:.0f} MiB memory left for a decode task"]


def describe_node(node: dict) -> str:
    """``2 CPU, 1 GPU, 3.2 GiB memory``."""
    parts = [f"{float(node.get('CPU', 0)):g} CPU"]
    if node.get("GPU"):
        parts.append(f"{float(node['GPU']):g} GPU")
    parts.append(f"{float(node.get('memory', 0)) / 2**30:.1f} GiB memory")
    return ", ".join(parts)


def describe_nodes(free: list[dict], total: list[dict]) -> str:
    """Each node's free resources out of its total: ``node 1: 0.5/1 CPU, 1.2/3.0 GiB memory free; ...``."""
    lines = []
    for i, (f, t) in enumerate(zip(free, total), 1):
        gpu = f", {float(f.get('GPU', 0)):g}/{float(t['GPU']):g} GPU" if t.get("GPU") else ""
        lines.append(f"node {i}: {float(f.get('CPU', 0)):g}/{float(t.get('CPU', 0)):g} CPU{gpu}, "
                     f"{float(f.get('memory', 0)) / 2**30:.1f}/{float(t.get('memory', 0)) / 2**30:.1f} GiB memory free")
    return "; ".join(lines) or "no live node"
