"""Scores, top-k and file-level pooling: the one scorer that label, rescore and evaluate share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from das_core.cache import DriftCache


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` best classes per row, best first; ties go to the lower index."""
    scores = np.atleast_2d(scores)
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def pool_max(window_scores: np.ndarray) -> np.ndarray:
    """File-level score per class: the maximum over its windows (METHOD.md §6, chosen here)."""
    return np.max(np.atleast_2d(window_scores), axis=0)


@dataclass(frozen=True)
class Labelled:
    """Labels for n rows (windows or files), DAS and plain zero-shot side by side."""

    label: list[str]
    score: np.ndarray                # (n,) float32, DAS score of ``label``
    top_k_labels: list[list[str]]
    top_k_scores: np.ndarray         # (n, k) float32
    zs_label: list[str]
    zs_score: np.ndarray             # (n,) float32, plain zero-shot score of ``zs_label``


def _labelled(das: np.ndarray, plain: np.ndarray, labels: tuple[str, ...], k: int) -> Labelled:
    idx, vals = top_k(das, k)
    zs = np.argmax(plain, axis=1)
    return Labelled(
        label=[labels[i] for i in idx[:, 0]],
        score=vals[:, 0].astype(np.float32),
        top_k_labels=[[labels[i] for i in row] for row in idx],
        top_k_scores=vals.astype(np.float32),
        zs_label=[labels[i] for i in zs],
        zs_score=plain[np.arange(len(zs)), zs].astype(np.float32),
    )


def label_windows(embeddings: np.ndarray, cache: DriftCache, k: int) -> Labelled:
    """Label each window from its embedding."""
    return _labelled(cache.scores(embeddings), cache.clean_scores(embeddings), cache.labels, k)


def label_files(embeddings: np.ndarray, file_index: np.ndarray, n_files: int, cache: DriftCache,
                k: int) -> Labelled:
    """Label files by max-pooling their windows' scores; ``file_index[i]`` is window i's file (0..n_files-1).

    Every file must have at least one window.
    """
    file_index = np.asarray(file_index)
    counts = np.bincount(file_index, minlength=n_files)
    if len(counts) != n_files or (counts == 0).any():
        raise ValueError("every file needs at least one window to be labelled, and file indices must be < n_files")
    order = np.argsort(file_index, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    emb = np.asarray(embeddings)[order]
    pooled_das = np.maximum.reduceat(cache.scores(emb), starts, axis=0)
    pooled_plain = np.maximum.reduceat(cache.clean_scores(emb), starts, axis=0)
    return _labelled(pooled_das, pooled_plain, cache.labels, k)
