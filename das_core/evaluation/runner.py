"""One evaluation from start to end: plan, text, stores, scores, outputs.

The label runs are the caller's (``run_label``: ``jobs.label.run`` for
``das evaluate``), so that this package never starts Ray itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from das_core import __version__
from das_core.errors import Refused, RunFailed
from das_core.evaluation.prompts import prepare_text
from das_core.evaluation.protocol import EvaluateConfig, Plan, plan
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
from das_core.evaluation.stores import NOISE_STORE, EvaluationError, encode_stores, load_conditions
from das_core.io import storage
from das_core.label.config import LabelConfig
from das_core.output.record import utc_now

log = logging.getLogger("das.evaluation")
SUMMARY = "evaluation.json"


def check_previous(c: EvaluateConfig) -> None:
    """Refuse an ``--out`` that holds the evaluation of another dataset."""
    uri = storage.join(c.out, SUMMARY)
    if not storage.exists(uri):
        return
    try:
        previous = json.loads(storage.read_bytes(uri))
    except ValueError:
        return
    if previous.get("dataset") not in (None, c.dataset):
        raise Refused(f"{c.out} holds an evaluation of {previous['dataset']}, not {c.dataset}: use another --out")


def summary(o: Outcome, extra: dict) -> dict:
    """The content of ``evaluation.json``."""
    p, ev, c = o.plan, o.evaluation, o.plan.config
    return {
        "job": "evaluate", "das_version": __version__, "dataset": p.dataset.name, "root": p.dataset.root,
        "noise_root": p.noise.root, "checkpoint": {"uri": c.checkpoint, "fingerprint": p.checkpoint_id,
                                                   **p.checkpoint_info},
        "conditions": [cd.title for cd in o.condition_list], "seed": c.seed,
        "lam_grid": list(ev.objective), "lam": ev.lam, "tune_split": p.split.spec,
        "tune_split_note": p.split.note or None, "tau": c.tau,
        "noise_phrases": list(p.phrases), "limit": c.limit, "noise_limit": c.noise_limit,
        "counts": o.counts, "decode_errors": {d.condition.name: len(d.store.errors) for d in o.conditions}
        | {NOISE_STORE: len(o.noise_store.errors)}, **extra,
    }


def write_outputs(o: Outcome, extra: dict) -> dict:
    """Write every output file under ``OUT``; returns the summary written to ``evaluation.json``."""
    files = {
        "results.json": (json.dumps(o.evaluation.records, indent=1) + "\n").encode(),
        "results.csv": records_csv(o.evaluation.records, RESULT_FIELDS),
        "per_class.csv": records_csv(o.evaluation.per_class, PER_CLASS_FIELDS),
        "report.md": render_report(o).encode(),
        "snr_curves.png": render_plot(o),
    }
    written = summary(o, extra)
    files[SUMMARY] = (json.dumps(written, indent=2) + "\n").encode()
    for name, data in files.items():
        storage.write_bytes_atomic(storage.join(o.plan.config.out, name), data)
    return written


def _announce(p: Plan) -> None:
    c, ds = p.config, p.dataset
    log.info("%s: %d clips (%d tuning, %d test), %d classes, %d noise recordings, conditions: %s",
             ds.name, len(ds.clips), int(p.is_tune.sum()), int((~p.is_tune).sum()), len(ds.label_names),
             len(p.noise.uris), ", ".join(cd.title for cd in c.conditions))
    if p.checkpoint_info.get("weights") == "random":
        log.warning("checkpoint %s has RANDOM weights: the evaluation runs, its numbers are meaningless",
                    c.checkpoint)


def run_evaluation(c: EvaluateConfig, run_label: Callable[[LabelConfig], dict]) -> tuple[dict, str]:
    """Evaluate and write the outputs; returns the summary written to ``evaluation.json`` and the text to print."""
    t0 = time.monotonic()
    storage.check_output_folder(c.out)
    check_previous(c)
    p = plan(c)
    _announce(p)
    text = prepare_text(p)
    encoded = encode_stores(p, text, run_label)
    log.info("scoring %d methods (DAS over %d λ values) from the stored embeddings", len(METHODS), len(c.lam_grid))
    try:
        conditions, noise_store = load_conditions(p)
        side = side_information(text, p.dataset.label_names, p.noise, noise_store)
        ev = evaluate(p.dataset, conditions, text.cache, side, p.is_tune, p.groups, c.lam_grid, c.tau)
    except EvaluationError as exc:
        raise RunFailed(str(exc)) from None
    n_clips, n_noise = len(p.dataset.clips), len(p.noise.uris)
    counts = {"clips": n_clips, "conditions": len(c.conditions), "noise_recordings": n_noise,
              "encodings": n_clips * len(c.conditions) + n_noise,
              "windows": sum(len(d.store.owner) for d in conditions) + len(noise_store.owner),
              "encoded_now": sum(encoded.values()), "text_encoded_now": text.encoded_now}
    outcome = Outcome(p, ev, conditions, noise_store, counts)
    wall = time.monotonic() - t0
    written = write_outputs(outcome, {"finished": utc_now(),
                                      "wall_time_s": round(wall, 3)})
    return written, summary_text(outcome, wall)
