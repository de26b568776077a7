"""The example of ``das demo`` / ``make demo``: a small archive, a checkpoint, and its drift cache.

The checkpoint is, in this order: ``$DAS_CHECKPOINT``; LAION's
``630k-audioset-best`` (downloaded into the local cache when the network
allows); otherwise a checkpoint of the same HTSAT-tiny audio architecture
with random weights. In the last case the manifest records
``weights: random`` and the summary says the labels are meaningless.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger("das")

LABELS = ["siren", "beep", "electric hum", "white noise", "dog bark", "engine idling"]
RATE = 22050


def _tone(freq, seconds, rate=RATE, amp=0.3):
    t = np.arange(int(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def generate_example(folder: str, seed: int = 0) -> list[str]:
    """A few short files of sirens, beeps, hums and noise, in several formats and rates."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    t = np.arange(int(12 * RATE)) / RATE
    siren = 0.3 * np.sin(2 * np.pi * np.cumsum(700 + 300 * np.sin(2 * np.pi * 0.5 * t)) / RATE)
    beeps = np.concatenate([np.r_[_tone(1000, 0.2), np.zeros(int(0.3 * RATE))] for _ in range(8)])
    hum = sum(_tone(50 * k, 6.0, amp=0.2 / k) for k in (1, 2, 3))
    noise = 0.1 * rng.standard_normal(int(3 * RATE))
    clips = {
        "siren.flac": (siren, RATE),
        "beeps.wav": (beeps, RATE),
        "mains-hum.ogg": (hum, RATE),
        "noise.wav": (noise, RATE),
        "siren-in-noise.flac": (siren[: 5 * RATE] + 0.05 * rng.standard_normal(5 * RATE), RATE),
    }
    paths = []
    for name, (x, rate) in clips.items():
        path = os.path.join(folder, name)
        sf.write(path, x.astype(np.float32), rate)
        paths.append(path)
    return paths


def resolve_demo_checkpoint() -> str:
    """The checkpoint the demo labels with: ``$DAS_CHECKPOINT`` if set, else LAION's 630k-audioset-best where it
    can be had, else a checkpoint with RANDOM weights (written once into das's cache folder, and announced
    loudly: its labels are meaningless)."""
    from das_core.clap import checkpoint as ckpt
    from das_core.clap.download import cache_dir
    from das_core.clap.random_weights import write_random_checkpoint
    from das_core.errors import CheckpointError

    if os.environ.get("DAS_CHECKPOINT"):
        log.info("using DAS_CHECKPOINT=%s", os.environ["DAS_CHECKPOINT"])
        return os.environ["DAS_CHECKPOINT"]
    try:
        path = ckpt.resolve("630k-audioset-best")
        log.info("using LAION's 630k-audioset-best (%s)", path)
        return path
    except CheckpointError as exc:
        log.debug("%s", exc)          # its advice names --checkpoint, an option the demo does not have
        log.warning("LAION's 630k-audioset-best cannot be downloaded here; set DAS_CHECKPOINT to a local copy "
                    "for real labels")
    path = os.path.join(cache_dir(), "checkpoints", "random", "HTSAT-tiny-transformer-random.pt")
    if not os.path.isfile(path):
        log.warning("writing a checkpoint with RANDOM weights (HTSAT-tiny audio tower, LAION's transformer text "
                    "tower so that no tokenizer download is needed) to %s", path)
        write_random_checkpoint(path)
    print("\n*** No pretrained CLAP weights: running with RANDOM weights. The pipeline is real, the labels are "
          "meaningless. Set DAS_CHECKPOINT=/path/to/630k-audioset-best.pt for real labels. ***\n", flush=True)
    return path


def prepare_demo(out: str) -> tuple[str, str, str]:
    """Write the example archive (with one broken file) and its drift cache under ``out``;
    (archive folder, cache URI, checkpoint)."""
    from das_core.clap.encoder import ClapEncoder
    from das_core.scoring.cache import DriftCache
    from das_core.scoring.prompts import DEFAULT_NOISE_PHRASES

    audio_dir = os.path.join(out, "archive")
    paths = generate_example(audio_dir)
    log.info("generated %d example files in %s", len(paths), audio_dir)
    with open(os.path.join(audio_dir, "broken.wav"), "wb") as f:
        f.write(b"RIFF....WAVE this file was cut off")          # a bad file is reported, never dropped
    checkpoint = resolve_demo_checkpoint()
    encoder = ClapEncoder.from_checkpoint(checkpoint)
    cache = DriftCache.build(encoder.embed_text, LABELS, DEFAULT_NOISE_PHRASES, encoder_id=encoder.encoder_id,
                             encoder_name=encoder.name)
    cache_uri = os.path.join(out, "cache.npz")
    cache.save(cache_uri)
    log.info("drift cache: %d classes x (1 + %d phrases) -> %s", len(LABELS), len(DEFAULT_NOISE_PHRASES), cache_uri)
    return audio_dir, cache_uri, checkpoint
