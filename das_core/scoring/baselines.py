"""Acevedo et al.'s prototype + background-profile baselines (METHOD.md §3b).

    s(c) = z . P_c - tau * b_c                    (tau = 0.5 by default)

Prototypes ``P``:
  * ZS   - the text anchor ``E_t("This is a sound of {label}")``;
  * TGAP - text-guided audio prototypes: the mean audio embedding of the
    ``n`` pool clips (unlabelled; other folds or the rest of the eval set)
    that score highest against the class's text anchor, re-normalised.
Background profile ``b``:
  * text  - mean over three prompts naming the background scene of
    ``E_t(prompt) . P_c``;
  * audio - mean over background-noise recordings of ``E_a(n) . P_c``.

The four variants are {ZS, TGAP} x {text, audio}. Unlike DAS they need the
scene name, noise recordings, or a pool of test-domain audio.
"""

from __future__ import annotations

import numpy as np

DEFAULT_TAU = 0.5
TGAP_POOL_SIZE = 35

BACKGROUND_TEMPLATES = (
    "This is a sound of {bg}",
    "{Bg} sounds in the background",
    "This is a sound of {bg} in the background",
)


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def background_prompts(scene: str) -> list[str]:
    """The three text prompts that describe a background scene (e.g. ``street traffic``)."""
    bg = scene.replace("_", " ").strip()
    cap = bg[:1].upper() + bg[1:]
    return [t.format(bg=bg, Bg=cap) for t in BACKGROUND_TEMPLATES]


def tgap_prototypes(text_anchors: np.ndarray, pool: np.ndarray, n: int = TGAP_POOL_SIZE) -> np.ndarray:
    """Per class, the re-normalised mean of the ``n`` pool embeddings closest to its text anchor.

    No labels are used: the pool is ranked by cosine with the anchor alone.
    """
    text_anchors = np.atleast_2d(text_anchors).astype(np.float64)
    pool = np.atleast_2d(pool).astype(np.float64)
    if len(pool) == 0:
        raise ValueError("TGAP needs a non-empty pool of audio embeddings")
    n = min(n, len(pool))
    sims = text_anchors @ pool.T                                   # (K, m)
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :n]      # (K, n)
    return _unit(pool[nearest].mean(axis=1)).astype(np.float32)


def background_profile(prototypes: np.ndarray, background: np.ndarray) -> np.ndarray:
    """``b_c = mean_j (background_j . P_c)``; (K,) for background (m, d)."""
    background = np.atleast_2d(background).astype(np.float64)
    if len(background) == 0:
        raise ValueError("a background profile needs at least one background embedding")
    return (background @ np.asarray(prototypes, dtype=np.float64).T).mean(axis=0).astype(np.float32)


def acevedo_scores(z: np.ndarray, prototypes: np.ndarray, profile: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """``z . P_c - tau * b_c``; ``profile`` is (K,) for all rows or (n, K) per row."""
    z = np.atleast_2d(z).astype(np.float64)
    raw = z @ np.asarray(prototypes, dtype=np.float64).T
    return (raw - tau * np.asarray(profile, dtype=np.float64)).astype(np.float32)
