"""``das evaluate``: the command line of ``das_core.evaluation``; its label runs go through ``jobs.label``."""

import argparse
import sys

from das_core import evaluation
from das_core.evaluation import DEFAULT_LAM_GRID, DEFAULT_SNRS, EvaluateConfig
from das_core.evaluation.protocol import PROTOCOL
from das_core.label.config import LabelConfig
from jobs.common import HelpFormatter, add_common_options, add_settings, job_main, settings_from_args

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
    p = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=DESCRIPTION, epilog=EPILOG)
    groups: dict = {}
    add_settings(p, EvaluateConfig, groups)
    e = groups[PROTOCOL].add_argument
    e("--snrs", default=DEFAULT_SNRS, metavar="LIST", help="conditions, 'clean' or dB values; write --snrs=-5,0 "
      "when the list starts with a negative number")
    e("--lam-grid", default=DEFAULT_LAM_GRID, metavar="LIST", help="DAS lam values to sweep")
    add_common_options(p)
    return p


def config_from_args(a: argparse.Namespace) -> EvaluateConfig:
    return settings_from_args(EvaluateConfig, a, conditions=evaluation.parse_conditions(a.snrs),
                              lam_grid=evaluation.parse_lam_grid(a.lam_grid))


def run_label(config: LabelConfig) -> dict:
    from jobs.label import run as label_on_ray  # Ray is imported only when a store needs encoding
    return label_on_ray(config)


def run(c: EvaluateConfig) -> dict:
    summary, printout = evaluation.run_evaluation(c, run_label)
    print(printout, flush=True)
    return summary


def main(argv: list[str] | None = None, prog: str = "das evaluate") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.evaluate"))
