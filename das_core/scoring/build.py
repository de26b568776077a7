"""``das build-cache`` without the command line: its settings, its checks, the build and its summary."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from das_core.errors import ConfigError
from das_core.io import storage
from das_core.io.checks import check_output_file
from das_core.io.s3 import is_s3
from das_core.scoring.cache import DEFAULT_LAM
from das_core.scoring.prompts import CLEAN_TEMPLATE, DEFAULT_NOISE_PHRASES, NOISY_TEMPLATE, read_lines_from
from das_core.settings import setting

log = logging.getLogger("das")


@dataclass(frozen=True)
class BuildConfig:
    """The settings of ``das build-cache`` (each field one option); local paths are made absolute on construction."""

    labels: str = setting(metavar="FILE", help="class labels, one per line (local path or s3://); dataset spellings "
                          "such as dog_bark are turned into prompt text ('dog bark')")
    checkpoint: str = setting(metavar="CKPT", help="CLAP checkpoint: LAION .pt (local path, s3:// URI or a published "
                              "name such as 630k-audioset-best) or Hugging Face ClapModel folder (local, s3:// prefix "
                              "or hub id such as laion/clap-htsat-unfused)")
    out: str = setting(metavar="URI", help="where to write the cache (.npz; local or s3://)")
    noise_phrases: str | None = setting(None, metavar="FILE", help="noise phrases, one per line (default: 8 "
                                        "urban-scene phrases, see README)")
    lam: float = setting(DEFAULT_LAM, help="weight of the drift bonus (chosen here; the paper only calls it small)")
    clean_template: str = setting(CLEAN_TEMPLATE, help="the clean prompt of each class")
    clean_templates: str | None = setting(None, metavar="FILE", help="a prompt ensemble for the clean prototype: "
                                          "templates with {label}, one per line; C_c is the renormalised mean of "
                                          "their unit embeddings (instead of --clean-template)")
    noisy_template: str = setting(NOISY_TEMPLATE, help="a class's prompt with a noise phrase")
    tokenizer_dir: str | None = setting(None, metavar="DIR", help="roberta-base tokenizer files, for LAION "
                                        "checkpoints with a RoBERTa text tower when offline (Hugging Face folders "
                                        "carry their own tokenizer)")
    device: str = setting("cpu", help="cpu or cuda[:N] (text encoding is cheap)")

    def __post_init__(self) -> None:
        # local paths made absolute once, here; an s3:// --out keeps a trailing slash, refused as a folder later
        put = object.__setattr__
        put(self, "labels", storage.absolute(self.labels))
        put(self, "out", self.out if is_s3(self.out) else storage.absolute(self.out))
        put(self, "checkpoint", storage.absolute_if_local(self.checkpoint))
        for name in ("noise_phrases", "clean_templates", "tokenizer_dir"):
            if getattr(self, name):
                put(self, name, storage.absolute(getattr(self, name)))


@dataclass(frozen=True)
class BuildInputs:
    """What ``read_inputs`` read and checked: class labels, noise phrases, and the clean prompt ensemble (or None)."""

    labels: list[str]
    phrases: list[str]
    templates: list[str] | None


def check_device(device: str) -> None:
    """Refuse (``ConfigError``) a ``cuda`` device where torch sees no GPU; torch is imported only for cuda."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu "
                          "(the default; text encoding is cheap)")


def read_inputs(config: BuildConfig) -> BuildInputs:
    """Read and check everything the build needs: labels, noise phrases, templates, the output and the device.

    Raises ``ConfigError`` (and the storage errors of reading the files) here, before any model is loaded.
    """
    from das_core.scoring.cache import validate_build_inputs, validate_clean_templates

    check_output_file(config.out)
    labels = read_lines_from(config.labels, "labels")
    phrases = (read_lines_from(config.noise_phrases, "noise phrases") if config.noise_phrases
               else list(DEFAULT_NOISE_PHRASES))
    if not labels:
        raise ConfigError(f"labels file {config.labels} has no labels (only blank lines or # comments); "
                          "write one label per line")
    templates = None
    if config.clean_templates:
        if config.clean_template != CLEAN_TEMPLATE:
            raise ConfigError("give either --clean-template or --clean-templates, not both")
        templates = read_lines_from(config.clean_templates, "clean templates")
    try:
        if templates is not None:
            validate_clean_templates(templates)
        validate_build_inputs(labels, phrases, templates[0] if templates else config.clean_template,
                              config.noisy_template, config.lam)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    check_device(config.device)
    return BuildInputs(labels, phrases, templates)


def build_cache(config: BuildConfig) -> str:
    """Build and save the drift cache ``config`` describes; returns the summary to print.

    Raises ``ConfigError`` (via ``read_inputs``) before any model is loaded, and the encoder's refusals
    (``CheckpointError``, ``TokenizerError``) while loading it.
    """
    from das_core.clap.encoder import ClapEncoder
    from das_core.scoring.cache import DriftCache

    given = read_inputs(config)
    start = time.monotonic()
    log.info("loading checkpoint %s", config.checkpoint)
    encoder = ClapEncoder.from_checkpoint(config.checkpoint, device=config.device, tokenizer_dir=config.tokenizer_dir)
    cache = DriftCache.build(encoder.embed_text, given.labels, given.phrases, clean_template=config.clean_template,
                             noisy_template=config.noisy_template, lam=config.lam, encoder_id=encoder.encoder_id,
                             encoder_name=encoder.name, clean_templates=given.templates)
    cache.save(config.out)
    zero = cache.zero_drift_labels
    templates = len(cache.clean_templates) or 1
    return (f"drift cache written to {config.out}\n"
            f"  classes:           {len(cache.labels)}\n"
            f"  noise phrases:     {len(cache.noise_phrases)}\n"
            f"  clean templates:   {templates}\n"
            f"  text encodings:    {cache.n_text_encodings} (= {len(cache.labels)} x "
            f"({templates} + {len(cache.noise_phrases)}))\n"
            f"  lam:               {cache.lam}\n"
            f"  checkpoint:        {encoder.name} ({encoder.arch.describe()}) {encoder.encoder_id}\n"
            f"  cache fingerprint: {cache.fingerprint}\n"
            f"  without drift:     {', '.join(zero) if zero else 'none'}\n"
            f"  time:              {time.monotonic() - start:.1f} s")
