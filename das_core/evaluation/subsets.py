"""Deterministic subsets of a clip list or a noise set (``--limit``, ``--noise-limit``) and the stable hash
that also draws the ``hash:P`` tuning split: the same clips on every machine and run."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

from das_core.evaluation.datasets import Dataset, NoiseSet


def stable_hash(key: str) -> int:
    """A hash of ``key`` that is the same on every machine and run (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big")


def hash_fraction(key: str) -> float:
    """``key`` mapped deterministically to [0, 1)."""
    return stable_hash(key) / 2.0**64


def stratified_order(keys: Sequence[str], label_of: Sequence[Hashable], group_of: Sequence[Hashable]) -> list[int]:
    """Indices of ``keys`` in an order whose every prefix is spread over labels and groups.

    Items are dealt round-robin over labels; within a label, round-robin over
    its groups (starting at a different group for each label), and within a
    (label, group) by ``stable_hash``. Taking the first ``n`` therefore gives a
    deterministic subset with every label about equally represented and each
    label's items spread over the groups (folds, or tune/test halves).
    """
    by_label: dict[Hashable, dict[Hashable, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (lab, grp) in enumerate(zip(label_of, group_of)):
        by_label[lab][grp].append(i)
    per_label: list[list[int]] = []
    for li, lab in enumerate(sorted(by_label, key=str)):
        groups = [sorted(v, key=lambda i: (stable_hash(keys[i]), keys[i]))
                  for _, v in sorted(by_label[lab].items(), key=lambda kv: str(kv[0]))]
        shift = li % len(groups)
        groups = groups[shift:] + groups[:shift]
        per_label.append(_round_robin(groups))
    return _round_robin(per_label)


def _round_robin(lists: list[list[int]]) -> list[int]:
    """The first item of every list, then the second of every list, and so on."""
    out: list[int] = []
    depth = max((len(x) for x in lists), default=0)
    for d in range(depth):
        out.extend(x[d] for x in lists if d < len(x))
    return out


def rarest_label(dataset: Dataset) -> list[str]:
    """Each clip's least frequent label (ties: vocabulary order); its own label for single-label data."""
    counts = Counter(lb for c in dataset.clips for lb in c.labels)
    order = dataset.label_index()
    return [min(c.labels, key=lambda lb: (counts[lb], order[lb])) for c in dataset.clips]


def stratified_subset(dataset: Dataset, n: int, group_of: Sequence[Hashable] | None = None) -> Dataset:
    """``n`` clips chosen by ``stratified_order`` (labels: each clip's rarest; groups: folds by default).

    The subset keeps the dataset's order of clips.
    """
    if n >= len(dataset.clips):
        return dataset
    groups = group_of if group_of is not None else [c.fold for c in dataset.clips]
    order = stratified_order([c.clip_id for c in dataset.clips], rarest_label(dataset), groups)
    chosen = sorted(order[:n])
    return dataset.with_clips([dataset.clips[i] for i in chosen])


def noise_subset(noise: NoiseSet, n: int) -> NoiseSet:
    """``n`` recordings spread over the scenes, chosen deterministically."""
    if n >= len(noise.uris):
        return noise
    order = stratified_order(list(noise.uris), [s or "" for s in noise.scenes], [0] * len(noise.uris))
    return noise.with_uris([noise.uris[i] for i in order[:n]])
