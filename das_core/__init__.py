"""das_core: the library behind `das` (no Ray import anywhere in it).

Noise-robust zero-shot audio labelling with LAION-CLAP and Drift-Augmented
Scoring (DAS). See README.md and ../shared/METHOD.md for the method.

The public API is importable from here; names load lazily, so ``import
das_core`` stays cheap (no torch) until one of them is used::

    from das_core import DriftCache, embed_file, label_embeddings, load_encoder
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "DriftCache": "das_core.scoring.cache",
    "CacheError": "das_core.scoring.cache",
    "CacheMismatchError": "das_core.scoring.cache",
    "ClapEncoder": "das_core.clap.encoder",
    "load_encoder": "das_core.api",
    "embed_file": "das_core.api",
    "embed_array": "das_core.api",
    "label_embeddings": "das_core.api",
    "Embedded": "das_core.api",
    "Labels": "das_core.api",
    "mix_at_snr": "das_core.audio.noise",
    "accuracy": "das_core.scoring.metrics",
    "mean_average_precision": "das_core.scoring.metrics",
    "OutputStore": "das_core.output.store",
    "AudioStream": "das_core.audio.decode",
    "AudioDecodeError": "das_core.audio.decode",
    "LabelConfig": "das_core.label.config",
    "RescoreConfig": "das_core.rescore.run",
    "SearchConfig": "das_core.search.run",
    "EvaluateConfig": "das_core.evaluation",
    "BuildConfig": "das_core.scoring.build",
    "RunManifest": "das_core.output.manifest",
    "NoiseSource": "das_core.output.manifest",
    "Refused": "das_core.errors",
    "RunFailed": "das_core.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'das_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
