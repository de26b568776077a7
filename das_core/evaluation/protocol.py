"""The evaluation protocol: conditions, the λ grid, the tuning split, and the settings of one evaluation.

Every default of ``das evaluate`` is defined here once; the command line
reads them from this module. Settings are checked when an
``EvaluateConfig`` is made (``ConfigError``); what depends on the data
(folds present, empty splits) is checked by ``plan``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from das_core.clap.encoder import DEFAULT_BATCH_SIZE
from das_core.errors import ConfigError
from das_core.evaluation.datasets import (
    DATASETS,
    ESC50,
    FSD50K,
    URBANSOUND8K,
    Dataset,
    NoiseSet,
    read_dataset,
    read_noise,
)
from das_core.evaluation.subsets import hash_fraction, noise_subset, stratified_subset
from das_core.io import storage
from das_core.io.checks import refuse_overlap
from das_core.scoring.baselines import DEFAULT_TAU
from das_core.scoring.cache import DEFAULT_LAM
from das_core.scoring.prompts import CLEAN_TEMPLATE, DEFAULT_NOISE_PHRASES, NOISY_TEMPLATE, read_lines_from
from das_core.settings import setting

log = logging.getLogger("das.evaluation")

DEFAULT_SNRS = "clean,20,10,5,0,-5"
DATA, PROTOCOL, COMPUTE = "data", "protocol", "compute (passed to the label job)"
DEFAULT_LAM_GRID = "0,0.05,0.1,0.2,0.3,0.5,1.0"
DEFAULT_TUNE_SPLITS = {URBANSOUND8K: "folds:1-5", ESC50: "folds:1-2", FSD50K: "hash:50"}
DEFAULT_MAX_ERROR_FRACTION = 0.1
DEFAULT_SEED = 0
CACHE_LAM = DEFAULT_LAM               # the lam stored in the cache the label job uses; evaluation sweeps its own
SNR_RANGE_DB = (-60.0, 120.0)


@dataclass(frozen=True)
class Condition:
    """One condition of the evaluation: clean, or noise mixed in at ``snr_db``."""

    snr_db: float | None          # None: clean

    @property
    def name(self) -> str:
        """Folder-safe name: ``clean``, ``snr20``, ``snr-5``."""
        return "clean" if self.snr_db is None else f"snr{self.snr_db:g}"

    @property
    def title(self) -> str:
        """How reports name it: ``clean``, ``20 dB``."""
        return "clean" if self.snr_db is None else f"{self.snr_db:g} dB"


@dataclass(frozen=True)
class TuneSplit:
    """Which clips tune λ; every other clip is the test split."""

    spec: str
    folds: frozenset[int] = frozenset()   # "folds:1-5"
    percent: float | None = None          # "hash:50": clips whose id hashes below this share
    note: str = ""                        # why this split when das chose it (the dataset lacks default folds)

    def is_tune(self, clip) -> bool:
        """Whether ``clip`` belongs to the tuning split."""
        if self.percent is not None:
            return hash_fraction(clip.clip_id) < self.percent / 100.0
        return clip.fold in self.folds

    def describe(self, dataset: Dataset, tune: bool) -> str:
        """The tuning side (``tune``) or the test side of the split, in words, for ``dataset``."""
        if self.percent is not None:
            return (f"the {self.percent:g}% of clips whose id hashes lowest (sha1, {self.spec})" if tune
                    else f"the other {100 - self.percent:g}% of clips")
        folds = sorted(self.folds) if tune else [f for f in dataset.folds if f not in self.folds]
        return ("fold " if len(folds) == 1 else "folds ") + ranges(folds)


def ranges(values: Sequence[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``1-3, 5``."""
    out, run = [], []
    for v in sorted(values):
        if run and v != run[-1] + 1:
            out.append(run)
            run = []
        run.append(v)
    if run:
        out.append(run)
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in out) or "none"


def _items(text: str) -> list[str]:
    return [t for t in (t.strip() for t in text.split(",")) if t]


def _condition(item: str) -> Condition:
    if item.lower() == "clean":
        return Condition(None)
    try:
        snr = float(item.lower().removesuffix("db"))
    except ValueError:
        raise ConfigError(f"--snrs: {item!r} is neither 'clean' nor a number of dB") from None
    if not (math.isfinite(snr) and SNR_RANGE_DB[0] <= snr <= SNR_RANGE_DB[1]):
        raise ConfigError(f"--snrs: {item} dB is outside {SNR_RANGE_DB[0]:g}..{SNR_RANGE_DB[1]:g} dB")
    return Condition(snr)


def parse_conditions(text: str) -> tuple[Condition, ...]:
    """``"clean,20,0dB"`` -> conditions, in the order given; a condition listed twice is refused."""
    conditions: list[Condition] = []
    for cond in map(_condition, _items(text)):
        if cond in conditions:
            raise ConfigError(f"--snrs: {cond.title} is listed twice")
        conditions.append(cond)
    if not conditions:
        raise ConfigError("--snrs lists no condition")
    return tuple(conditions)


def _lam(item: str | float) -> float:
    try:
        lam = float(item)
    except ValueError:
        raise ConfigError(f"--lam-grid: {item!r} is not a number") from None
    if not (math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"--lam-grid: lam must be finite and >= 0, got {item}")
    return lam


def parse_lam_grid(text: str) -> tuple[float, ...]:
    """``"0,0.1,0.05"`` -> ``(0.0, 0.05, 0.1)``: sorted, without repeats."""
    grid = {_lam(item) for item in _items(text)}
    if not grid:
        raise ConfigError("--lam-grid lists no value")
    return tuple(sorted(grid))


def _fold_set(spec: str, rest: str) -> frozenset[int]:
    folds: set[int] = set()
    try:
        for part in _items(rest):
            lo, _, hi = part.partition("-")
            a, b = int(lo), int(hi or lo)
            if b < a:
                raise ValueError
            folds.update(range(a, b + 1))
    except ValueError:
        raise ConfigError(f"--tune-split {spec!r}: expected folds:A-B or folds:A,B,C (fold numbers)") from None
    if not folds:
        raise ConfigError(f"--tune-split {spec!r} names no fold")
    return frozenset(folds)


def parse_tune_split(spec: str) -> TuneSplit:
    """``folds:A-B`` / ``folds:A,B,..`` (tune on those folds) or ``hash:P`` (the P% of ids hashing lowest)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "folds":
        return TuneSplit(spec, folds=_fold_set(spec, rest))
    if kind == "hash":
        try:
            percent = float(rest)
        except ValueError:
            raise ConfigError(f"--tune-split {spec!r}: expected hash:P with P a percentage, e.g. hash:50") from None
        if not 0 < percent < 100:
            raise ConfigError(f"--tune-split {spec!r}: the percentage must be strictly between 0 and 100")
        return TuneSplit(spec, percent=percent)
    raise ConfigError(f"--tune-split {spec!r}: expected folds:A-B (or folds:A,B,...) or hash:P")


@dataclass(frozen=True)
class EvaluateConfig:
    """The settings of one evaluation, checked when made (``ConfigError``)."""

    dataset: str = setting(group=DATA, choices=DATASETS, help="which published layout --root holds")
    root: str = setting(group=DATA, metavar="URI", help="dataset root (local folder or s3:// prefix): UrbanSound8K/ "
                        "(metadata/, audio/), FSD50K/ (FSD50K.ground_truth/, FSD50K.eval_audio/) or ESC-50/ (meta/, "
                        "audio/)")
    noise_root: str = setting(group=DATA, metavar="URI", help="TAU Urban Acoustic Scenes 2019 root (tab-separated "
                              "meta.csv, audio/), or any folder of noise recordings (scene unknown)")
    checkpoint: str = setting(group=DATA, metavar="CKPT", help="CLAP checkpoint: LAION .pt (path, s3:// URI or "
                              "published name such as 630k-audioset-best) or Hugging Face ClapModel folder (path, "
                              "s3:// prefix or hub id)")
    out: str = setting(group=DATA, metavar="DIR", help="output folder or s3:// prefix; holds the encoded stores, so "
                       "reruns are cheap")
    conditions: tuple[Condition, ...] = parse_conditions(DEFAULT_SNRS)      # --snrs (jobs.evaluate)
    seed: int = setting(DEFAULT_SEED, group=PROTOCOL, metavar="N",
                        help="seed of the noise choice per (clip, window, SNR)")
    lam_grid: tuple[float, ...] = parse_lam_grid(DEFAULT_LAM_GRID)         # --lam-grid (jobs.evaluate)
    tune_split: str | None = setting(None, group=PROTOCOL, metavar="SPEC", help="clips lam is chosen on, "
                                     "'folds:A-B' or 'hash:P' (see below; default per dataset)")
    noise_phrases: str | None = setting(None, group=PROTOCOL, metavar="FILE", help="DAS noise phrases, one per line "
                                        f"(default: {len(DEFAULT_NOISE_PHRASES)} urban-scene phrases, see README)")
    tau: float = setting(DEFAULT_TAU, group=PROTOCOL, metavar="X", help="weight of the Acevedo background profile")
    limit: int | None = setting(None, group=DATA, metavar="N", help="quick run on N clips, chosen deterministically "
                                "and spread over classes and folds")
    noise_limit: int | None = setting(None, group=DATA, metavar="N", help="use N noise recordings, chosen "
                                      "deterministically and spread over scenes (default: all)")
    num_gpus: float = setting(0.0, group=COMPUTE, metavar="N", help="GPUs in all; 0 encodes on CPU")
    actors: int | None = setting(None, group=COMPUTE, metavar="N",
                                 help="encoder actors (default: one per GPU, or 1 on CPU)")
    batch_size: int = setting(DEFAULT_BATCH_SIZE, group=COMPUTE, metavar="N", help="windows per encoder call")
    tokenizer_dir: str | None = setting(None, group=COMPUTE, metavar="DIR",
                                        help="roberta-base tokenizer files (RoBERTa checkpoints)")
    max_error_fraction: float = setting(DEFAULT_MAX_ERROR_FRACTION, group=PROTOCOL, metavar="X", help="fail if more "
                                        "than this share of clips (or noise recordings) cannot be decoded")

    def __post_init__(self):
        for name in ("root", "noise_root", "out"):              # local paths made absolute once, here
            object.__setattr__(self, name, storage.absolute(getattr(self, name)))
        object.__setattr__(self, "checkpoint", storage.absolute_if_local(self.checkpoint))
        for name in ("noise_phrases", "tokenizer_dir"):
            if getattr(self, name):
                object.__setattr__(self, name, storage.absolute(getattr(self, name)))
        refuse_overlap(self.out, "--out", self.root, "--root")
        refuse_overlap(self.out, "--out", self.noise_root, "--noise-root")
        if self.dataset not in DATASETS:
            raise ConfigError(f"--dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        if not self.conditions or len(set(self.conditions)) != len(self.conditions):
            raise ConfigError("--snrs must list at least one condition, each once")
        object.__setattr__(self, "lam_grid", tuple(sorted({_lam(lam) for lam in self.lam_grid})))
        if not self.lam_grid:
            raise ConfigError("--lam-grid lists no value")
        if self.tune_split is not None:
            parse_tune_split(self.tune_split)
        if not math.isfinite(self.tau):
            raise ConfigError(f"--tau must be a finite number, got {self.tau}")
        for name in ("limit", "noise_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.batch_size < 1 or self.num_gpus < 0 or (self.actors is not None and self.actors < 1):
            raise ConfigError("--batch-size and --actors must be at least 1, --num-gpus at least 0")
        if not 0.0 <= self.max_error_fraction <= 1.0:
            raise ConfigError("--max-error-fraction must be between 0 and 1")


def choose_tune_split(config: EvaluateConfig, dataset: Dataset) -> TuneSplit:
    """``--tune-split``, else the dataset's default, else (some folds absent) the lower half of those present."""
    split = parse_tune_split(config.tune_split or DEFAULT_TUNE_SPLITS[config.dataset])
    if not split.folds:
        return split
    present = dataset.folds
    if not present:
        raise ConfigError(f"--tune-split {split.spec}: {config.dataset} has no folds; use hash:P "
                          "(e.g. --tune-split hash:50)")
    unknown = sorted(split.folds - set(present))
    if config.tune_split and unknown:
        raise ConfigError(f"--tune-split {split.spec}: fold(s) {ranges(unknown)} do not exist in {config.dataset} "
                          f"(folds: {ranges(present)}); choose among the folds present in {config.root}")
    if config.tune_split or (not unknown and set(present) - split.folds):
        return split                       # as asked; an empty side is refused by plan()
    if len(present) < 2:
        raise ConfigError(f"{config.root} holds only fold {ranges(present)} of {config.dataset} (evaluation needs at "
                          "least 2 folds: one to choose lam on, one to test on); add another fold of the dataset")
    tune = present[:len(present) // 2]
    chosen = TuneSplit(f"folds:{','.join(map(str, tune))}", folds=frozenset(tune),
                       note=f"chosen from the folds present ({ranges(present)}): the default {split.spec} "
                            + (f"needs absent fold(s) {ranges(unknown)}" if unknown else "leaves no fold to test on"))
    log.info("tuning split: folds %s (test: folds %s), %s", ranges(tune), ranges(present[len(tune):]), chosen.note)
    return chosen


@dataclass
class Plan:
    """What an evaluation works on, read and checked before any model is loaded."""

    config: EvaluateConfig
    dataset: Dataset
    noise: NoiseSet
    split: TuneSplit
    is_tune: np.ndarray           # (n,) bool
    groups: list[Hashable]        # TGAP cross-fitting group of each clip: its fold, or the clip itself
    phrases: tuple[str, ...]      # DAS noise phrases
    checkpoint_id: str
    checkpoint_info: dict
    n_available: int              # clips in the dataset before --limit


def _limited(config: EvaluateConfig, dataset: Dataset, split: TuneSplit) -> Dataset:
    """``--limit`` clips, spread over folds, or over the tuning and test halves where there are no folds."""
    strata = [clip.fold for clip in dataset.clips] if dataset.folds else [split.is_tune(clip) for clip in dataset.clips]
    return stratified_subset(dataset, config.limit, strata)


def _check_split(config: EvaluateConfig, dataset: Dataset, split: TuneSplit, is_tune: np.ndarray,
                 groups: list[Hashable]) -> None:
    """Refuse a split with an empty side, and clips all in one TGAP group."""
    limit = f", --limit {config.limit}" if config.limit else ""
    if is_tune.all() or not is_tune.any():
        which = "test" if is_tune.all() else "tuning"
        raise ConfigError(f"the {which} split is empty ({len(dataset.clips)} clips, --tune-split {split.spec}{limit})"
                          ": choose another split or a larger --limit")
    if len(set(groups)) < 2:
        raise ConfigError("TGAP needs clips outside each clip's fold, but all clips are in one fold"
                          + (f" (--limit {config.limit})" if config.limit else ""))


def plan(config: EvaluateConfig) -> Plan:
    """Read and check everything that can be refused before any model is loaded."""
    from das_core.clap import checkpoint as ckpt
    from das_core.scoring.cache import validate_build_inputs

    dataset = read_dataset(config.dataset, config.root)
    noise = read_noise(config.noise_root)
    split = choose_tune_split(config, dataset)
    n_available = len(dataset.clips)
    if config.limit:
        dataset = _limited(config, dataset, split)
    if config.noise_limit:
        noise = noise_subset(noise, config.noise_limit)
    is_tune = np.array([split.is_tune(clip) for clip in dataset.clips], dtype=bool)
    groups: list[Hashable] = ([clip.fold for clip in dataset.clips] if dataset.folds
                              else [clip.clip_id for clip in dataset.clips])
    _check_split(config, dataset, split, is_tune, groups)
    phrases = (tuple(read_lines_from(config.noise_phrases, "noise phrases")) if config.noise_phrases
               else DEFAULT_NOISE_PHRASES)
    try:
        validate_build_inputs(dataset.label_names, phrases, CLEAN_TEMPLATE, NOISY_TEMPLATE, CACHE_LAM)
    except ValueError as exc:
        raise ConfigError(f"{config.dataset} labels / noise phrases: {exc}") from None
    local = ckpt.resolve(config.checkpoint)
    return Plan(config, dataset, noise, split, is_tune, groups, phrases, ckpt.fingerprint(local), ckpt.describe(local),
                n_available)
