"""Text for an evaluation: the DAS drift cache and every baseline prompt, encoded once and saved under ``OUT/text/``.

Both are stored as drift caches (``DriftCache.save`` / ``load``: no pickle,
digests checked). The baseline prompts form a cache without drift: its
labels are the prompts themselves and its clean prototypes their
embeddings. A rerun that needs no new prompt loads no model.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from das_core.errors import CacheError, Refused
from das_core.evaluation.datasets import NoiseSet
from das_core.evaluation.protocol import CACHE_LAM, Plan
from das_core.io import storage
from das_core.scoring.baselines import background_prompts
from das_core.scoring.cache import DriftCache
from das_core.scoring.prompts import ACEVEDO_TEMPLATE, CLEAN_TEMPLATE, LAION_TEMPLATE, NOISY_TEMPLATE, label_text

log = logging.getLogger("das.evaluation")

TEXT_DIR = "text"
PROMPT_BANK = "prompts.npz"
CACHE_PREFIX = "das-cache-"
UNKNOWN_SCENE = "<unknown scene>"     # background key of noise whose scene is not known
UNKNOWN_SCENE_TEXT = "background noise"


@dataclass
class TextEmbeddings:
    """The evaluation's text side: the DAS drift cache (and where it is saved) and every other prompt's embedding."""

    cache: DriftCache                  # lam = CACHE_LAM; evaluation uses with_lam
    cache_uri: str
    prompts: dict[str, np.ndarray]     # prompt -> unit embedding
    encoded_now: int                   # text encodings done by this run

    def matrix(self, prompts: Sequence[str]) -> np.ndarray:
        """The embeddings of ``prompts``, one row each, ``(len(prompts), d)`` float32."""
        return np.stack([self.prompts[prompt] for prompt in prompts]).astype(np.float32)


def laion_prompts(labels: Sequence[str]) -> list[str]:
    """LAION's zero-shot prompt of each label."""
    return [LAION_TEMPLATE.format(label=label_text(lb)) for lb in labels]


def anchor_prompts(labels: Sequence[str]) -> list[str]:
    """Acevedo et al.'s anchor prompt of each label."""
    return [ACEVEDO_TEMPLATE.format(label=label_text(lb)) for lb in labels]


def scene_text(key: str) -> str:
    """The text that names a background scene (``UNKNOWN_SCENE``: "background noise")."""
    return UNKNOWN_SCENE_TEXT if key == UNKNOWN_SCENE else key


def scene_keys(noise: NoiseSet) -> list[str]:
    """The background keys of the noise set: its scenes, sorted, ``UNKNOWN_SCENE`` for recordings of none."""
    return sorted({s if s is not None else UNKNOWN_SCENE for s in noise.scenes})


def wanted_prompts(labels: Sequence[str], noise: NoiseSet) -> list[str]:
    """Every prompt the baselines use, in a fixed order, without repeats."""
    wanted = laion_prompts(labels) + anchor_prompts(labels)
    for key in scene_keys(noise):
        wanted += background_prompts(scene_text(key))
    return list(dict.fromkeys(wanted))


# ----------------------------------------------------------- saved prompts
def prompt_bank(prompts: dict[str, np.ndarray], encoder_id: str) -> DriftCache:
    """Prompt embeddings as a drift cache without drift: labels = prompts, clean prototypes = their embeddings."""
    names = tuple(sorted(prompts))
    clean = np.stack([prompts[n] for n in names]).astype(np.float32)
    return DriftCache(names, names, (), "{label}", NOISY_TEMPLATE, 0.0, encoder_id, clean, np.zeros_like(clean),
                      np.zeros(len(names), np.float32))


def load_prompt_bank(uri: str, encoder_id: str) -> dict[str, np.ndarray]:
    """The saved prompt embeddings of ``encoder_id``; empty when there are none (or another model's)."""
    if not storage.exists(uri):
        return {}
    try:
        bank = DriftCache.load(uri)
    except CacheError as exc:
        log.warning("ignoring unreadable prompt embeddings %s (%s): they will be encoded again", uri, exc)
        return {}
    if bank.encoder_id != encoder_id:
        log.info("prompt embeddings in %s belong to another checkpoint: encoding again", uri)
        return {}
    return dict(zip(bank.labels, bank.clean))


def _cache_matches(cache: DriftCache, labels: Sequence[str], phrases: Sequence[str], encoder_id: str) -> bool:
    return (cache.labels == tuple(labels) and cache.noise_phrases == tuple(phrases)
            and cache.clean_template == CLEAN_TEMPLATE and cache.noisy_template == NOISY_TEMPLATE
            and cache.lam == CACHE_LAM and cache.encoder_id == encoder_id)


def cache_uri_for(out: str, fingerprint: str) -> str:
    """Where the drift cache of ``fingerprint`` is saved under ``OUT/text/``."""
    return storage.join(out, TEXT_DIR, f"{CACHE_PREFIX}{fingerprint.split(':')[-1][:16]}.npz")


def saved_caches(out: str) -> list[tuple[str, DriftCache]]:
    """The drift caches saved under ``OUT/text/`` (unreadable ones are skipped with a warning)."""
    folder = storage.join(out, TEXT_DIR)
    if not storage.exists(folder):
        return []
    found = []
    for uri in storage.list_files(folder, (".npz",)):
        if posixpath.basename(uri).startswith(CACHE_PREFIX):
            try:
                found.append((uri, DriftCache.load(uri)))
            except CacheError as exc:
                log.warning("ignoring %s: %s", uri, exc)
    return found


# ---------------------------------------------------------------- encoding
def _encode(plan: Plan, cache: DriftCache | None, missing: list[str]) -> tuple[DriftCache, dict[str, np.ndarray]]:
    """One batched text encoding: the drift cache's prompts (when ``cache`` is None) and the ``missing`` ones."""
    from das_core.clap.encoder import ClapEncoder

    config, labels = plan.config, plan.dataset.label_names
    log.info("encoding text with %s: %s%d other prompt(s)", config.checkpoint,
             f"drift cache {len(labels)} x (1 + {len(plan.phrases)}) + " if cache is None else "", len(missing))
    encoder = ClapEncoder.from_checkpoint(config.checkpoint, tokenizer_dir=config.tokenizer_dir)
    if encoder.encoder_id != plan.checkpoint_id:
        raise Refused(f"checkpoint {config.checkpoint} changed while das evaluate was running")
    extra: dict[str, np.ndarray] = {}

    def encode_text(cache_prompts: list[str]) -> np.ndarray:
        """The cache's prompts encoded in one call with the ``missing`` ones, which are kept aside."""
        emb = encoder.embed_text(list(cache_prompts) + missing)
        extra.update(zip(missing, emb[len(cache_prompts):]))
        return emb[:len(cache_prompts)]

    if cache is None:
        cache = DriftCache.build(encode_text, labels, plan.phrases, lam=CACHE_LAM, encoder_id=plan.checkpoint_id,
                                 encoder_name=encoder.name)
        cache.save(cache_uri_for(config.out, cache.fingerprint))
    else:
        encode_text([])
    return cache, extra


def prepare_text(plan: Plan) -> TextEmbeddings:
    """The DAS cache and every other prompt embedding; encodes (one batched call) only what is not saved."""
    out, labels = plan.config.out, plan.dataset.label_names
    cache_uri, cache = next(((uri, saved) for uri, saved in saved_caches(out)
                             if _cache_matches(saved, labels, plan.phrases, plan.checkpoint_id)), (None, None))
    wanted = wanted_prompts(labels, plan.noise)
    bank_uri = storage.join(out, TEXT_DIR, PROMPT_BANK)
    bank = load_prompt_bank(bank_uri, plan.checkpoint_id)
    missing = [t for t in wanted if t not in bank]
    if cache is not None and not missing:
        log.info("text embeddings: all %d prompts and the drift cache are saved in %s; no model loaded",
                 len(wanted) + cache.n_text_encodings, storage.join(out, TEXT_DIR))
        return TextEmbeddings(cache, cache_uri, bank, 0)
    built = cache is None
    cache, extra = _encode(plan, cache, missing)
    bank.update(extra)
    prompt_bank(bank, plan.checkpoint_id).save(bank_uri)
    encoded = len(missing) + (cache.n_text_encodings if built else 0)
    return TextEmbeddings(cache, cache_uri if not built else cache_uri_for(out, cache.fingerprint), bank, encoded)
