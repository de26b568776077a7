"""das_core: the library behind `das` (no Ray import anywhere in it).

Noise-robust zero-shot audio labelling with LAION-CLAP and Drift-Augmented
Scoring (DAS). See README.md and ../shared/METHOD.md for the method.

The public API is importable from here: ``_PUBLIC`` below lists every name
with the module that defines it, grouped by layer. Names load lazily, so
``import das_core`` stays cheap (no torch) until one of them is used::

    from das_core import DriftCache, embed_file, label_embeddings, load_encoder
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    # the error tree: every refusal (exit 2) and failure (exit 1) of the library
    "Refused": "das_core.errors",
    "RunFailed": "das_core.errors",
    "CacheError": "das_core.errors",
    "CacheMismatchError": "das_core.errors",
    "AudioDecodeError": "das_core.errors",
    # audio: decoding and noise
    "AudioStream": "das_core.audio.decode",
    "mix_at_snr": "das_core.audio.noise",
    # clap: the model
    "ClapEncoder": "das_core.clap.encoder",
    # scoring: the drift cache and the metrics
    "DriftCache": "das_core.scoring.cache",
    "accuracy": "das_core.scoring.metrics",
    "mean_average_precision": "das_core.scoring.metrics",
    "BuildConfig": "das_core.scoring.build",
    # output: a run's folder and its _manifest.json
    "OutputStore": "das_core.output.store",
    "RunManifest": "das_core.output.manifest",
    "NoiseSource": "das_core.output.manifest",
    # the commands' settings
    "LabelConfig": "das_core.label.config",
    "RescoreConfig": "das_core.rescore.config",
    "SearchConfig": "das_core.search.config",
    "EvaluateConfig": "das_core.evaluation",
    # one-call helpers for notebooks
    "load_encoder": "das_core.api",
    "embed_file": "das_core.api",
    "embed_array": "das_core.api",
    "label_embeddings": "das_core.api",
    "Embedded": "das_core.api",
    "Labels": "das_core.api",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """A public name, imported from its module on first use (``_PUBLIC``)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'das_core' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
