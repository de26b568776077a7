"""The settings of a ``das label`` run (``LabelConfig``): each option's default and help, checked at construction.

Every local path is made absolute here, once; contradictory or out-of-range settings, and an ``--out``
that overlaps what the run reads, are refused (``RunRefused``, exit 2) before any work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from das_core.clap.encoder import DEFAULT_BATCH_SIZE
from das_core.errors import RunRefused
from das_core.io import storage
from das_core.io.checks import refuse_overlap
from das_core.io.inputs import DEFAULT_EXTENSIONS
from das_core.output.pack import PACK_ROWS
from das_core.report.picks import DEFAULT_EXCERPTS, check_excerpts
from das_core.runtime import engine
from das_core.scoring.scorer import DEFAULT_TOP_K
from das_core.settings import setting

# the option groups of `das label --help`
IO, NOISE, COMPUTE = "input and output", "noise (evaluation and stress tests)", "compute"
DEFAULT_MIN_ERRORS = 5


@dataclass
class LabelConfig:
    """The settings of ``das label`` (each option's default and meaning, ``das_core.settings``)."""

    input: str = setting(group=IO, metavar="URI", help="local folder, s3://bucket/prefix (listed recursively), a "
                         "single audio file, or a path list (.csv/.parquet) with a 'path' column and an optional "
                         "unique 'id' column")
    cache: str = setting(group=IO, metavar="URI", help="drift cache made by `das build-cache`")
    checkpoint: str = setting(group=IO, metavar="CKPT", help="CLAP checkpoint the cache was built with: LAION .pt "
                              "(path, s3:// URI, published name) or Hugging Face ClapModel folder (path, s3:// "
                              "prefix, hub id)")
    out: str = setting(group=IO, metavar="URI", help="output folder or s3:// prefix")
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS     # --extensions, a comma-separated list (jobs.label)
    resume: bool = setting(False, group=IO, help="continue an interrupted run into OUT: only files without a "
                           "committed result are done")
    overwrite: bool = setting(False, group=IO, help="delete what OUT holds and start again")
    embedding_dtype: str = setting("float16", group=IO, choices=("float16", "float32"),
                                   help="storage type of embeddings; scores are computed from the stored values")
    top_k: int | None = setting(None, group=IO, metavar="K", help=f"classes kept per window and per file (default "
                                f"{DEFAULT_TOP_K}, or every class of a cache with fewer; at most the cache's classes)")
    probabilities: bool = setting(False, group=IO, help="add top_k_probs: softmax over all classes of the "
                                  "checkpoint's logit scale x DAS scores")
    audio_column: str | None = setting(None, group=IO, metavar="NAME", help="Parquet shards: the column of audio "
                                       "bytes (default: the first struct of bytes/path, as Hugging Face datasets "
                                       "writes, or the first binary column)")
    id_column: str | None = setting(None, group=IO, metavar="NAME",
                                    help="Parquet shards: the column of ids (default <shard>#<row>)")
    keep_metadata: bool = setting(False, group=IO, help="tar shards: carry each sample's .json into files/ 'metadata'")
    pack_rows: int = setting(PACK_ROWS, group=IO, metavar="N", help="pack committed units into files of at least N "
                             "window rows (segments/ and files/ part-<first unit>-<last unit>.parquet; the tail of a "
                             "run smaller); 0 never packs (one part per chunk, the layout of format 2)")
    dry_run: bool = setting(False, group=IO, help="plan and print what would be done (inputs, units, skipped, what "
                            "--resume would skip); starts no Ray and loads no model")
    snr_db: float | None = setting(None, group=NOISE, metavar="X", help="mix noise into every window at X dB SNR")
    noise: str | None = setting(None, group=NOISE, metavar="URI",
                                help="folder or s3:// prefix of noise recordings (with --snr-db)")
    seed: int = setting(0, group=NOISE, help="noise choice is seeded by (seed, file, window, SNR)")
    num_gpus: float = setting(0.0, group=COMPUTE, help="GPUs to use in all; 0 encodes on CPU. Each actor takes one "
                              "GPU unless --actors is set")
    actors: int | None = setting(None, group=COMPUTE, help="encoder actors (default: one per GPU, or 1 on CPU)")
    cpus_per_actor: float = setting(1.0, group=COMPUTE, help="CPUs reserved by each encoder actor")
    torch_threads: int | None = setting(None, group=COMPUTE, help="intra-op threads per actor (default: torch's "
                                        "choice)")
    batch_size: int = setting(DEFAULT_BATCH_SIZE, group=COMPUTE, help="rows per encoder call")
    precision: str = setting("fp32", group=COMPUTE, choices=("fp32", "bf16", "fp16"),
                             help="autocast precision of the encoder")
    files_per_unit: int = setting(64, group=COMPUTE, help="files per work unit (the unit of scheduling, writing and "
                                  "resume)")
    unit_bytes: int = 512 * 2**20        # --unit-mib (jobs.label)
    chunk_windows: int | None = setting(None, group=COMPUTE, help="windows per chunk: what one block, actor call or "
                                        "write holds at most (default: whole encoder batches, at least 32 windows, "
                                        "about 30 MiB of audio)")
    tokenizer_dir: str | None = setting(None, group=COMPUTE, metavar="DIR",
                                        help="roberta-base tokenizer files (RoBERTa checkpoints)")
    local: bool = setting(False, group=COMPUTE, help="run in this process, without Ray (the same rows; one encoder, "
                          "--num-gpus 0 or 1). Default: automatic, local for small jobs (see README)")
    ray: bool = setting(False, group=COMPUTE, help="run on Ray (RAY_ADDRESS, or a private local Ray) even when the "
                        "job is small")
    max_error_fraction: float = setting(0.1, help="fail (exit 1) if more than this share of the files counted "
                                        "(plain files and shard members) cannot be decoded, and at least "
                                        "--min-errors-to-fail of them; their rows are kept. 1 never fails")
    min_errors_to_fail: int = setting(DEFAULT_MIN_ERRORS, help="the error budget fails a run only once at least "
                                      "this many files failed, so that a few bad files never fail a small "
                                      "archive (1: any share over --max-error-fraction fails)")
    progress_every_s: float = 5.0        # the progress line in a log (a terminal's line is rewritten every second)
    report: bool = True                  # write OUT/report/ at the end (das report); --no-report
    report_excerpts: int = DEFAULT_EXCERPTS   # excerpts per label in its report.html; --excerpts
    manifest_every_s: float = 60.0

    def __post_init__(self):
        # every local path made absolute once, here: a relative --out resumes, reports and rescores as an absolute one
        self.input, self.cache, self.out = (storage.absolute(u) for u in (self.input, self.cache, self.out))
        self.noise = storage.absolute(self.noise) if self.noise else self.noise
        self.checkpoint = storage.absolute_if_local(self.checkpoint)
        self.tokenizer_dir = storage.absolute(self.tokenizer_dir) if self.tokenizer_dir else self.tokenizer_dir
        self.check()

    def check(self) -> None:
        """Refuse contradictory or out-of-range settings, and an --out that overlaps what the run reads (at
        construction, before any work)."""
        refuse_overlap(self.out, "--out", self.input, "--input")
        if self.noise:
            refuse_overlap(self.out, "--out", self.noise, "--noise")
        if self.resume and self.overwrite:
            raise RunRefused("--resume and --overwrite exclude each other")
        if (self.snr_db is None) != (self.noise is None):
            raise RunRefused("--snr-db and --noise go together: give both to mix noise, or neither")
        if self.snr_db is not None and not (math.isfinite(self.snr_db) and -60 <= self.snr_db <= 120):
            raise RunRefused(f"--snr-db {self.snr_db} is outside -60..120 dB")
        if self.num_gpus < 0 or (self.actors is not None and self.actors < 1):
            raise RunRefused("--num-gpus must be >= 0 and --actors >= 1")
        for name in ("batch_size", "top_k", "files_per_unit", "chunk_windows"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RunRefused(f"--{name.replace('_', '-')} must be at least 1")
        if self.pack_rows < 0:
            raise RunRefused("--pack-rows must be at least 0 (0: never pack)")
        if self.unit_bytes < 1:
            raise RunRefused("--unit-mib must be positive")
        if not 0.0 <= self.max_error_fraction <= 1.0:
            raise RunRefused("--max-error-fraction must be between 0 and 1")
        engine.check_forced(self.local, self.ray, num_gpus=self.num_gpus, actors=self.actors)
        if self.min_errors_to_fail < 0:
            raise RunRefused("--min-errors-to-fail must be at least 0")
        check_excerpts(self.report_excerpts)

    def over_error_budget(self, errors: int, files: int) -> bool:
        """The error budget: more than ``max_error_fraction`` of ``files`` failed, and at least
        ``min_errors_to_fail`` of them (a fraction of 1 never fails)."""
        return errors >= max(self.min_errors_to_fail, 1) and errors > self.max_error_fraction * files

    @property
    def windows_per_chunk(self) -> int:
        """``chunk_windows``; by default whole encoder batches (at least 32 windows), so that chunks cost no
        zero-padded forward pass but the last of each unit."""
        if self.chunk_windows is not None:
            return self.chunk_windows
        return self.batch_size * -(-32 // self.batch_size)

    @property
    def actor_count(self) -> int:
        """``actors``; by default one per GPU, or one on CPU."""
        return self.actors or (max(1, int(self.num_gpus)) if self.num_gpus > 0 else 1)

    @property
    def gpus_per_actor(self) -> float:
        """The GPUs each encoder actor takes (``num_gpus`` shared among the actors; 0 on CPU)."""
        return self.num_gpus / self.actor_count if self.num_gpus > 0 else 0.0
