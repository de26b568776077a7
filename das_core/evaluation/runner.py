"""One evaluation's start and end: checks, plan and text before its label runs; scores and outputs after.

The label runs that fill the stores between the two are the caller's
(``jobs/evaluate.py`` runs each of ``EvaluationRun.label_runs()`` through
``jobs.label.run``), so that this package never starts Ray itself.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from das_core import __version__
from das_core.errors import EvaluationError, Refused, RunFailed
from das_core.evaluation.prompts import TextEmbeddings, prepare_text
from das_core.evaluation.protocol import EvaluateConfig, Plan
from das_core.evaluation.protocol import plan as make_plan
from das_core.evaluation.report import (
    PER_CLASS_FIELDS,
    RESULT_FIELDS,
    Outcome,
    records_csv,
    render_plot,
    render_report,
    summary_text,
)
from das_core.evaluation.scoring import METHODS, evaluate
from das_core.evaluation.side import side_information
from das_core.evaluation.stores import NOISE_STORE, StoreEncoding, label_runs, load_conditions
from das_core.io import storage
from das_core.io.checks import check_output_folder
from das_core.output.record import utc_now

log = logging.getLogger("das.evaluation")
SUMMARY = "evaluation.json"


def check_previous(config: EvaluateConfig) -> None:
    """Refuse an ``--out`` that holds the evaluation of another dataset."""
    uri = storage.join(config.out, SUMMARY)
    if not storage.exists(uri):
        return
    try:
        previous = json.loads(storage.read_bytes(uri))
    except ValueError:
        return
    if previous.get("dataset") not in (None, config.dataset):
        raise Refused(f"{config.out} holds an evaluation of {previous['dataset']}, not {config.dataset}: use another "
                      f"--out")


def summary(outcome: Outcome, extra: dict) -> dict:
    """The content of ``evaluation.json`` (``extra``: the finish time and wall time)."""
    plan, ev, config = outcome.plan, outcome.evaluation, outcome.plan.config
    return {
        "job": "evaluate", "das_version": __version__, "dataset": plan.dataset.name, "root": plan.dataset.root,
        "noise_root": plan.noise.root, "checkpoint": {"uri": config.checkpoint, "fingerprint": plan.checkpoint_id,
                                                       **plan.checkpoint_info},
        "conditions": [cd.title for cd in outcome.condition_list], "seed": config.seed,
        "lam_grid": list(ev.objective), "lam": ev.lam, "tune_split": plan.split.spec,
        "tune_split_note": plan.split.note or None, "tau": config.tau,
        "noise_phrases": list(plan.phrases), "limit": config.limit, "noise_limit": config.noise_limit,
        "counts": outcome.counts, "decode_errors": {d.condition.name: len(d.store.errors) for d in outcome.conditions}
        | {NOISE_STORE: len(outcome.noise_store.errors)}, **extra,
    }


def write_outputs(outcome: Outcome, extra: dict) -> dict:
    """Write every output file under ``OUT``; returns the summary written to ``evaluation.json``."""
    files = {
        "results.json": (json.dumps(outcome.evaluation.records, indent=1) + "\n").encode(),
        "results.csv": records_csv(outcome.evaluation.records, RESULT_FIELDS),
        "per_class.csv": records_csv(outcome.evaluation.per_class, PER_CLASS_FIELDS),
        "report.md": render_report(outcome).encode(),
        "snr_curves.png": render_plot(outcome),
    }
    written = summary(outcome, extra)
    files[SUMMARY] = (json.dumps(written, indent=2) + "\n").encode()
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(outcome.plan.config.out, name), data)
    return written


def _announce(plan: Plan) -> None:
    """Log what is evaluated (clips, splits, classes, noise, conditions) and warn of random weights."""
    config, ds = plan.config, plan.dataset
    log.info("%s: %d clips (%d tuning, %d test), %d classes, %d noise recordings, conditions: %s",
             ds.name, len(ds.clips), int(plan.is_tune.sum()), int((~plan.is_tune).sum()), len(ds.label_names),
             len(plan.noise.uris), ", ".join(cd.title for cd in config.conditions))
    if plan.checkpoint_info.get("weights") == "random":
        log.warning("checkpoint %s has RANDOM weights: the evaluation runs, its numbers are meaningless",
                    config.checkpoint)


@dataclass
class EvaluationRun:
    """An evaluation under way: its plan, its text embeddings (made and saved) and when it started."""

    plan: Plan
    text: TextEmbeddings
    started: float            # time.monotonic()

    def label_runs(self) -> list[StoreEncoding]:
        """The label runs that fill the stores not yet complete (``stores.label_runs``), for the caller to run."""
        return label_runs(self.plan, self.text)


def start_evaluation(config: EvaluateConfig) -> EvaluationRun:
    """Check ``--out``, plan, and make the text embeddings; everything that can be refused is refused here."""
    started = time.monotonic()
    check_output_folder(config.out)
    check_previous(config)
    plan = make_plan(config)
    _announce(plan)
    return EvaluationRun(plan, prepare_text(plan), started)


def finish_evaluation(run: EvaluationRun, encoded: dict[str, int]) -> tuple[dict, str]:
    """Score every method from the stores and write the outputs, once the label runs are done (``encoded``:
    windows encoded now, per store); returns the summary written to ``evaluation.json`` and the text to print."""
    plan, text, config = run.plan, run.text, run.plan.config
    log.info("scoring %d methods (DAS over %d λ values) from the stored embeddings", len(METHODS),
             len(config.lam_grid))
    try:
        conditions, noise_store = load_conditions(plan)
        side = side_information(text, plan.dataset.label_names, plan.noise, noise_store)
        ev = evaluate(plan.dataset, conditions, text.cache, side, plan.is_tune, plan.groups, config.lam_grid,
                      config.tau)
    except EvaluationError as exc:
        raise RunFailed(str(exc)) from None
    n_clips, n_noise = len(plan.dataset.clips), len(plan.noise.uris)
    counts = {"clips": n_clips, "conditions": len(config.conditions), "noise_recordings": n_noise,
              "encodings": n_clips * len(config.conditions) + n_noise,
              "windows": sum(len(d.store.owner) for d in conditions) + len(noise_store.owner),
              "encoded_now": sum(encoded.values()), "text_encoded_now": text.encoded_now}
    outcome = Outcome(plan, ev, conditions, noise_store, counts)
    wall = time.monotonic() - run.started
    written = write_outputs(outcome, {"finished": utc_now(), "wall_time_s": round(wall, 3)})
    return written, summary_text(outcome, wall)
