"""``das label``: label an audio archive with LAION-CLAP + DAS on Ray Data; Parquet out, nothing lost.

Argument parsing only: the run is ``das_core.labelrun`` (plan, counts, manifest) driven through the Ray
pipeline by ``jobs.pipeline.run_label``.
"""

from __future__ import annotations

import argparse
import sys

from das_core.inputs import DEFAULT_EXTENSIONS, InputError, normalise_extensions
from das_core.labelrun import RESUME_KEYS, LabelConfig, RunRefused, plan_run, print_dry_run  # noqa: F401
from das_core.storage import check_output_folder
from jobs.common import UsageError, add_common_options, job_main, settings_from_args

D = LabelConfig          # defaults are the settings object's


def build_parser(prog: str = "das label") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=(
        "Label every audio file under INPUT with zero-shot LAION-CLAP + Drift-Augmented Scoring. Files are "
        "cut into 10 s windows; each window and each file gets a DAS label and the plain zero-shot label, "
        "and window embeddings are stored for re-scoring. Writes OUT/segments/, OUT/files/ and "
        "OUT/_manifest.json. Runs on the Ray cluster at RAY_ADDRESS, or a local one."))
    a = p.add_argument_group("input and output").add_argument
    a("--input", required=True, metavar="URI", help="local folder, s3://bucket/prefix (listed recursively), a single "
      "audio file, or a manifest (.csv/.parquet) with a 'path' column and an optional unique 'id' column")
    a("--cache", required=True, metavar="URI", help="drift cache made by `das build-cache`")
    a("--checkpoint", required=True, metavar="CKPT", help="CLAP checkpoint the cache was built with: LAION .pt "
      "(path, s3:// URI, published name) or Hugging Face ClapModel folder (path, s3:// prefix, hub id)")
    a("--out", required=True, metavar="URI", help="output folder or s3:// prefix")
    a("--extensions", default=",".join(e.lstrip(".") for e in DEFAULT_EXTENSIONS),
      help="audio file extensions to pick up when listing a folder or prefix")
    a("--resume", action="store_true",
      help="continue an interrupted run into OUT: only files without a committed result are done")
    a("--overwrite", action="store_true", help="delete what OUT holds and start again")
    a("--embedding-dtype", choices=("float16", "float32"), default=D.embedding_dtype,
      help="storage type of embeddings; scores are computed from the stored values")
    a("--top-k", type=int, default=D.top_k, help="classes kept per window and per file")
    a("--probabilities", action="store_true",
      help="add top_k_probs: softmax over all classes of the checkpoint's logit scale x DAS scores")
    a("--audio-column", metavar="NAME", help="Parquet shards: the column of audio bytes (default: the first struct "
      "of bytes/path, as Hugging Face datasets writes, or the first binary column)")
    a("--id-column", metavar="NAME", help="Parquet shards: the column of ids (default <shard>#<row>)")
    a("--keep-metadata", action="store_true", help="tar shards: carry each sample's .json into files/ 'metadata'")
    a("--dry-run", action="store_true", help="plan and print what would be done (inputs, units, skipped, what "
      "--resume would skip); starts no Ray and loads no model")
    a = p.add_argument_group("noise (evaluation and stress tests)").add_argument
    a("--snr-db", type=float, metavar="X", help="mix noise into every window at X dB SNR")
    a("--noise", metavar="URI", help="folder or s3:// prefix of noise recordings (with --snr-db)")
    a("--seed", type=int, default=D.seed, help="noise choice is seeded by (seed, file, window, SNR)")
    a = p.add_argument_group("compute").add_argument
    a("--num-gpus", type=float, default=D.num_gpus,
      help="GPUs to use in all; 0 encodes on CPU. Each actor takes one GPU unless --actors is set")
    a("--actors", type=int, help="encoder actors (default: one per GPU, or 1 on CPU)")
    a("--cpus-per-actor", type=float, default=D.cpus_per_actor, help="CPUs reserved by each encoder actor")
    a("--torch-threads", type=int, help="intra-op threads per actor (default: torch's choice)")
    a("--batch-size", type=int, default=D.batch_size, help="rows per encoder call")
    a("--precision", choices=("fp32", "bf16", "fp16"), default=D.precision, help="autocast precision of the encoder")
    a("--files-per-unit", type=int, default=D.files_per_unit,
      help="files per work unit (the unit of scheduling, writing and resume)")
    a("--unit-mib", type=float, default=D.unit_bytes / 2**20, help="input bytes per work unit, where sizes are known")
    a("--chunk-windows", type=int, help="windows per chunk: what one block, actor call or write holds at most "
      "(default: whole encoder batches, at least 32 windows, about 30 MiB of audio)")
    a("--tokenizer-dir", metavar="DIR", help="roberta-base tokenizer files (RoBERTa checkpoints)")
    p.add_argument("--no-report", action="store_true",
                   help="do not write OUT/report/ (report.md and figures, see `das report`) at the end")
    p.add_argument("--max-error-fraction", type=float, default=D.max_error_fraction,
                   help="fail (exit 1) if more than this share of files cannot be decoded; their rows are kept")
    add_common_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> LabelConfig:
    try:
        extensions = normalise_extensions(args.extensions)
    except InputError as exc:
        raise UsageError(f"--extensions {args.extensions!r}: {exc}") from None
    return settings_from_args(LabelConfig, args, extensions=extensions, unit_bytes=int(args.unit_mib * 2**20),
                              report=not args.no_report)


def run(c: LabelConfig) -> dict:
    """Label ``c.input`` into ``c.out``; the final manifest (the plan's summary with ``dry_run``)."""
    if c.dry_run:                    # no Ray import, no model
        check_output_folder(c.out)
        return print_dry_run(plan_run(c))
    from jobs.pipeline import run_label

    return run_label(c)


def main(argv: list[str] | None = None, prog: str = "das label") -> int:
    return job_main(argv, prog, build_parser, config_from_args, run)


if __name__ == "__main__":
    sys.exit(main(prog="python -m jobs.label"))
