"""One-call helpers for notebooks: embed a file or an array and label it with a drift cache.

They run the same decoder, windowing, quantisation, encoder and scorer as
``das label``, so a clip gives here exactly the numbers it gets in an archive.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from das_core.audio.decode import AudioStream
from das_core.audio.windows import WINDOW_SAMPLES
from das_core.io import storage
from das_core.output.tables import mean_embedding
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import Labelled, label_files, label_windows, window_scores


def load_encoder(checkpoint: str, device: str = "cpu", precision: str = "fp32", **options):
    """A ``ClapEncoder`` for a LAION ``.pt`` path, ``s3://`` URI, published name or Hugging Face CLAP folder."""
    from das_core.clap.encoder import ClapEncoder

    return ClapEncoder.from_checkpoint(checkpoint, device=device, precision=precision, **options)


@dataclass(frozen=True)
class Embedded:
    """A recording's window embeddings (as ``das label`` stores them before any float16 rounding)."""

    starts_s: np.ndarray          # (n,) window start, seconds
    ends_s: np.ndarray            # (n,) end of the real audio in the window, seconds
    embeddings: np.ndarray        # (n, d) float32, unit norm

    @property
    def file_embedding(self) -> np.ndarray:
        """The normalised mean of the windows (``files/``'s ``embedding``)."""
        return mean_embedding(self.embeddings).astype(np.float32)


def _embed_stream(encoder, stream: AudioStream, batch: int = 16) -> Embedded:
    starts, ends, out, pending = [], [], [], []
    for w, pcm in stream.int16_windows():
        starts.append(w.start_s)
        ends.append(w.end_s)
        pending.append(np.frombuffer(pcm, dtype=np.int16).copy())
        if len(pending) == batch:
            out.append(encoder.embed_audio_int16(np.stack(pending)))
            pending = []
    if pending:
        out.append(encoder.embed_audio_int16(np.stack(pending)))
    emb = np.concatenate(out) if out else np.zeros((0, encoder.dim), dtype=np.float32)
    return Embedded(np.array(starts), np.array(ends), emb)


def embed_file(encoder, uri: str, batch: int = 16) -> Embedded:
    """Embed a local file or ``s3://`` object (any format das reads), window by window, ``batch`` at a time."""
    with storage.open_input(uri) as f, AudioStream(f, uri) as stream:
        return _embed_stream(encoder, stream, batch)


def embed_array(encoder, samples: np.ndarray, sample_rate: int) -> Embedded:
    """Embed audio already in memory: ``samples`` float in [-1, 1], ``(n,)`` or ``(n, channels)``.

    The array goes through the same decoder path as a file (a float WAV in memory), so the windows, the
    downmix and the resampling are exactly those of ``das label``.
    """
    import soundfile as sf

    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim not in (1, 2) or not len(samples):
        raise ValueError("samples must be a non-empty (n,) or (n, channels) array")
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="FLOAT")
    buf.seek(0)
    with AudioStream(buf, "<array>") as stream:
        return _embed_stream(encoder, stream)


@dataclass(frozen=True)
class Labels:
    """What ``label_embeddings`` returns: DAS and plain zero-shot labels of each window and of the whole
    recording (the file row is the max over its windows)."""

    windows: Labelled             # one row per window
    file: Labelled                # one row: max over the windows

    @property
    def window_labels(self) -> list[str]:
        """The top DAS class of each window, in window order."""
        return self.windows.label

    @property
    def file_label(self) -> str:
        """The recording's top DAS class."""
        return self.file.label[0]

    @property
    def file_top_k(self) -> list[tuple[str, float]]:
        """The recording's top-k (class, DAS score) pairs, best first."""
        return [(name, float(score)) for name, score in zip(self.file.top_k_labels[0], self.file.top_k_scores[0])]


def label_embeddings(embeddings: np.ndarray, cache: DriftCache, top_k: int = 5,
                     logit_scale: float | None = None) -> Labels:
    """DAS labels (and plain zero-shot, ``.zs_*``) of each window and of the whole recording."""
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or not len(emb):
        raise ValueError("embeddings must be a non-empty (n, d) array")
    scores = window_scores(emb, cache)
    windows = label_windows(None, cache, top_k, scores=scores, logit_scale=logit_scale)
    file = label_files(None, np.zeros(len(emb), dtype=np.int64), 1, cache, top_k, scores=scores,
                       logit_scale=logit_scale)
    return Labels(windows, file)


__all__ = ["WINDOW_SAMPLES", "Embedded", "Labels", "embed_array", "embed_file", "label_embeddings", "load_encoder"]
