"""``das evaluate``: the command line of ``das_core.evaluation``; its label runs go through ``jobs.pipeline``."""

import argparse
import sys

from das_core import evaluation
from das_core.datasets import DATASETS
from das_core.evaluation import DEFAULT_LAM_GRID, DEFAULT_SNRS, EvaluateConfig
from das_core.labelrun import LabelConfig
from das_core.prompts import DEFAULT_NOISE_PHRASES
from jobs.common import add_common_options, job_main, settings_from_args

D = EvaluateConfig          # defaults are the settings object's
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
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=DESCRIPTION, epilog=EPILOG)
    d, e, g = (p.add_argument_group(t).add_argument for t in ("data", "protocol", "compute (passed to the label job)"))
    d("--dataset", required=True, choices=DATASETS, help="which published layout --root holds")
    for flag, metavar, text in (
            ("--root", "URI", "dataset root (local folder or s3:// prefix): UrbanSound8K/ (metadata/, audio/), FSD50K/ "
             "(FSD50K.ground_truth/, FSD50K.eval_audio/) or ESC-50/ (meta/, audio/)"),
            ("--noise-root", "URI", "TAU Urban Acoustic Scenes 2019 root (tab-separated meta.csv, audio/), or any "
             "folder of noise recordings (scene unknown)"),
            ("--checkpoint", "CKPT", "CLAP checkpoint: LAION .pt (path, s3:// URI or published name such as "
             "630k-audioset-best) or Hugging Face ClapModel folder (path, s3:// prefix or hub id)"),
            ("--out", "DIR", "output folder or s3:// prefix; holds the encoded stores, so reruns are cheap")):
        d(flag, required=True, metavar=metavar, help=text)
    d("--limit", type=int, metavar="N", help="quick run on N clips, chosen deterministically and spread over classes "
      "and folds")
    d("--noise-limit", type=int, metavar="N", help="use N noise recordings, chosen deterministically and spread over "
      "scenes (default: all)")
    e("--snrs", default=DEFAULT_SNRS, metavar="LIST", help="conditions, 'clean' or dB values (default %(default)s); "
      "write --snrs=-5,0 when the list starts with a negative number")
    e("--seed", type=int, default=D.seed, metavar="N", help="seed of the noise choice per (clip, window, SNR) "
      "(default %(default)s)")
    e("--lam-grid", default=DEFAULT_LAM_GRID, metavar="LIST", help="DAS lam values to sweep (default %(default)s)")
    e("--tune-split", metavar="SPEC", help="clips lam is chosen on, 'folds:A-B' or 'hash:P' (see below; default per "
      "dataset)")
    e("--noise-phrases", metavar="FILE", help=f"DAS noise phrases, one per line (default: {len(DEFAULT_NOISE_PHRASES)} "
      "urban-scene phrases, see README)")
    e("--tau", type=float, default=D.tau, metavar="X", help="weight of the Acevedo background profile (default "
      "%(default)s)")
    e("--max-error-fraction", type=float, default=D.max_error_fraction, metavar="X", help="fail if more than this "
      "share of clips (or noise recordings) cannot be decoded (default %(default)s)")
    g("--num-gpus", type=float, default=D.num_gpus, metavar="N", help="GPUs in all; 0 encodes on CPU (default "
      "%(default)g)")
    g("--actors", type=int, metavar="N", help="encoder actors (default: one per GPU, or 1 on CPU)")
    g("--batch-size", type=int, default=D.batch_size, metavar="N", help="windows per encoder call (default "
      "%(default)s)")
    g("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files (RoBERTa checkpoints)")
    add_common_options(p)
    return p


def config_from_args(a: argparse.Namespace) -> EvaluateConfig:
    return settings_from_args(EvaluateConfig, a, conditions=evaluation.parse_conditions(a.snrs),
                              lam_grid=evaluation.parse_lam_grid(a.lam_grid))


def run_label(config: LabelConfig) -> dict:
    from jobs.pipeline import run_label as label_on_ray  # Ray is imported only when a store needs encoding
    return label_on_ray(config)


def run(c: EvaluateConfig) -> dict:
    summary, printout = evaluation.run_evaluation(c, run_label)
    print(printout, flush=True)
    return summary


def main(argv: list[str] | None = None, prog: str = "das evaluate") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.evaluate"))
