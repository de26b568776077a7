"""``das evaluate``: DAS against plain zero-shot and Acevedo et al.'s baselines across SNRs (METHOD.md §4).

What it does, in order:

1. Reads the dataset in its published layout and the noise recordings
   (``das_core.datasets``), applies ``--limit`` / ``--noise-limit``.
2. Text, once: the DAS drift cache for the dataset's labels, and in the same
   batched call every other prompt (LAION's template, Acevedo's anchors, the
   background-scene prompts), saved under ``OUT/text/``. A rerun that needs no
   new prompt loads no model.
3. Audio, once per (clip, condition): each condition is one run of the label
   job (``jobs.label.run``) over a manifest of the clips, into
   ``OUT/store/<condition>/``; the noise recordings are encoded clean into
   ``OUT/store/noise/``. A store whose manifest says ``complete`` and that holds
   every clip is skipped, so a rerun or a new λ grid encodes nothing; an
   interrupted one is resumed.
4. Scoring, from the stored window embeddings only: every window is scored,
   clip scores are the maximum over the clip's windows. Methods: plain
   zero-shot with the DAS clean template and with LAION's template, DAS over
   the λ grid, Acevedo ZS-text / ZS-audio / TGAP-text / TGAP-audio.
5. λ is chosen on the tuning split alone, by the tuning metric averaged over
   all conditions (one λ for every SNR); only that λ is reported on the test
   split. Ties go to the smaller λ.
6. Writes ``results.json``, ``results.csv``, ``per_class.csv``, ``report.md``,
   ``snr_curves.png`` and ``evaluation.json`` under ``OUT``.

Choices made here (documented in the report as well):

* Background profiles follow the noise that was actually mixed into each
  window (the label job records it per window in ``noise_source``). Text: the
  three prompts naming that recording's TAU scene; a recording of unknown
  scene (a plain noise folder) is described as "background noise". Audio: the
  mean embedding of the noise recordings of that scene (of all recordings
  when the scene is unknown). In the clean condition, and for a window whose
  mix was skipped (zero-power clip), there is no background: ``b_c = 0``, so
  the Acevedo variants reduce to their prototypes.
* TGAP pool: the windows of all decodable clips of the same condition outside
  the clip's fold (UrbanSound8K, ESC-50) or outside the clip itself (FSD50K:
  "the rest of the eval set"); labels are never used.
* A clip that cannot be decoded is left out of every method's metric in that
  condition, counted, and listed in the report; more than
  ``--max-error-fraction`` of them fails the run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import math
import posixpath
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from das_core import __version__, storage
from das_core.baselines import (
    DEFAULT_TAU,
    background_prompts,
)
from das_core.cache import DriftCache
from das_core.datasets import (
    DATASETS,
    ESC50,
    FSD50K,
    URBANSOUND8K,
    Dataset,
    LayoutError,
    NoiseSet,
    hash_fraction,
    noise_subset,
    read_dataset,
    read_noise,
    stratified_subset,
)
from das_core.evaluation import (
    BASELINES,
    METHODS,
    UNKNOWN_SCENE,
    Condition,
    ConditionData,
    Evaluation,
    EvaluationError,
    SideInformation,
    StoreData,
    background_keys,
    evaluate,
    read_store,
)
from jobs.common import (
    JobFailed,
    UsageError,
    add_common_options,
    check_output_folder,
    job_main,
    log,
    read_lines_from,
)

DEFAULT_SNRS = "clean,20,10,5,0,-5"
DEFAULT_LAM_GRID = "0,0.05,0.1,0.2,0.3,0.5,1.0"
DEFAULT_TUNE_SPLITS = {URBANSOUND8K: "folds:1-5", ESC50: "folds:1-2", FSD50K: "hash:50"}
DATASET_TITLES = {URBANSOUND8K: "UrbanSound8K", ESC50: "ESC-50", FSD50K: "FSD50K eval"}
CACHE_LAM = 0.1                       # the lam stored in the cache the label job uses; evaluation sweeps its own
UNKNOWN_SCENE_TEXT = "background noise"

METHOD_DESCRIPTIONS = {
    "zs_das_template": "plain zero-shot, DAS clean template ('{clean}'); DAS with lam = 0",
    "zs_laion_template": "plain zero-shot, LAION's template ('This is a sound of {{label}}.')",
    "das": "Drift-Augmented Scoring, lam chosen on the tuning split",
    "acevedo_zs_text": "Acevedo: text-anchor prototypes, text background profile (scene name)",
    "acevedo_zs_audio": "Acevedo: text-anchor prototypes, audio background profile (noise recordings)",
    "acevedo_tgap_text": "Acevedo: text-guided audio prototypes (unlabelled pool), text background profile",
    "acevedo_tgap_audio": "Acevedo: text-guided audio prototypes (unlabelled pool), audio background profile",
}
NEEDS = {
    "acevedo_zs_text": "the name of the background scene of every test clip (here: the TAU scene label of the "
                       "noise recording mixed into each window)",
    "acevedo_zs_audio": "recordings of the background noise (here: the encoded noise recordings of the scene "
                        "mixed into each window)",
    "acevedo_tgap_text": "a pool of unlabelled audio from the test domain (here: the other folds / the rest of the "
                         "eval set, in the same noise condition) and the background scene's name",
    "acevedo_tgap_audio": "a pool of unlabelled audio from the test domain and recordings of the background noise",
}
STORE_DIR = "store"
TEXT_DIR = "text"
MANIFEST_DIR = "manifests"
NOISE_STORE = "noise"
METRIC_TITLES = {"accuracy": "Accuracy", "accuracy_fold_mean": "Accuracy, mean over folds", "mAP": "Macro mAP"}
RESULT_FIELDS = ("dataset", "method", "snr_db", "metric", "value", "lam", "split")
PER_CLASS_FIELDS = ("dataset", "method", "snr_db", "split", "class", "metric", "value", "n_clips")


# ------------------------------------------------------------------- options
@dataclass(frozen=True)
class TuneSplit:
    """Which clips tune λ; every other clip is the test split."""

    spec: str
    folds: frozenset[int] = frozenset()   # "folds:1-5"
    percent: float | None = None          # "hash:50": clips whose id hashes below this share
    note: str = ""                        # why this split when das chose it (the dataset lacks default folds)

    def is_tune(self, clip) -> bool:
        if self.percent is not None:
            return hash_fraction(clip.clip_id) < self.percent / 100.0
        return clip.fold in self.folds

    def describe(self, dataset: Dataset, tune: bool) -> str:
        if self.percent is not None:
            return (f"the {self.percent:g}% of clips whose id hashes lowest (sha1, {self.spec})" if tune
                    else f"the other {100 - self.percent:g}% of clips")
        folds = sorted(self.folds) if tune else [f for f in dataset.folds if f not in self.folds]
        return ("fold " if len(folds) == 1 else "folds ") + _ranges(folds)


def _ranges(values: Sequence[int]) -> str:
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


def parse_conditions(text: str) -> tuple[Condition, ...]:
    conditions = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item.lower() == "clean":
            cond = Condition(None)
        else:
            try:
                snr = float(item.lower().removesuffix("db"))
            except ValueError:
                raise UsageError(f"--snrs: {item!r} is neither 'clean' nor a number of dB") from None
            if not (math.isfinite(snr) and -60 <= snr <= 120):
                raise UsageError(f"--snrs: {item} dB is outside -60..120 dB")
            cond = Condition(snr)
        if cond in conditions:
            raise UsageError(f"--snrs: {cond.title} is listed twice")
        conditions.append(cond)
    if not conditions:
        raise UsageError("--snrs lists no condition")
    return tuple(conditions)


def parse_lam_grid(text: str) -> tuple[float, ...]:
    grid = set()
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            lam = float(item)
        except ValueError:
            raise UsageError(f"--lam-grid: {item!r} is not a number") from None
        if not (math.isfinite(lam) and lam >= 0):
            raise UsageError(f"--lam-grid: lam must be finite and >= 0, got {item}")
        grid.add(lam)
    if not grid:
        raise UsageError("--lam-grid lists no value")
    return tuple(sorted(grid))


def parse_tune_split(spec: str) -> TuneSplit:
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "folds":
        folds: set[int] = set()
        try:
            for part in (p.strip() for p in rest.split(",") if p.strip()):
                lo, _, hi = part.partition("-")
                a, b = int(lo), int(hi or lo)
                if b < a:
                    raise ValueError
                folds.update(range(a, b + 1))
        except ValueError:
            raise UsageError(f"--tune-split {spec!r}: expected folds:A-B or folds:A,B,C (fold numbers)") from None
        if not folds:
            raise UsageError(f"--tune-split {spec!r} names no fold")
        return TuneSplit(spec, folds=frozenset(folds))
    if kind == "hash":
        try:
            percent = float(rest)
        except ValueError:
            raise UsageError(f"--tune-split {spec!r}: expected hash:P with P a percentage, e.g. hash:50") from None
        if not 0 < percent < 100:
            raise UsageError(f"--tune-split {spec!r}: the percentage must be strictly between 0 and 100")
        return TuneSplit(spec, percent=percent)
    raise UsageError(f"--tune-split {spec!r}: expected folds:A-B (or folds:A,B,...) or hash:P")


@dataclass
class EvaluateConfig:
    dataset: str
    root: str
    noise_root: str
    checkpoint: str
    out: str
    conditions: tuple[Condition, ...] = parse_conditions(DEFAULT_SNRS)
    seed: int = 0
    lam_grid: tuple[float, ...] = parse_lam_grid(DEFAULT_LAM_GRID)
    tune_split: str | None = None          # None: the dataset's default (DEFAULT_TUNE_SPLITS)
    noise_phrases: str | None = None       # file; None: das_core.prompts.DEFAULT_NOISE_PHRASES
    tau: float = DEFAULT_TAU
    limit: int | None = None
    noise_limit: int | None = None
    num_gpus: float = 0.0
    actors: int | None = None
    batch_size: int = 16
    tokenizer_dir: str | None = None
    max_error_fraction: float = 0.1


def build_parser(prog: str = "das evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Compare Drift-Augmented Scoring with plain zero-shot CLAP and the four Acevedo et al. variants on a\n"
        "public dataset, clean and with noise mixed in at several SNRs (METHOD.md section 4).\n\n"
        "Every (clip, condition) is encoded once, by the label job on Ray, into OUT/store/; a rerun, a new\n"
        "lam grid or another --tau encodes nothing. lam is chosen on the tuning split only (its metric\n"
        "averaged over all conditions) and that single value is reported on the test split.\n\n"
        "Writes OUT/results.json, results.csv, per_class.csv, report.md, snr_curves.png, evaluation.json."),
        epilog=(
            "tuning splits (--tune-split): 'folds:A-B' or 'folds:A,B,..' tunes on those folds and tests on the\n"
            "others; 'hash:P' tunes on the P% of clips whose id (e.g. FSD50K's fname) hashes lowest (sha1),\n"
            "tests on the rest. Defaults: urbansound8k folds:1-5, esc50 folds:1-2, fsd50k hash:50.\n\n"
            "example:\n"
            "  das evaluate --dataset urbansound8k --root s3://data/UrbanSound8K \\\n"
            "      --noise-root s3://data/TAU-urban-acoustic-scenes-2019-development \\\n"
            "      --checkpoint 630k-audioset-best --out s3://results/us8k --num-gpus 8"))
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, choices=DATASETS, help="which published layout --root holds")
    d.add_argument("--root", required=True, metavar="URI",
                   help="dataset root (local folder or s3:// prefix): UrbanSound8K/ (metadata/, audio/), "
                        "FSD50K/ (FSD50K.ground_truth/, FSD50K.eval_audio/) or ESC-50/ (meta/, audio/)")
    d.add_argument("--noise-root", required=True, metavar="URI",
                   help="TAU Urban Acoustic Scenes 2019 root (tab-separated meta.csv, audio/), or any folder of "
                        "noise recordings (scene unknown)")
    d.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="CLAP checkpoint: LAION .pt (path, s3:// URI or published name such as "
                        "630k-audioset-best) or Hugging Face ClapModel folder (path, s3:// prefix or hub id)")
    d.add_argument("--out", required=True, metavar="DIR",
                   help="output folder or s3:// prefix; holds the encoded stores, so reruns are cheap")
    d.add_argument("--limit", type=int, metavar="N",
                   help="quick run on N clips, chosen deterministically and spread over classes and folds")
    d.add_argument("--noise-limit", type=int, metavar="N",
                   help="use N noise recordings, chosen deterministically and spread over scenes (default: all)")
    e = p.add_argument_group("protocol")
    e.add_argument("--snrs", default=DEFAULT_SNRS, metavar="LIST",
                   help=f"conditions, 'clean' or dB values (default {DEFAULT_SNRS}); write --snrs=-5,0 when the "
                        f"list starts with a negative number")
    e.add_argument("--seed", type=int, default=0, metavar="N",
                   help="seed of the noise choice per (clip, window, SNR) (default 0)")
    e.add_argument("--lam-grid", default=DEFAULT_LAM_GRID, metavar="LIST",
                   help=f"DAS lam values to sweep (default {DEFAULT_LAM_GRID})")
    e.add_argument("--tune-split", metavar="SPEC",
                   help="clips lam is chosen on, 'folds:A-B' or 'hash:P' (see below; default per dataset)")
    e.add_argument("--noise-phrases", metavar="FILE",
                   help="DAS noise phrases, one per line (default: 8 urban-scene phrases, see README)")
    e.add_argument("--tau", type=float, default=DEFAULT_TAU, metavar="X",
                   help=f"weight of the Acevedo background profile (default {DEFAULT_TAU})")
    e.add_argument("--max-error-fraction", type=float, default=0.1, metavar="X",
                   help="fail if more than this share of clips (or noise recordings) cannot be decoded (default 0.1)")
    comp = p.add_argument_group("compute (passed to the label job)")
    comp.add_argument("--num-gpus", type=float, default=0.0, metavar="N",
                      help="GPUs in all; 0 encodes on CPU (default 0)")
    comp.add_argument("--actors", type=int, metavar="N", help="encoder actors (default: one per GPU, or 1 on CPU)")
    comp.add_argument("--batch-size", type=int, default=16, metavar="N", help="windows per encoder call (default 16)")
    comp.add_argument("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files (RoBERTa checkpoints)")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    return EvaluateConfig(
        dataset=args.dataset, root=args.root, noise_root=args.noise_root, checkpoint=args.checkpoint, out=args.out,
        conditions=parse_conditions(args.snrs), seed=args.seed, lam_grid=parse_lam_grid(args.lam_grid),
        tune_split=args.tune_split, noise_phrases=args.noise_phrases, tau=args.tau, limit=args.limit,
        noise_limit=args.noise_limit, num_gpus=args.num_gpus, actors=args.actors, batch_size=args.batch_size,
        tokenizer_dir=args.tokenizer_dir, max_error_fraction=args.max_error_fraction)


def _check_config(c: EvaluateConfig) -> None:
    check_output_folder(c.out)
    if not math.isfinite(c.tau):
        raise UsageError(f"--tau must be a finite number, got {c.tau}")
    for name in ("limit", "noise_limit"):
        value = getattr(c, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if c.batch_size < 1 or c.num_gpus < 0 or (c.actors is not None and c.actors < 1):
        raise UsageError("--batch-size and --actors must be at least 1, --num-gpus at least 0")
    if not 0.0 <= c.max_error_fraction <= 1.0:
        raise UsageError("--max-error-fraction must be between 0 and 1")


# ---------------------------------------------------------------- planning
@dataclass
class Plan:
    config: EvaluateConfig
    dataset: Dataset
    noise: NoiseSet
    split: TuneSplit
    is_tune: np.ndarray           # (n,) bool
    groups: list[Hashable]        # TGAP cross-fitting group of each clip: its fold, or the clip itself
    phrases: tuple[str, ...]
    checkpoint_id: str
    checkpoint_info: dict
    n_available: int              # clips in the dataset before --limit


def plan(c: EvaluateConfig) -> Plan:
    """Read and check everything that can be refused before any model is loaded."""
    from das_core import checkpoint as ckpt
    from das_core.cache import validate_build_inputs
    from das_core.prompts import CLEAN_TEMPLATE, DEFAULT_NOISE_PHRASES, NOISY_TEMPLATE

    _check_config(c)
    try:
        dataset = read_dataset(c.dataset, c.root)
        noise = read_noise(c.noise_root)
    except LayoutError as exc:
        raise UsageError(str(exc)) from None
    split = choose_tune_split(c, dataset)
    n_available = len(dataset.clips)
    if c.limit:
        # spread the subset over folds, or over the tuning and test halves where there are no folds
        strata = ([clip.fold for clip in dataset.clips] if dataset.folds
                  else [split.is_tune(clip) for clip in dataset.clips])
        dataset = stratified_subset(dataset, c.limit, strata)
    if c.noise_limit:
        noise = noise_subset(noise, c.noise_limit)
    is_tune = np.array([split.is_tune(clip) for clip in dataset.clips], dtype=bool)
    if is_tune.all() or not is_tune.any():
        which = "test" if is_tune.all() else "tuning"
        raise UsageError(f"the {which} split is empty ({len(dataset.clips)} clips, --tune-split {split.spec}"
                         + (f", --limit {c.limit}" if c.limit else "") + "): choose another split or a larger --limit")
    groups: list[Hashable] = ([clip.fold for clip in dataset.clips] if dataset.folds
                              else [clip.clip_id for clip in dataset.clips])
    if len(set(groups)) < 2:
        raise UsageError("TGAP needs clips outside each clip's fold, but all clips are in one fold"
                         + (f" (--limit {c.limit})" if c.limit else ""))
    phrases = (tuple(read_lines_from(c.noise_phrases, "noise phrases")) if c.noise_phrases
               else DEFAULT_NOISE_PHRASES)
    try:
        validate_build_inputs(dataset.label_names, phrases, CLEAN_TEMPLATE, NOISY_TEMPLATE, CACHE_LAM)
    except ValueError as exc:
        raise UsageError(f"{c.dataset} labels / noise phrases: {exc}") from None
    local = ckpt.resolve(c.checkpoint)
    return Plan(c, dataset, noise, split, is_tune, groups, tuple(phrases), ckpt.fingerprint(local),
                ckpt.describe(local), n_available)


def choose_tune_split(c: EvaluateConfig, dataset: Dataset) -> TuneSplit:
    """``--tune-split``, else the dataset's default, else (some folds absent) the lower half of those present."""
    split = parse_tune_split(c.tune_split or DEFAULT_TUNE_SPLITS[c.dataset])
    if not split.folds:
        return split
    present = dataset.folds
    if not present:
        raise UsageError(f"--tune-split {split.spec}: {c.dataset} has no folds; use hash:P "
                         "(e.g. --tune-split hash:50)")
    unknown = sorted(split.folds - set(present))
    if c.tune_split and unknown:
        raise UsageError(f"--tune-split {split.spec}: fold(s) {_ranges(unknown)} do not exist in {c.dataset} "
                         f"(folds: {_ranges(present)}); choose among the folds present in {c.root}")
    if c.tune_split or (not unknown and set(present) - split.folds):
        return split                       # as asked; an empty side is refused with the --limit check below
    if len(present) < 2:
        raise UsageError(f"{c.root} holds only fold {_ranges(present)} of {c.dataset} (evaluation needs at least 2 "
                         "folds: one to choose lam on, one to test on); add another fold of the dataset")
    tune = present[:len(present) // 2]
    chosen = TuneSplit(f"folds:{','.join(map(str, tune))}", folds=frozenset(tune),
                       note=f"chosen from the folds present ({_ranges(present)}): the default {split.spec} "
                            + (f"needs absent fold(s) {_ranges(unknown)}" if unknown else "leaves no fold to test on"))
    log.info("tuning split: folds %s (test: folds %s), %s", _ranges(tune), _ranges(present[len(tune):]),
             chosen.note)
    return chosen


# -------------------------------------------------------------------- text
@dataclass
class TextEmbeddings:
    cache: DriftCache                  # lam = CACHE_LAM; evaluation uses with_lam
    cache_uri: str
    prompts: dict[str, np.ndarray]     # prompt -> unit embedding
    encoded_now: int                   # text encodings done by this run

    def matrix(self, prompts: Sequence[str]) -> np.ndarray:
        return np.stack([self.prompts[p] for p in prompts]).astype(np.float32)


def laion_prompts(labels: Sequence[str]) -> list[str]:
    from das_core.prompts import LAION_TEMPLATE, label_text

    return [LAION_TEMPLATE.format(label=label_text(lb)) for lb in labels]


def anchor_prompts(labels: Sequence[str]) -> list[str]:
    from das_core.prompts import ACEVEDO_TEMPLATE, label_text

    return [ACEVEDO_TEMPLATE.format(label=label_text(lb)) for lb in labels]


def scene_text(key: str) -> str:
    return UNKNOWN_SCENE_TEXT if key == UNKNOWN_SCENE else key


def scene_keys(noise: NoiseSet) -> list[str]:
    return sorted({s if s is not None else UNKNOWN_SCENE for s in noise.scenes})


PROMPT_FORMAT = "das-prompt-embeddings"


def _load_prompt_store(uri: str, encoder_id: str) -> dict[str, np.ndarray]:
    if not storage.exists(uri):
        return {}
    try:
        with np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False) as npz:
            meta = json.loads(npz["metadata"].tobytes().decode())
            emb = np.asarray(npz["embeddings"], dtype=np.float32)
    except (ValueError, OSError, KeyError, UnicodeDecodeError) as exc:
        log.warning("ignoring unreadable prompt embeddings %s (%s): they will be encoded again", uri, exc)
        return {}
    if meta.get("format") != PROMPT_FORMAT or meta.get("encoder_id") != encoder_id \
            or len(meta.get("prompts", [])) != len(emb):
        log.info("prompt embeddings in %s belong to another checkpoint or format: encoding again", uri)
        return {}
    return dict(zip(meta["prompts"], emb))


def _save_prompt_store(uri: str, encoder_id: str, prompts: dict[str, np.ndarray]) -> None:
    names = sorted(prompts)
    meta = {"format": PROMPT_FORMAT, "encoder_id": encoder_id, "prompts": names, "das_version": __version__}
    buf = io.BytesIO()
    np.savez(buf, embeddings=np.stack([prompts[n] for n in names]).astype(np.float32),
             metadata=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    storage.write_bytes_atomic(uri, buf.getvalue())


def _cache_matches(cache: DriftCache, labels: Sequence[str], phrases: Sequence[str], encoder_id: str) -> bool:
    from das_core.prompts import CLEAN_TEMPLATE, NOISY_TEMPLATE

    return (cache.labels == tuple(labels) and cache.noise_phrases == tuple(phrases)
            and cache.clean_template == CLEAN_TEMPLATE and cache.noisy_template == NOISY_TEMPLATE
            and cache.lam == CACHE_LAM and cache.encoder_id == encoder_id)


def cache_uri_for(out: str, fingerprint: str) -> str:
    return storage.join(out, TEXT_DIR, f"das-cache-{fingerprint.split(':')[-1][:16]}.npz")


def _saved_caches(out: str) -> list[tuple[str, DriftCache]]:
    from das_core.cache import CacheError

    folder = storage.join(out, TEXT_DIR)
    if not storage.exists(folder):
        return []
    found = []
    for uri in storage.list_files(folder, (".npz",)):
        if posixpath.basename(uri).startswith("das-cache-"):
            try:
                found.append((uri, DriftCache.load(uri)))
            except CacheError as exc:
                log.warning("ignoring %s: %s", uri, exc)
    return found


def prepare_text(p: Plan) -> TextEmbeddings:
    """The DAS cache and every other prompt embedding; encodes (one batched call) only what is not saved."""
    c, labels = p.config, p.dataset.label_names
    cache, cache_uri = None, None
    for uri, saved in _saved_caches(c.out):
        if _cache_matches(saved, labels, p.phrases, p.checkpoint_id):
            cache, cache_uri = saved, uri
            break
    wanted = laion_prompts(labels) + anchor_prompts(labels)
    for key in scene_keys(p.noise):
        wanted += background_prompts(scene_text(key))
    store_uri = storage.join(c.out, TEXT_DIR, "prompts.npz")
    bank = _load_prompt_store(store_uri, p.checkpoint_id)
    missing = [t for t in dict.fromkeys(wanted) if t not in bank]
    encoded = 0
    if cache is None or missing:
        from das_core.encoder import ClapEncoder

        log.info("encoding text with %s: %s%d other prompt(s)", c.checkpoint,
                 f"drift cache {len(labels)} x (1 + {len(p.phrases)}) + " if cache is None else "", len(missing))
        encoder = ClapEncoder.from_checkpoint(c.checkpoint, tokenizer_dir=c.tokenizer_dir)
        if encoder.encoder_id != p.checkpoint_id:
            raise UsageError(f"checkpoint {c.checkpoint} changed while das evaluate was running")
        extra: dict[str, np.ndarray] = {}

        def encode_text(cache_prompts: list[str]) -> np.ndarray:
            # one batched call for the cache's prompts and every other prompt still missing
            emb = encoder.embed_text(list(cache_prompts) + missing)
            extra.update(zip(missing, emb[len(cache_prompts):]))
            return emb[:len(cache_prompts)]

        if cache is None:
            cache = DriftCache.build(encode_text, labels, p.phrases, lam=CACHE_LAM, encoder_id=p.checkpoint_id,
                                     encoder_name=encoder.name)
            cache_uri = cache_uri_for(c.out, cache.fingerprint)
            cache.save(cache_uri)
            encoded += cache.n_text_encodings
        else:
            encode_text([])
        encoded += len(missing)
        bank.update(extra)
        _save_prompt_store(store_uri, p.checkpoint_id, bank)
    else:
        log.info("text embeddings: all %d prompts and the drift cache are saved in %s; no model loaded",
                 len(set(wanted)) + cache.n_text_encodings, storage.join(c.out, TEXT_DIR))
    return TextEmbeddings(cache, cache_uri, bank, encoded)


# ------------------------------------------------------------------- audio
def _write_manifest(uri: str, paths: Sequence[str], ids: Sequence[str]) -> None:
    """A label-job manifest (``path``, ``id``), rewritten only when its content changes."""
    import pyarrow as pa

    from das_core.results import table_to_bytes

    table = pa.table({"path": pa.array(list(paths), pa.string()), "id": pa.array(list(ids), pa.string())})
    data = table_to_bytes(table)
    if storage.exists(uri) and storage.read_bytes(uri) == data:
        return
    storage.write_bytes_atomic(uri, data)


def noise_manifest_uri(out: str, noise: NoiseSet) -> str:
    # named by content: a different noise set can never be mistaken for the one a store was mixed with
    digest = hashlib.sha1("\n".join(noise.uris).encode()).hexdigest()[:12]
    return storage.join(out, MANIFEST_DIR, f"noise-{digest}.parquet")


@dataclass
class StoreJob:
    name: str                     # condition name or "noise"
    uri: str
    input: str                    # manifest URI
    ids: list[str]
    snr_db: float | None
    noise: str | None
    seed: int


def store_jobs(p: Plan) -> list[StoreJob]:
    c = p.config
    clips_uri = storage.join(c.out, MANIFEST_DIR, "clips.parquet")
    noise_uri = noise_manifest_uri(c.out, p.noise)
    _write_manifest(clips_uri, [clip.uri for clip in p.dataset.clips], [clip.clip_id for clip in p.dataset.clips])
    _write_manifest(noise_uri, p.noise.uris, p.noise.uris)
    ids = [clip.clip_id for clip in p.dataset.clips]
    jobs = [StoreJob(NOISE_STORE, storage.join(c.out, STORE_DIR, NOISE_STORE), noise_uri, list(p.noise.uris),
                     None, None, 0)]
    for cond in c.conditions:
        # the seed only matters where noise is mixed; clean stores keep seed 0 so that --seed never invalidates them
        jobs.append(StoreJob(cond.name, storage.join(c.out, STORE_DIR, cond.name), clips_uri, ids, cond.snr_db,
                             noise_uri if cond.snr_db is not None else None,
                             c.seed if cond.snr_db is not None else 0))
    return jobs


def _store_state(job: StoreJob, checkpoint_id: str) -> tuple[str, dict | None]:
    """``new``, ``complete`` or ``partial`` (and the store's manifest); refuses a store made with other settings."""
    from das_core.results import OutputStore

    store = OutputStore(job.uri)
    manifest = store.read_manifest()
    if manifest is None:
        if store.has_output():
            raise UsageError(f"{job.uri} holds results but no _manifest.json: it was not written by das; "
                             f"delete it or use another --out")
        return "new", None
    settings = dict(manifest.get("settings", {}))
    # Manifests are compared by name (the noise manifest's is derived from its content), so that an OUT folder
    # copied elsewhere (e.g. from a cluster's bucket to a laptop) is still recognised; clips are checked by id below.
    for key in ("input", "noise"):
        if settings.get(key):
            settings[key] = posixpath.basename(settings[key])
    expected = {"input": posixpath.basename(job.input), "checkpoint_fingerprint": checkpoint_id,
                "snr_db": job.snr_db, "noise": posixpath.basename(job.noise) if job.noise else None,
                "seed": job.seed}
    changed = [f"{k}: stored {settings.get(k)!r}, now {v!r}" for k, v in expected.items() if settings.get(k) != v]
    if changed:
        raise UsageError(f"{job.uri} was encoded with other settings ({'; '.join(changed)}). Its embeddings do not "
                         f"belong to this evaluation: delete that folder or use another --out")
    done = store.read_files(columns=["file_id"]).column("file_id").to_pylist()
    if manifest.get("status") == "complete" and set(job.ids) <= set(done):
        return "complete", manifest
    return "partial", manifest


def encode_stores(p: Plan, text: TextEmbeddings) -> dict[str, int]:
    """Run the label job for every store that is not complete; returns windows encoded per store."""
    from jobs.label import LabelConfig
    from jobs.label import run as label_run

    c = p.config
    jobs = store_jobs(p)
    states = {job.name: _store_state(job, p.checkpoint_id) for job in jobs}    # refuse before any encoding
    saved = {cache.fingerprint: uri for uri, cache in _saved_caches(c.out)}
    encoded: dict[str, int] = {}
    todo = [job for job in jobs if states[job.name][0] != "complete"]
    if not todo:
        log.info("all %d stores are complete: nothing to encode", len(jobs))
    for i, job in enumerate(todo, 1):
        state, manifest = states[job.name]
        cache_uri, batch_size = text.cache_uri, c.batch_size
        if manifest is not None:
            # An interrupted store resumes with the settings it was started with: the cache (only its label
            # columns use it) and the batch size (part of the encoder's floating-point path).
            started = manifest.get("settings", {})
            if started.get("cache_fingerprint") != text.cache.fingerprint and started.get("cache_fingerprint") in saved:
                cache_uri = saved[started["cache_fingerprint"]]
            batch_size = int(started.get("batch_size") or batch_size)
        what = "noise recordings, clean" if job.name == NOISE_STORE else Condition(job.snr_db).title
        log.info("encoding store %d/%d: %s (%d file(s), %s) into %s", i, len(todo), job.name, len(job.ids), what,
                 job.uri)
        try:
            result = label_run(LabelConfig(
                input=job.input, cache=cache_uri, checkpoint=c.checkpoint, out=job.uri, snr_db=job.snr_db,
                noise=job.noise, seed=job.seed, num_gpus=c.num_gpus, actors=c.actors, batch_size=batch_size,
                tokenizer_dir=c.tokenizer_dir, resume=state == "partial", max_error_fraction=c.max_error_fraction,
                report=False))       # an intermediate encoding run: the evaluation writes its own results
        except JobFailed as exc:
            raise JobFailed(f"encoding {job.name}: {exc}") from None
        encoded[job.name] = int(result["runs"][-1].get("segments_done") or 0)
    return encoded


# -------------------------------------------------------------- assembling
def side_information(text: TextEmbeddings, labels: Sequence[str], noise: NoiseSet,
                     noise_store: StoreData) -> SideInformation:
    """Anchors, LAION prompts and per-scene backgrounds (text prompts; encoded noise recordings)."""
    text_bg = {key: text.matrix(background_prompts(scene_text(key))).mean(axis=0, keepdims=True)
               for key in scene_keys(noise)}
    recordings = np.zeros((len(noise.uris), text.cache.dim), dtype=np.float64)
    if len(noise_store.owner):
        # a recording's embedding: the mean of its windows (TAU recordings are one 10 s window)
        np.add.at(recordings, noise_store.owner, noise_store.embeddings)
        counts = np.bincount(noise_store.owner, minlength=len(noise.uris))
        recordings[counts > 0] /= counts[counts > 0, None]
    ok = noise_store.ok
    if not ok.any():
        raise JobFailed("no noise recording could be decoded: the audio background profiles cannot be built")
    scenes = np.array([s if s is not None else UNKNOWN_SCENE for s in noise.scenes], dtype=object)
    audio_bg = {}
    for key in scene_keys(noise):
        chosen = ok & (scenes == key) if key != UNKNOWN_SCENE else ok
        if not chosen.any():
            log.warning("no decodable noise recording of scene %r: its audio profile uses all recordings", key)
            chosen = ok
        audio_bg[key] = recordings[chosen].mean(axis=0, keepdims=True).astype(np.float32)
    return SideInformation(text.matrix(laion_prompts(labels)), text.matrix(anchor_prompts(labels)), text_bg, audio_bg)


def load_conditions(p: Plan) -> tuple[list[ConditionData], StoreData]:
    c = p.config
    ids = [clip.clip_id for clip in p.dataset.clips]
    scene_of = p.noise.scene_of()
    conditions = []
    for cond in c.conditions:
        store = read_store(storage.join(c.out, STORE_DIR, cond.name), ids)
        keys = background_keys(store.noise_uri, scene_of) if cond.snr_db is not None else [None] * len(store.owner)
        conditions.append(ConditionData(cond, store, keys))
    noise_store = read_store(storage.join(c.out, STORE_DIR, NOISE_STORE), list(p.noise.uris))
    return conditions, noise_store


# ----------------------------------------------------------------- outputs
def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _fmt_signed(value: float) -> str:
    return f"{100 * value:+.2f}"


def records_csv(records: Sequence[dict], fields: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in fields})
    return buf.getvalue().encode()


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _value(records: Sequence[dict], method: str, cond: Condition, metric: str, split: str = "test",
           lam: float | None = None) -> float | None:
    for r in records:
        if (r["method"], r["snr_db"], r["metric"], r["split"]) == (method, cond.snr_db, metric, split) \
                and (lam is None or r["lam"] == lam):
            return r["value"]
    return None


def render_report(p: Plan, ev: Evaluation, conditions: Sequence[ConditionData], noise_store: StoreData,
                  counts: dict) -> str:
    from das_core.prompts import CLEAN_TEMPLATE

    c, ds = p.config, p.dataset
    conds = [d.condition for d in conditions]
    title = DATASET_TITLES[ds.name]
    header = ["method"] + [cd.title for cd in conds]
    lines = [f"# das evaluate: {title}", ""]
    weights = p.checkpoint_info.get("weights")
    lines += [
        f"- dataset: {title} at `{ds.root}`: {len(ds.clips)} clips"
        + (f" (--limit {c.limit} of {p.n_available})" if c.limit else "") + f", {len(ds.label_names)} classes",
        f"- tuning split: {p.split.describe(ds, True)} ({int(p.is_tune.sum())} clips); "
        f"test split: {p.split.describe(ds, False)} ({int((~p.is_tune).sum())} clips)"
        + (f"; {p.split.note}" if p.split.note else ""),
        f"- noise: `{p.noise.root}` ({p.noise.layout}), {len(p.noise.uris)} recordings, "
        f"{len({s for s in p.noise.scenes if s is not None})} scenes; seed {c.seed}",
        f"- checkpoint: `{c.checkpoint}` ({p.checkpoint_id[:19]}…, {p.checkpoint_info.get('architecture')})"
        + ("; **random weights: these numbers are meaningless**" if weights == "random" else ""),
        f"- encodings: {len(ds.clips)} clips x {len(conds)} conditions + {len(p.noise.uris)} noise recordings = "
        f"{counts['encodings']} ({counts['windows']} windows of 10 s)",
        f"- DAS: λ = **{ev.lam:g}**, chosen on the tuning split from {{{', '.join(f'{x:g}' for x in ev.objective)}}} "
        f"by the {ev.main_metric} averaged over all {len(conds)} conditions (one λ for every SNR; ties: smaller λ); "
        f"{len(p.phrases)} noise phrases; Acevedo τ = {c.tau:g}",
        "",
        f"## {METRIC_TITLES[ev.main_metric]} (%) on the test split",
        "",
    ]
    rows = [[m] + [_fmt(_value(ev.records, m, cd, ev.main_metric)) for cd in conds] for m in METHODS]
    lines += _table(rows, header)
    if not ds.multi_label:
        lines += ["", "## Accuracy (%) on the test split, mean over folds", ""]
        rows = [[m] + [_fmt(_value(ev.records, m, cd, "accuracy_fold_mean")) for cd in conds] for m in METHODS]
        lines += _table(rows, header)
    lines += ["", f"## DAS minus baseline ({METRIC_TITLES[ev.main_metric]}, points)", ""]
    rows = [[f"das_minus_{b}"] + [_fmt_signed(_value(ev.records, f"das_minus_{b}", cd, ev.main_metric))
                                  for cd in conds] for b in BASELINES]
    lines += _table(rows, header)
    lines += ["", f"## λ sweep on the tuning split ({METRIC_TITLES[ev.main_metric]}, %)", ""]
    rows = [[f"{lam:g}" + (" (chosen)" if lam == ev.lam else "")]
            + [_fmt(ev.sweep[lam][cd.name]) for cd in conds] + [_fmt(ev.objective[lam])] for lam in ev.sweep]
    lines += _table(rows, ["λ"] + [cd.title for cd in conds] + ["mean"])
    lines += ["", "## Methods", ""]
    lines += [f"- `{m}`: {METHOD_DESCRIPTIONS[m].format(clean=CLEAN_TEMPLATE)}" for m in METHODS]
    lines += ["", "## What the Acevedo variants need that DAS does not", "",
              "DAS needs only the class names and a fixed list of generic noise phrases (text, encoded once). "
              "Each Acevedo variant needs, in addition:", ""]
    lines += [f"- `{m}`: {need}." for m, need in NEEDS.items()]
    lines += ["", "Choices made here: in the clean condition (and for a window whose mix was skipped because it has "
              "zero power) there is no background, so b = 0 and the Acevedo variants reduce to their prototypes; "
              f"noise of unknown scene is described as \"{UNKNOWN_SCENE_TEXT}\" (text) and by all noise recordings "
              "(audio); TGAP pools are the same condition's windows outside the clip's fold "
              "(UrbanSound8K, ESC-50) or outside the clip itself (FSD50K), never using labels; clip scores are the "
              "maximum over the clip's 10 s windows."]
    if ev.excluded_classes:
        lines += ["", "Classes without a positive clip in the test split are left out of the macro mAP: "
                  + ", ".join(f"{cd.title}: {ev.excluded_classes[cd.name]}" for cd in conds) + "."]
    lines += ["", "## Clips and recordings that could not be decoded", ""]
    failed = {d.condition.title: d.store.errors for d in conditions if d.store.errors}
    if noise_store.errors:
        failed["noise recordings"] = noise_store.errors
    if p.noise.missing:
        failed["noise recordings listed in meta.csv but missing"] = {u: "missing" for u in p.noise.missing}
    if not failed:
        lines.append("None: every clip was decoded in every condition.")
    else:
        lines.append("They are left out of every method's metric in that condition.")
        for what, errs in failed.items():
            lines += ["", f"{what}: {len(errs)}", ""]
            lines += [f"- `{k}`: {v}" for k, v in sorted(errs.items())]
    return "\n".join(lines) + "\n"


def render_plot(p: Plan, ev: Evaluation, conds: Sequence[Condition]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noisy = sorted(cd.snr_db for cd in conds if cd.snr_db is not None)
    step = (noisy[-1] - noisy[0]) / max(len(noisy) - 1, 1) if len(noisy) > 1 else 5.0
    position = {cd: (cd.snr_db if cd.snr_db is not None else (noisy[-1] + max(step, 5.0) if noisy else 0.0))
                for cd in conds}
    ordered = sorted(conds, key=lambda cd: position[cd])
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=120)
    markers = "os^vD<>"
    for i, m in enumerate(METHODS):
        ys = [_value(ev.records, m, cd, ev.main_metric) for cd in ordered]
        # distinct line styles keep baselines with equal values visible on top of each other
        style = "-" if m == "das" or m.startswith("zs_") else ("--" if "_zs_" in m else ":")
        ax.plot([position[cd] for cd in ordered], [100 * y for y in ys], marker=markers[i % len(markers)],
                linestyle=style, linewidth=2.6 if m == "das" else 1.5, zorder=3 if m == "das" else 2,
                label=f"DAS (λ = {ev.lam:g})" if m == "das" else m)
    ax.set_xticks([position[cd] for cd in ordered], [cd.title for cd in ordered])
    ax.set_xlabel("SNR of the mixed noise (dB)")
    ax.set_ylabel(f"{'macro mAP' if ev.main_metric == 'mAP' else 'accuracy'} on the test split (%)")
    title = f"{DATASET_TITLES[p.dataset.name]}: {ev.main_metric} vs SNR ({len(p.dataset.clips)} clips"
    title += ", random weights)" if p.checkpoint_info.get("weights") == "random" else ")"
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(p: Plan, ev: Evaluation, conditions: Sequence[ConditionData], noise_store: StoreData,
                  counts: dict, extra: dict) -> dict:
    out = p.config.out
    files = {
        "results.json": (json.dumps(ev.records, indent=1) + "\n").encode(),
        "results.csv": records_csv(ev.records, RESULT_FIELDS),
        "per_class.csv": records_csv(ev.per_class, PER_CLASS_FIELDS),
        "report.md": render_report(p, ev, conditions, noise_store, counts).encode(),
        "snr_curves.png": render_plot(p, ev, [d.condition for d in conditions]),
    }
    summary = {
        "job": "evaluate", "das_version": __version__, "dataset": p.dataset.name, "root": p.dataset.root,
        "noise_root": p.noise.root, "checkpoint": {"uri": p.config.checkpoint, "fingerprint": p.checkpoint_id,
                                                   **p.checkpoint_info},
        "conditions": [cd.condition.title for cd in conditions], "seed": p.config.seed,
        "lam_grid": list(ev.objective), "lam": ev.lam, "tune_split": p.split.spec,
        "tune_split_note": p.split.note or None, "tau": p.config.tau,
        "noise_phrases": list(p.phrases), "limit": p.config.limit, "noise_limit": p.config.noise_limit,
        "counts": counts, "decode_errors": {d.condition.name: len(d.store.errors) for d in conditions}
        | {NOISE_STORE: len(noise_store.errors)}, **extra,
    }
    files["evaluation.json"] = (json.dumps(summary, indent=2) + "\n").encode()
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(out, name), data)
    return summary


def _check_previous(c: EvaluateConfig) -> None:
    uri = storage.join(c.out, "evaluation.json")
    if not storage.exists(uri):
        return
    try:
        previous = json.loads(storage.read_bytes(uri))
    except ValueError:
        return
    if previous.get("dataset") not in (None, c.dataset):
        raise UsageError(f"{c.out} holds an evaluation of {previous['dataset']}, not {c.dataset}: use another --out")


# -------------------------------------------------------------------- run
def run(c: EvaluateConfig) -> dict:
    """Evaluate and write the outputs; returns the summary written to ``evaluation.json``."""
    t0 = time.monotonic()
    _check_previous(c)
    p = plan(c)
    ds = p.dataset
    log.info("%s: %d clips (%d tuning, %d test), %d classes, %d noise recordings, conditions: %s",
             ds.name, len(ds.clips), int(p.is_tune.sum()), int((~p.is_tune).sum()), len(ds.label_names),
             len(p.noise.uris), ", ".join(cd.title for cd in c.conditions))
    if p.checkpoint_info.get("weights") == "random":
        log.warning("checkpoint %s has RANDOM weights: the evaluation runs, its numbers are meaningless",
                    c.checkpoint)
    text = prepare_text(p)
    encoded = encode_stores(p, text)
    log.info("scoring %d methods (DAS over %d λ values) from the stored embeddings", len(METHODS), len(c.lam_grid))
    try:
        conditions, noise_store = load_conditions(p)
        side = side_information(text, ds.label_names, p.noise, noise_store)
        ev = evaluate(ds, conditions, text.cache, side, p.is_tune, p.groups, c.lam_grid, c.tau)
    except EvaluationError as exc:
        raise JobFailed(str(exc)) from None
    n_windows = sum(len(d.store.owner) for d in conditions) + len(noise_store.owner)
    counts = {"clips": len(ds.clips), "conditions": len(c.conditions), "noise_recordings": len(p.noise.uris),
              "encodings": len(ds.clips) * len(c.conditions) + len(p.noise.uris), "windows": n_windows,
              "encoded_now": sum(encoded.values()), "text_encoded_now": text.encoded_now}
    wall = time.monotonic() - t0
    summary = write_outputs(p, ev, conditions, noise_store, counts, {
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "wall_time_s": round(wall, 3)})
    _print_summary(p, ev, conditions, noise_store, counts, wall)
    return summary


def _print_summary(p: Plan, ev: Evaluation, conditions: Sequence[ConditionData], noise_store: StoreData,
                   counts: dict, wall: float) -> None:
    conds = [d.condition for d in conditions]
    width = max(len(m) for m in METHODS)
    table = [f"    {'':<{width}}  " + "  ".join(f"{cd.title:>8}" for cd in conds)]
    table += [f"    {m:<{width}}  " + "  ".join(f"{_fmt(_value(ev.records, m, cd, ev.main_metric)):>8}" for cd in conds)
              for m in METHODS]
    errors = sum(len(d.store.errors) for d in conditions)
    print(f"das evaluate: {p.dataset.name} done in {wall:.1f} s\n"
          f"  encodings:  {counts['clips']} clips x {counts['conditions']} conditions + {counts['noise_recordings']} "
          f"noise = {counts['encodings']} ({counts['encoded_now']} windows encoded by this run)\n"
          f"  lam:        {ev.lam:g} (chosen on the tuning split, {p.split.describe(p.dataset, True)})\n"
          f"  {ev.main_metric} on the test split (%):\n" + "\n".join(table) + "\n"
          f"  undecodable: {errors} clip-condition(s), {len(noise_store.errors)} noise recording(s)\n"
          f"  weights:    {p.checkpoint_info.get('weights')}"
          + ("  (RANDOM: the numbers are meaningless)" if p.checkpoint_info.get("weights") == "random" else "")
          + f"\n  output:     {p.config.out} (report.md, results.json, results.csv, per_class.csv, snr_curves.png)",
          flush=True)


def main(argv: list[str] | None = None, prog: str = "das evaluate") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.evaluate"))
