"""Accuracy, per-class average precision and macro mAP."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def accuracy(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Share of rows whose highest-scoring class is the true one (ties: lowest index wins)."""
    y_true = np.asarray(y_true)
    scores = np.atleast_2d(scores)
    if len(y_true) != len(scores):
        raise ValueError(f"{len(y_true)} labels for {len(scores)} score rows")
    if len(y_true) == 0:
        raise ValueError("accuracy of zero examples is undefined")
    return float(np.mean(np.argmax(scores, axis=1) == y_true))


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """Non-interpolated AP: sum over score thresholds of (recall step) x (precision at it).

    Tied scores form one threshold (the same definition as scikit-learn's
    ``average_precision_score``). NaN when there is no positive.
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="stable")
    s, p = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(p)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    recall_step = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_step * precision))


@dataclass(frozen=True)
class MapResult:
    """Mean average precision with its parts; ``float(result)`` is the macro mean."""

    value: float                 # macro mean over classes that have at least one positive
    per_class: np.ndarray        # (K,) AP, NaN for excluded classes
    n_excluded: int              # classes without positives, left out of the mean

    def __float__(self) -> float:
        return self.value


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> MapResult:
    """Macro mAP over classes for a multi-label ``y_true`` (n, K) of 0/1 and ``scores`` (n, K)."""
    y_true = np.asarray(y_true, dtype=bool)
    scores = np.asarray(scores)
    if y_true.shape != scores.shape:
        raise ValueError(f"labels {y_true.shape} and scores {scores.shape} differ in shape")
    per_class = np.array([average_precision(y_true[:, c], scores[:, c]) for c in range(y_true.shape[1])])
    kept = ~np.isnan(per_class)
    if not kept.any():
        raise ValueError("no class has a positive example: mAP is undefined")
    return MapResult(float(per_class[kept].mean()), per_class, int((~kept).sum()))


def per_class_accuracy(y_true: np.ndarray, scores: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall of each class (share of its examples predicted as it); NaN where a class has no example."""
    y_true = np.asarray(y_true)
    pred = np.argmax(np.atleast_2d(scores), axis=1)
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        mask = y_true == c
        if mask.any():
            out[c] = float(np.mean(pred[mask] == c))
    return out
