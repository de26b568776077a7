"""``das evaluate``: the command line of ``das_core.evaluation``, and its loop: start the evaluation, run the
label runs that fill its stores (each through ``jobs.label.run``), then let the library score and write."""

import argparse
import logging
import sys

from das_core import evaluation
from das_core.errors import RunFailed
from das_core.evaluation import DEFAULT_LAM_GRID, DEFAULT_SNRS, EvaluateConfig
from das_core.evaluation.protocol import PROTOCOL
from das_core.evaluation.stores import windows_encoded
from jobs import label
from jobs.common import HelpFormatter, add_common_options, add_settings, job_main, settings_from_args

log = logging.getLogger("das.evaluation")      # the evaluation's lines, whichever side writes them

DESCRIPTION = ("Compare Drift-Augmented Scoring with plain zero-shot CLAP and the four Acevedo et al. variants on a\n"
               "public dataset, clean and with noise mixed in at several SNRs (METHOD.md section 4).\n\n"
               "Every (clip, condition) is encoded once, by the label job on Ray, into OUT/store/; a rerun, a new\n"
               "lam grid or another --tau encodes nothing. lam is chosen on the tuning split only (its metric\n"
               "averaged over all conditions) and that single value is reported on the test split.\n\n"
               "Writes OUT/results.json, results.csv, per_class.csv, report.md, snr_curves.png, evaluation.json.")
EPILOG = ("tuning splits (--tune-split): 'folds:A-B' or 'folds:A,B,..' tunes on those folds and tests on the\n"
          "others; 'hash:P' tunes on the P% of clips whose id (e.g. FSD50K's fname) hashes lowest (sha1),\n"
          "tests on the rest. Defaults: urbansound8k folds:1-5, esc50 folds:1-2, fsd50k hash:50.\n\n"
          "example:\n  das evaluate --dataset urbansound8k --root s3://data/UrbanSound8K \\\n"
          "      --noise-root s3://data/TAU-urban-acoustic-scenes-2019-development \\\n"
          "      --checkpoint 630k-audioset-best --out s3://results/us8k --num-gpus 8")


def build_parser(prog: str = "das evaluate") -> argparse.ArgumentParser:
    """The options of ``das evaluate``: one per ``EvaluateConfig`` setting, ``--snrs``, ``--lam-grid``, common."""
    parser = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=DESCRIPTION,
                                     epilog=EPILOG)
    groups: dict = {}
    add_settings(parser, EvaluateConfig, groups)
    protocol_option = groups[PROTOCOL].add_argument
    protocol_option("--snrs", default=DEFAULT_SNRS, metavar="LIST", help="conditions, 'clean' or dB values; write "
                    "--snrs=-5,0 when the list starts with a negative number")
    protocol_option("--lam-grid", default=DEFAULT_LAM_GRID, metavar="LIST", help="DAS lam values to sweep")
    add_common_options(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> EvaluateConfig:
    """The ``EvaluateConfig`` of the parsed options (``--snrs`` and ``--lam-grid`` parsed)."""
    return settings_from_args(EvaluateConfig, args, conditions=evaluation.parse_conditions(args.snrs),
                              lam_grid=evaluation.parse_lam_grid(args.lam_grid))


def run(config: EvaluateConfig) -> dict:
    """Evaluate into ``config.out``: the stores not yet complete are filled by label runs (on Ray, or in this
    process for a small one), then every method is scored; returns the summary written to evaluation.json."""
    started = evaluation.start_evaluation(config)
    needed = started.label_runs()
    encoded: dict[str, int] = {}
    for i, store in enumerate(needed, 1):
        job = store.job
        log.info("encoding store %d/%d: %s (%d file(s), %s) into %s", i, len(needed), job.name, len(job.ids),
                 store.describe(), job.uri)
        try:
            manifest = label.run(store.config)
        except RunFailed as exc:
            raise RunFailed(f"encoding {job.name}: {exc}") from None
        encoded[job.name] = windows_encoded(manifest)
    summary, printout = evaluation.finish_evaluation(started, encoded)
    print(printout, flush=True)
    return summary


def main(argv: list[str] | None = None, prog: str = "das evaluate") -> int:
    """``das evaluate``: parse ``argv``, run, and return the exit status."""
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.evaluate"))
