"""``das build-cache``: encode K x (1 + P) prompts once into a DriftCache file (``das_core.build``)."""

from __future__ import annotations

import argparse
import sys

from das_core.build import BuildConfig, build_cache
from jobs.common import add_common_options, job_main, settings_from_args

D = BuildConfig          # defaults are the settings object's


def build_parser(prog: str = "das build-cache") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=(
        "Encode each class's clean prompt and its noise-conditioned prompts once, with the text tower of "
        "CHECKPOINT, and save the drift cache DAS scores with (METHOD.md section 2)."))
    a = p.add_argument
    a("--labels", required=True, metavar="FILE", help="class labels, one per line (local path or s3://); dataset "
      "spellings such as dog_bark are turned into prompt text ('dog bark')")
    a("--checkpoint", required=True, metavar="CKPT", help="CLAP checkpoint: LAION .pt (local path, s3:// URI or a "
      "published name such as 630k-audioset-best) or Hugging Face ClapModel folder (local, s3:// prefix or hub id "
      "such as laion/clap-htsat-unfused)")
    a("--out", required=True, metavar="URI", help="where to write the cache (.npz; local or s3://)")
    a("--noise-phrases", metavar="FILE",
      help="noise phrases, one per line (default: 8 urban-scene phrases, see README)")
    a("--lam", type=float, default=D.lam,
      help=f"weight of the drift bonus (default {D.lam}, chosen here; the paper only calls it small)")
    a("--clean-template", default=D.clean_template, help=f"default {D.clean_template!r}")
    a("--clean-templates", metavar="FILE", help="a prompt ensemble for the clean prototype: templates with {label}, "
      "one per line; C_c is the renormalised mean of their unit embeddings (instead of --clean-template)")
    a("--noisy-template", default=D.noisy_template, help=f"default {D.noisy_template!r}")
    a("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files, for LAION checkpoints with a RoBERTa "
      "text tower when offline (Hugging Face folders carry their own tokenizer)")
    a("--device", default=D.device, help="cpu or cuda[:N] (default cpu; text encoding is cheap)")
    add_common_options(p)
    return p


def run(c: BuildConfig) -> None:
    print(build_cache(c), flush=True)


def main(argv: list[str] | None = None, prog: str = "das build-cache") -> int:
    return job_main(argv, prog, build_parser, lambda args: settings_from_args(BuildConfig, args), run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.build_cache"))
