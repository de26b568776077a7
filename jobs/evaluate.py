"""``das evaluate``: the command line of ``das_core.evaluation``; the label runs it needs go through ``jobs.label``."""

import argparse
import sys

from das_core import evaluation
from das_core.datasets import DATASETS
from das_core.evaluation import DEFAULT_LAM_GRID, DEFAULT_SNRS, DEFAULTS, EvaluateConfig
from das_core.prompts import DEFAULT_NOISE_PHRASES
from jobs import label
from jobs.common import add_common_options, check_output_folder, job_main, read_lines_from

COMPUTE = "compute (passed to the label job)"
DESCRIPTION = (
    "Compare Drift-Augmented Scoring with plain zero-shot CLAP and the four Acevedo et al. variants on a\n"
    "public dataset, clean and with noise mixed in at several SNRs (METHOD.md section 4).\n\n"
    "Every (clip, condition) is encoded once, by the label job on Ray, into OUT/store/; a rerun, a new\n"
    "lam grid or another --tau encodes nothing. lam is chosen on the tuning split only (its metric\n"
    "averaged over all conditions) and that single value is reported on the test split.\n\n"
    "Writes OUT/results.json, results.csv, per_class.csv, report.md, snr_curves.png, evaluation.json.")
EPILOG = (
    "tuning splits (--tune-split): 'folds:A-B' or 'folds:A,B,..' tunes on those folds and tests on the\n"
    "others; 'hash:P' tunes on the P% of clips whose id (e.g. FSD50K's fname) hashes lowest (sha1),\n"
    "tests on the rest. Defaults: urbansound8k folds:1-5, esc50 folds:1-2, fsd50k hash:50.\n\n"
    "example:\n"
    "  das evaluate --dataset urbansound8k --root s3://data/UrbanSound8K \\\n"
    "      --noise-root s3://data/TAU-urban-acoustic-scenes-2019-development \\\n"
    "      --checkpoint 630k-audioset-best --out s3://results/us8k --num-gpus 8")


def build_parser(prog: str = "das evaluate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=DESCRIPTION, epilog=EPILOG)
    data, proto, comp = (p.add_argument_group(t).add_argument for t in ("data", "protocol", COMPUTE))
    data("--dataset", required=True, choices=DATASETS, help="which published layout --root holds")
    for flag, metavar, text in (
            ("--root", "URI", "dataset root (local folder or s3:// prefix): UrbanSound8K/ (metadata/, audio/), FSD50K/ "
             "(FSD50K.ground_truth/, FSD50K.eval_audio/) or ESC-50/ (meta/, audio/)"),
            ("--noise-root", "URI", "TAU Urban Acoustic Scenes 2019 root (tab-separated meta.csv, audio/), or any "
             "folder of noise recordings (scene unknown)"),
            ("--checkpoint", "CKPT", "CLAP checkpoint: LAION .pt (path, s3:// URI or published name such as "
             "630k-audioset-best) or Hugging Face ClapModel folder (path, s3:// prefix or hub id)"),
            ("--out", "DIR", "output folder or s3:// prefix; holds the encoded stores, so reruns are cheap")):
        data(flag, required=True, metavar=metavar, help=text)
    data("--limit", type=int, metavar="N", help="quick run on N clips, chosen deterministically and spread over "
         "classes and folds")
    data("--noise-limit", type=int, metavar="N", help="use N noise recordings, chosen deterministically and spread "
         "over scenes (default: all)")
    proto("--snrs", default=DEFAULT_SNRS, metavar="LIST", help="conditions, 'clean' or dB values (default "
          "%(default)s); write --snrs=-5,0 when the list starts with a negative number")
    proto("--seed", type=int, default=DEFAULTS["seed"], metavar="N",
          help="seed of the noise choice per (clip, window, SNR) (default %(default)s)")
    proto("--lam-grid", default=DEFAULT_LAM_GRID, metavar="LIST", help="DAS lam values to sweep (default %(default)s)")
    proto("--tune-split", metavar="SPEC", help="clips lam is chosen on, 'folds:A-B' or 'hash:P' (see below; default "
          "per dataset)")
    proto("--noise-phrases", metavar="FILE", help=f"DAS noise phrases, one per line (default: "
          f"{len(DEFAULT_NOISE_PHRASES)} urban-scene phrases, see README)")
    proto("--tau", type=float, default=DEFAULTS["tau"], metavar="X",
          help="weight of the Acevedo background profile (default %(default)s)")
    proto("--max-error-fraction", type=float, default=DEFAULTS["max_error_fraction"], metavar="X", help="fail if "
          "more than this share of clips (or noise recordings) cannot be decoded (default %(default)s)")
    comp("--num-gpus", type=float, default=DEFAULTS["num_gpus"], metavar="N",
         help="GPUs in all; 0 encodes on CPU (default %(default)g)")
    comp("--actors", type=int, metavar="N", help="encoder actors (default: one per GPU, or 1 on CPU)")
    comp("--batch-size", type=int, default=DEFAULTS["batch_size"], metavar="N",
         help="windows per encoder call (default %(default)s)")
    comp("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files (RoBERTa checkpoints)")
    add_common_options(p)
    return p


def config_from_args(a: argparse.Namespace) -> EvaluateConfig:
    phrases = tuple(read_lines_from(a.noise_phrases, "noise phrases")) if a.noise_phrases else DEFAULT_NOISE_PHRASES
    return EvaluateConfig.from_settings(**vars(a) | {"noise_phrases": phrases})


def run(c: EvaluateConfig) -> dict:
    check_output_folder(c.out)
    summary, printout = evaluation.run_evaluation(c, label.run)
    print(printout, flush=True)
    return summary


def main(argv: list[str] | None = None, prog: str = "das evaluate") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.evaluate"))
