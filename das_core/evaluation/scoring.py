"""Scoring an evaluation from stored embeddings: every method, λ chosen on the tuning split, metrics.

No Ray and no model here: the stores were encoded by label runs
(``das_core.evaluation.stores``); every window is scored with the library's
scorer (``das_core.scoring.scorer``, ``das_core.scoring.cache.project_rows``) and clip
scores are the maximum over the clip's windows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from das_core.errors import EvaluationError
from das_core.evaluation.datasets import Dataset
from das_core.evaluation.side import SideInformation
from das_core.evaluation.stores import ConditionData
from das_core.scoring.baselines import TGAP_POOL_SIZE, acevedo_scores, background_profile, tgap_prototypes
from das_core.scoring.cache import DriftCache, project_rows
from das_core.scoring.scorer import max_by_file

METHODS = ("zs_das_template", "zs_laion_template", "das", "acevedo_zs_text", "acevedo_zs_audio",
           "acevedo_tgap_text", "acevedo_tgap_audio")
BASELINES = tuple(m for m in METHODS if m != "das")


def _profiles(prototypes: np.ndarray, keys: list[str | None], background: dict[str, np.ndarray]) -> np.ndarray:
    """Per-window background profiles ``b`` (m, k) for ``prototypes`` (k, d); zero where there is no background."""
    rows = {key: background_profile(prototypes, background[key]) for key in {k for k in keys if k is not None}}
    zero = np.zeros(len(prototypes), dtype=np.float32)
    return np.stack([rows[k] if k is not None else zero for k in keys]) if keys else np.zeros((0, len(prototypes)))


@dataclass
class GroupedPrototypes:
    """TGAP prototypes cross-fitted over groups: clips of group g use prototypes from the pool outside g.

    ``default`` is built from the whole pool; ``overrides[g]`` replaces the rows
    of the classes whose nearest pool windows include windows of group g.
    """

    default: np.ndarray
    overrides: dict[Hashable, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def for_group(self, g: Hashable) -> np.ndarray:
        """The prototypes ``(K, d)`` for the windows of group ``g``: the default, with ``g``'s overrides."""
        protos = self.default.copy()
        if g in self.overrides:
            classes, rows = self.overrides[g]
            protos[classes] = rows
        return protos


def cross_fit_tgap(anchors: np.ndarray, pool: np.ndarray, pool_groups: Sequence[Hashable],
                   n: int = TGAP_POOL_SIZE) -> GroupedPrototypes:
    """For each group g, ``tgap_prototypes(anchors, pool minus g's windows)`` without rebuilding it per group.

    A class's prototype only changes for g when one of its ``n`` nearest pool
    windows is in g; the replacement comes from the class's ``n + |g|``
    nearest windows minus g's, which hold its ``n`` nearest outside g.
    """
    pool = np.asarray(pool, np.float32)
    groups = list(pool_groups)
    if len(pool) == 0:
        raise ValueError("TGAP needs a non-empty pool of audio embeddings")
    default = tgap_prototypes(anchors, pool, n)
    sims = np.asarray(anchors, np.float64) @ pool.astype(np.float64).T
    order = np.argsort(-sims, axis=1, kind="stable")
    n_eff = min(n, len(pool))
    members: dict[Hashable, list[int]] = defaultdict(list)
    for w, g in enumerate(groups):
        members[g].append(w)
    affected: dict[Hashable, set[int]] = defaultdict(set)
    for c, row in enumerate(order[:, :n_eff]):
        for w in row:
            affected[groups[w]].add(c)
    overrides = {}
    for g, classes in affected.items():
        inside = np.array(members[g])
        if len(inside) == len(pool):
            raise ValueError(f"TGAP: no pool window lies outside group {g!r}")
        cls = np.array(sorted(classes))
        candidates = np.unique(order[cls, :n_eff + len(inside)])
        candidates = candidates[~np.isin(candidates, inside)]
        overrides[g] = (cls, tgap_prototypes(anchors[cls], pool[candidates], n))
    return GroupedPrototypes(default, overrides)


def acevedo_window_scores(z: np.ndarray, keys: list[str | None], prototypes: GroupedPrototypes,
                          window_groups: Sequence[Hashable], background: dict[str, np.ndarray],
                          tau: float) -> np.ndarray:
    """``z . P_c - tau * b_c`` per window, with each window's group's prototypes and its own background."""
    scores = acevedo_scores(z, prototypes.default, _profiles(prototypes.default, keys, background), tau)
    by_group: dict[Hashable, list[int]] = defaultdict(list)
    for w, g in enumerate(window_groups):
        if g in prototypes.overrides:
            by_group[g].append(w)
    for g, windows in by_group.items():
        classes, rows = prototypes.overrides[g]
        sub_keys = [keys[w] for w in windows]
        scores[np.ix_(windows, classes)] = acevedo_scores(z[windows], rows, _profiles(rows, sub_keys, background),
                                                          tau)
    return scores


def method_scores(data: ConditionData, n: int, cache: DriftCache, side: SideInformation, groups: Sequence[Hashable],
                  lam_grid: Sequence[float], tau: float) -> tuple[dict[str, np.ndarray], dict[float, np.ndarray]]:
    """Clip scores (n, K) of every baseline, and of DAS for every λ of the grid, in one condition."""
    s = data.store
    z, owner, keys = s.embeddings, s.owner, data.background
    window_groups = [groups[i] for i in owner]
    zs_protos = GroupedPrototypes(side.anchors.astype(np.float32))
    tgap = cross_fit_tgap(side.anchors, z, window_groups)
    windows = {
        "zs_das_template": cache.clean_scores(z),
        "zs_laion_template": project_rows(z, side.laion),
        "acevedo_zs_text": acevedo_window_scores(z, keys, zs_protos, window_groups, side.text_background, tau),
        "acevedo_zs_audio": acevedo_window_scores(z, keys, zs_protos, window_groups, side.audio_background, tau),
        "acevedo_tgap_text": acevedo_window_scores(z, keys, tgap, window_groups, side.text_background, tau),
        "acevedo_tgap_audio": acevedo_window_scores(z, keys, tgap, window_groups, side.audio_background, tau),
    }
    baselines = {m: max_by_file(w, owner, n) for m, w in windows.items()}
    das = {lam: max_by_file(cache.with_lam(lam).scores(z), owner, n) for lam in lam_grid}
    return baselines, das


# ----------------------------------------------------------------- metrics
@dataclass
class Labels:
    """Ground truth in the form the metrics take."""

    multi_label: bool
    y: np.ndarray                     # (n,) class index, or (n, K) 0/1
    folds: np.ndarray                 # (n,) fold (-1 where none)
    names: tuple[str, ...]

    @property
    def main_metric(self) -> str:
        """``mAP`` for multi-label data, else ``accuracy``."""
        return "mAP" if self.multi_label else "accuracy"

    @classmethod
    def of(cls, dataset: Dataset) -> Labels:
        """The ground truth of ``dataset``'s clip list."""
        y = dataset.label_matrix() if dataset.multi_label else dataset.targets()
        folds = np.array([c.fold if c.fold is not None else -1 for c in dataset.clips], dtype=np.int64)
        return cls(dataset.multi_label, y, folds, dataset.label_names)


def metric_values(labels: Labels, scores: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``accuracy`` and ``accuracy_fold_mean`` (single-label) or macro ``mAP`` over the clips in ``mask``."""
    from das_core.scoring.metrics import accuracy, mean_average_precision

    if not mask.any():
        raise ValueError("no decodable clip in this split")
    if labels.multi_label:
        return {"mAP": mean_average_precision(labels.y[mask], scores[mask]).value}
    out = {"accuracy": accuracy(labels.y[mask], scores[mask])}
    folds = sorted(set(labels.folds[mask].tolist()) - {-1})
    if folds:
        out["accuracy_fold_mean"] = float(np.mean([accuracy(labels.y[mask & (labels.folds == f)],
                                                            scores[mask & (labels.folds == f)]) for f in folds]))
    return out


def per_class_values(labels: Labels, scores: np.ndarray, mask: np.ndarray) -> tuple[str, np.ndarray, np.ndarray]:
    """(metric name, value per class, clips per class): recall for single-label data, AP for multi-label."""
    from das_core.scoring.metrics import mean_average_precision, per_class_accuracy

    k = len(labels.names)
    if labels.multi_label:
        support = labels.y[mask].sum(axis=0)
        ap = mean_average_precision(labels.y[mask], scores[mask]).per_class if support.any() else np.full(k, np.nan)
        return "AP", ap, support
    support = np.bincount(labels.y[mask], minlength=k)
    return "accuracy", per_class_accuracy(labels.y[mask], scores[mask], k), support


@dataclass
class Evaluation:
    """The scored evaluation: result and per-class records, the λ chosen, the sweep behind it, the main metric."""

    records: list[dict]
    per_class: list[dict]
    lam: float
    sweep: dict[float, dict[str, float]]       # λ -> condition name -> tuning metric
    objective: dict[float, float]              # λ -> mean tuning metric over conditions
    main_metric: str
    excluded_classes: dict[str, int]           # condition name -> classes without positives in the test split


def choose_lam(sweep: dict[float, dict[str, float]]) -> tuple[float, dict[float, float]]:
    """The λ with the best tuning metric averaged over conditions; ties go to the smaller λ."""
    objective = {lam: float(np.mean(list(v.values()))) for lam, v in sweep.items()}
    best = max(objective.values())
    return min(lam for lam, v in objective.items() if v == best), objective


def _record(dataset: str, method: str, snr_db: float | None, metric: str, value: float, lam: float | None,
            split: str) -> dict:
    return {"dataset": dataset, "method": method, "snr_db": snr_db, "metric": metric, "value": float(value),
            "lam": lam, "split": split}


def evaluate(dataset: Dataset, conditions: Sequence[ConditionData], cache: DriftCache, side: SideInformation,
             is_tune: np.ndarray, groups: Sequence[Hashable], lam_grid: Sequence[float], tau: float) -> Evaluation:
    """Score every method in every condition from stored embeddings, choose λ on the tuning split, report on test.

    Test-split values are computed only after λ is fixed, and only for that λ.
    """
    labels = Labels.of(dataset)
    n = len(dataset.clips)
    scored = []
    for data in conditions:
        try:
            baselines, das = method_scores(data, n, cache, side, groups, lam_grid, tau)
        except ValueError as exc:
            raise EvaluationError(f"{data.condition.title}: {exc}") from None
        scored.append((data, baselines, das))
    sweep: dict[float, dict[str, float]] = {lam: {} for lam in lam_grid}
    for data, _, das in scored:
        tune = is_tune & data.store.ok
        for lam in lam_grid:
            try:
                sweep[lam][data.condition.name] = metric_values(labels, das[lam], tune)[labels.main_metric]
            except ValueError as exc:
                raise EvaluationError(f"tuning split, {data.condition.title}: {exc}") from None
    chosen, objective = choose_lam(sweep)

    records, per_class, excluded = [], [], {}
    for data, baselines, das in scored:
        cond, test = data.condition, ~is_tune & data.store.ok
        results = {**baselines, "das": das[chosen]}
        values = {}
        for method in METHODS:
            try:
                values[method] = metric_values(labels, results[method], test)
            except ValueError as exc:
                raise EvaluationError(f"test split, {cond.title}: {exc}") from None
            lam = chosen if method == "das" else None
            records += [_record(dataset.name, method, cond.snr_db, m, v, lam, "test")
                        for m, v in values[method].items()]
            metric, per, support = per_class_values(labels, results[method], test)
            per_class += [{"dataset": dataset.name, "method": method, "snr_db": cond.snr_db, "split": "test",
                           "class": name, "metric": metric, "value": None if np.isnan(v) else float(v),
                           "n_clips": int(k)} for name, v, k in zip(labels.names, per, support)]
        for base in BASELINES:
            records += [_record(dataset.name, f"das_minus_{base}", cond.snr_db, m, values["das"][m] - v, chosen,
                                "test") for m, v in values[base].items()]
        if labels.multi_label:
            excluded[cond.name] = int((labels.y[test].sum(axis=0) == 0).sum())
    for lam in lam_grid:
        for data, _, _ in scored:
            records.append(_record(dataset.name, "das", data.condition.snr_db, labels.main_metric,
                                   sweep[lam][data.condition.name], lam, "tune"))
    return Evaluation(records, per_class, chosen, sweep, objective, labels.main_metric, excluded)
