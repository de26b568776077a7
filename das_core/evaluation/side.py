"""Side information of the baselines: what the Acevedo variants use besides the clip.

Background profiles follow the noise actually mixed into each window. Text:
the three prompts naming that recording's TAU scene ("background noise" for
a recording of unknown scene). Audio: the mean embedding of the noise
recordings of that scene (of all recordings when the scene is unknown).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from das_core.errors import RunFailed
from das_core.evaluation.datasets import NoiseSet
from das_core.evaluation.prompts import (
    UNKNOWN_SCENE,
    TextEmbeddings,
    anchor_prompts,
    laion_prompts,
    scene_keys,
    scene_text,
)
from das_core.evaluation.stores import StoreData
from das_core.scoring.baselines import background_prompts

log = logging.getLogger("das.evaluation")


@dataclass
class SideInformation:
    """What the Acevedo baselines use besides the clip: anchors, scene prompts, noise recordings."""

    laion: np.ndarray                          # (K, d) LAION-template prompts
    anchors: np.ndarray                        # (K, d) Acevedo text anchors
    # scene key -> (1, d) mean background embedding. Acevedo's profile is a mean of dot products,
    # b_c = mean_j (bg_j . P_c) = (mean_j bg_j) . P_c, so the mean vector gives the same b at a fraction of the cost.
    text_background: dict[str, np.ndarray]     # mean of the three background prompts naming the scene
    audio_background: dict[str, np.ndarray]    # mean embedding of the scene's noise recordings


def recording_embeddings(noise_store: StoreData, n: int, dim: int) -> np.ndarray:
    """(n, dim) float64: each recording's mean window embedding (TAU recordings are one 10 s window); 0 if none."""
    recordings = np.zeros((n, dim), dtype=np.float64)
    if len(noise_store.owner):
        np.add.at(recordings, noise_store.owner, noise_store.embeddings)
        counts = np.bincount(noise_store.owner, minlength=n)
        recordings[counts > 0] /= counts[counts > 0, None]
    return recordings


def audio_backgrounds(noise: NoiseSet, noise_store: StoreData, dim: int) -> dict[str, np.ndarray]:
    """Scene key -> (1, dim) mean embedding of the decodable recordings of that scene."""
    recordings = recording_embeddings(noise_store, len(noise.uris), dim)
    ok = noise_store.ok
    if not ok.any():
        raise RunFailed("no noise recording could be decoded: the audio background profiles cannot be built")
    scenes = np.array([s if s is not None else UNKNOWN_SCENE for s in noise.scenes], dtype=object)
    audio_bg = {}
    for key in scene_keys(noise):
        chosen = ok & (scenes == key) if key != UNKNOWN_SCENE else ok
        if not chosen.any():
            log.warning("no decodable noise recording of scene %r: its audio profile uses all recordings", key)
            chosen = ok
        audio_bg[key] = recordings[chosen].mean(axis=0, keepdims=True).astype(np.float32)
    return audio_bg


def side_information(text: TextEmbeddings, labels: Sequence[str], noise: NoiseSet,
                     noise_store: StoreData) -> SideInformation:
    """Anchors, LAION prompts and per-scene backgrounds (text prompts; encoded noise recordings)."""
    text_bg = {key: text.matrix(background_prompts(scene_text(key))).mean(axis=0, keepdims=True)
               for key in scene_keys(noise)}
    return SideInformation(text.matrix(laion_prompts(labels)), text.matrix(anchor_prompts(labels)), text_bg,
                           audio_backgrounds(noise, noise_store, text.cache.dim))
