"""Evaluation: DAS against plain zero-shot and Acevedo et al.'s baselines across SNRs (METHOD.md §4).

What it does, in order:

1. Reads the dataset in its published layout and the noise recordings
   (``das_core.evaluation.datasets``), applies ``--limit`` / ``--noise-limit``
   (``protocol``).
2. Text, once: the DAS drift cache for the dataset's labels, and in the same
   batched call every other prompt (LAION's template, Acevedo's anchors, the
   background-scene prompts), saved under ``OUT/text/`` as drift caches
   (``prompts``). A rerun that needs no new prompt loads no model.
3. Audio, once per (clip, condition): each condition is one run of the label
   job over a path list of the clips, into ``OUT/store/<condition>/``; the
   noise recordings are encoded clean into ``OUT/store/noise/``. The library
   says which label runs are needed and with which ``LabelConfig``
   (``stores.label_runs``); ``jobs/evaluate.py`` runs each through
   ``jobs.label.run``. A store whose ``_manifest.json`` says ``complete`` and
   that holds every clip is skipped, so a rerun or a new λ grid encodes
   nothing; an interrupted one is resumed (``stores``).
4. Scoring, from the stored window embeddings only: every window is scored,
   clip scores are the maximum over the clip's windows. Methods: plain
   zero-shot with the DAS clean template and with LAION's template, DAS over
   the λ grid, Acevedo ZS-text / ZS-audio / TGAP-text / TGAP-audio
   (``scoring``; their side information: ``side``).
5. λ is chosen on the tuning split alone, by the tuning metric averaged over
   all conditions (one λ for every SNR); only that λ is reported on the test
   split. Ties go to the smaller λ.
6. Writes ``results.json``, ``results.csv``, ``per_class.csv``, ``report.md``,
   ``snr_curves.png`` and ``evaluation.json`` under ``OUT`` (``report``;
   the steps before and after the label runs: ``runner``).

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

from das_core.errors import EvaluationError
from das_core.evaluation.prompts import UNKNOWN_SCENE, TextEmbeddings, prepare_text
from das_core.evaluation.protocol import (
    CACHE_LAM,
    DEFAULT_LAM_GRID,
    DEFAULT_MAX_ERROR_FRACTION,
    DEFAULT_SEED,
    DEFAULT_SNRS,
    DEFAULT_TUNE_SPLITS,
    Condition,
    EvaluateConfig,
    Plan,
    TuneSplit,
    choose_tune_split,
    parse_conditions,
    parse_lam_grid,
    parse_tune_split,
    plan,
)
from das_core.evaluation.runner import EvaluationRun, finish_evaluation, start_evaluation
from das_core.evaluation.scoring import BASELINES, METHODS, Evaluation, choose_lam, evaluate
from das_core.evaluation.side import SideInformation, side_information
from das_core.evaluation.stores import ConditionData, StoreData, read_store

__all__ = [
    "BASELINES", "CACHE_LAM", "DEFAULT_LAM_GRID", "DEFAULT_MAX_ERROR_FRACTION", "DEFAULT_SEED",
    "DEFAULT_SNRS", "DEFAULT_TUNE_SPLITS", "METHODS", "UNKNOWN_SCENE", "Condition", "ConditionData", "EvaluateConfig",
    "Evaluation", "EvaluationError", "EvaluationRun", "Plan", "SideInformation", "StoreData", "TextEmbeddings",
    "TuneSplit",
    "choose_lam", "choose_tune_split", "evaluate", "finish_evaluation", "parse_conditions", "parse_lam_grid",
    "parse_tune_split", "plan", "prepare_text", "read_store", "side_information", "start_evaluation",
]
