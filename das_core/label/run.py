"""A ``das label`` run without Ray: its settings, its plan, the resume rule, its manifest and its counts.

The job (``jobs/label.py``) parses arguments into a ``LabelConfig``, calls
``plan_run``, runs the Ray pipeline over the plan's units and feeds each
chunk's statistics to ``RunCounts``; everything that can be refused is refused
by ``plan_run`` before any audio is decoded or any model loaded.

Resume rule: ``--resume`` continues the run whose work manifest is in OUT.
It needs the same settings (``RESUME_KEYS``: what changes the rows) and redoes
every unit that is not committed, after deleting whatever parts it left. The
input is listed again: files that are not in any planned unit (an archive
that grew) become new units appended to the work manifest; the planned units
never change, so their part names and rows stay valid.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pyarrow.compute as pc

from das_core import __version__
from das_core.audio.decode import MIN_TAIL_SECONDS, WINDOW_SECONDS
from das_core.clap.encoder import DEFAULT_BATCH_SIZE
from das_core.errors import WRITE_ERRNOS, Refused, RunFailed
from das_core.io import storage
from das_core.io.inputs import DEFAULT_EXTENSIONS, InputError, Skipped, list_input_table, list_inputs, normalise_uri
from das_core.io.storage import check_output_folder
from das_core.label.decode import DecodeSettings
from das_core.label.encode import EncodeSettings
from das_core.label.sink import WriteSettings
from das_core.label.units import plan_units, read_unit_table, units_per_row_group, write_unit_table
from das_core.output.format import FILES_DIR, FORMAT_VERSION, PIECES_DIR, SEGMENTS_DIR
from das_core.output.lease import Lease, sigterm_as_interrupt
from das_core.output.manifest import MANIFEST, RunManifest
from das_core.output.record import cache_block, ended_by, utc_now, weights_line
from das_core.output.store import OutputStore
from das_core.output.tables import count_outcomes
from das_core.runtime import engine
from das_core.runtime.progress import steady_rate
from das_core.scoring.scorer import DEFAULT_TOP_K
from das_core.settings import setting

log = logging.getLogger("das")


# Settings that must not change between a run and its --resume: each changes the rows.
# batch_size and precision fix the encoder's floating-point path, so they are part of "exactly the same rows".
RESUME_KEYS = ("input", "cache_fingerprint", "checkpoint_fingerprint", "snr_db", "seed", "noise", "top_k",
               "embedding_dtype", "batch_size", "precision", "probabilities", "audio_column", "id_column",
               "keep_metadata")


class RunRefused(Refused):
    """A label run that cannot start as asked; the message says what to do."""


IO, NOISE, COMPUTE = "input and output", "noise (evaluation and stress tests)", "compute"
DEFAULT_MIN_ERRORS = 5


@dataclass
class LabelConfig:
    """The settings of ``das label`` (each option's default and meaning, ``das_core.settings``)."""

    input: str = setting(group=IO, metavar="URI", help="local folder, s3://bucket/prefix (listed recursively), a "
                         "single audio file, or a manifest (.csv/.parquet) with a 'path' column and an optional "
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
        storage.refuse_overlap(self.out, "--out", self.input, "--input")
        if self.noise:
            storage.refuse_overlap(self.out, "--out", self.noise, "--noise")
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
        if self.unit_bytes < 1:
            raise RunRefused("--unit-mib must be positive")
        if not 0.0 <= self.max_error_fraction <= 1.0:
            raise RunRefused("--max-error-fraction must be between 0 and 1")
        engine.check_forced(self.local, self.ray, num_gpus=self.num_gpus, actors=self.actors)
        if self.min_errors_to_fail < 0:
            raise RunRefused("--min-errors-to-fail must be at least 0")

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
        return self.num_gpus / self.actor_count if self.num_gpus > 0 else 0.0


@dataclass
class LabelPlan:
    config: LabelConfig
    store: OutputStore
    cache: object
    checkpoint_id: str
    checkpoint_info: dict
    units: pa.Table                     # every unit of the run (the work manifest)
    todo: pa.Table                      # the units this invocation labels
    n_inputs: int
    skipped: Skipped
    noise_uris: tuple[str, ...]
    previous: RunManifest | None        # the manifest found in OUT (resume)
    prior_counts: dict                  # counts of the committed units (resume)
    write_unit_table: bool           # a new plan, or a resume that appended units
    added_files: int = 0                # --resume: files new since the run was planned

    @property
    def todo_files(self) -> int:
        return int(pc.sum(pc.list_value_length(self.todo.column("file_ids"))).as_py() or 0)

    def decode_settings(self) -> DecodeSettings:
        c = self.config
        return DecodeSettings(chunk_windows=c.windows_per_chunk, snr_db=c.snr_db, seed=c.seed,
                              noise_uris=self.noise_uris, extensions=c.extensions, audio_column=c.audio_column,
                              id_column=c.id_column, keep_metadata=c.keep_metadata)

    def encode_settings(self) -> EncodeSettings:
        c = self.config
        return EncodeSettings(checkpoint=c.checkpoint, num_gpus_per_actor=c.gpus_per_actor,
                              cpus_per_actor=c.cpus_per_actor, precision=c.precision, max_batch_size=c.batch_size,
                              torch_threads=c.torch_threads, tokenizer_dir=c.tokenizer_dir)

    def write_settings(self) -> WriteSettings:
        c = self.config
        return WriteSettings(top_k=c.top_k, embedding_dtype=c.embedding_dtype, snr_db=c.snr_db,
                             seed=c.seed if c.snr_db is not None else None,
                             logit_scale=self.checkpoint_info.get("logit_scale") if c.probabilities else None)

    def row_groups_to_do(self) -> dict[int, list[str]] | None:
        """Per row group of the work manifest, the units to do in it; None when every unit is to do."""
        if len(self.todo) == len(self.units):
            return None
        per_group = units_per_row_group(len(self.units))
        index = {u: i for i, u in enumerate(self.units.column("unit").to_pylist())}
        keep: dict[int, list[str]] = {}
        for u in self.todo.column("unit").to_pylist():
            keep.setdefault(index[u] // per_group, []).append(u)
        return keep


def settings_of(c: LabelConfig, cache_fingerprint: str, checkpoint_id: str) -> dict:
    return {"input": normalise_uri(c.input), "cache_fingerprint": cache_fingerprint,
            "checkpoint_fingerprint": checkpoint_id, "snr_db": c.snr_db, "seed": c.seed,
            "noise": normalise_uri(c.noise) if c.noise else None, "top_k": c.top_k,
            "embedding_dtype": c.embedding_dtype, "batch_size": c.batch_size, "precision": c.precision,
            "probabilities": c.probabilities, "audio_column": c.audio_column, "id_column": c.id_column,
            "keep_metadata": c.keep_metadata}


def _list(c: LabelConfig) -> tuple[pa.Table, Skipped, tuple[str, ...]]:
    try:
        inputs, skipped = list_input_table(c.input, c.extensions)
    except InputError as exc:
        raise RunRefused(str(exc)) from None
    noise_uris: tuple[str, ...] = ()
    if c.noise:
        try:
            noise_uris = tuple(f.path for f in list_inputs(c.noise))
        except InputError as exc:
            raise RunRefused(f"--noise: {exc}") from None
    return inputs, skipped, noise_uris


def plan_run(c: LabelConfig) -> LabelPlan:
    """Check everything, list the input (or read the planned units back on --resume) and choose the units to do."""
    from das_core.clap import checkpoint as ckpt
    from das_core.scoring.cache import DriftCache

    c.check()
    store = OutputStore(c.out)
    previous = RunManifest.read(c.out)
    has_output = store.has_output()
    if has_output and not (c.resume or c.overwrite):
        raise RunRefused(holds_message(c.out, previous))
    cache = DriftCache.load(c.cache)
    c = replace(c, top_k=cache.top_k_for(c.top_k, c.cache, DEFAULT_TOP_K))
    local = ckpt.resolve(c.checkpoint)
    checkpoint_id = ckpt.fingerprint(local)
    cache.check_encoder(checkpoint_id, c.checkpoint)
    settings = settings_of(c, cache.fingerprint, checkpoint_id)
    units = read_unit_table(c.out) if c.resume and has_output else None
    if c.resume and has_output:
        _check_resumable(c, previous, settings, units)
    inputs, skipped, noise_uris = _list(c)
    # after the input is listed: a bad input is refused before torch is imported; a dry run never imports it
    info = ckpt.describe(local, without_torch=c.dry_run)
    if units is not None:
        planned = pc.list_flatten(units.column("file_ids"))
        new = inputs.filter(pc.invert(pc.is_in(inputs.column("file_id"), planned)))
        added = plan_units(new, c.files_per_unit, c.unit_bytes, first_unit=len(units))
        if len(added):
            units = pa.concat_tables([units, added])
        listing = store.listing()
        committed = set(listing.committed_units())
        todo = units.filter(pc.invert(pc.is_in(units.column("unit"), pa.array(sorted(committed), pa.string()))))
        prior = count_outcomes(store.read_files(sorted(committed), ["status", "error_kind", "n_segments"]))
        n_inputs = int(pc.sum(pc.list_value_length(units.column("file_ids"))).as_py() or 0)
        return LabelPlan(c, store, cache, checkpoint_id, info, units, todo, n_inputs, skipped, noise_uris,
                         previous, prior, write_unit_table=bool(len(added)), added_files=len(new))
    units = plan_units(inputs, c.files_per_unit, c.unit_bytes)
    return LabelPlan(c, store, cache, checkpoint_id, info, units, units, len(inputs), skipped, noise_uris,
                     previous if c.resume else None, count_outcomes(_empty_files()), write_unit_table=True)


def holds_message(out: str, previous: RunManifest | None) -> str:
    """Why a plain run into ``out`` is refused, and what to do, by the state of the run found there."""
    last = previous.runs[-1] if previous and previous.runs else {}
    reason = f": {last['reason']}" if last.get("reason") else ""
    status = previous.status if previous else None
    if status == "complete":
        return (f"output {out} already holds a complete run (finished {last.get('finished', '?')}); pass --resume "
                "to add files new in the input, --overwrite to start again, or choose another --out")
    if status in ("interrupted", "failed"):
        article = "an" if status == "interrupted" else "a"
        return (f"output {out} holds {article} {status} run (started {last.get('started', '?')}{reason}); pass "
                "--resume to continue it (committed units are kept) or --overwrite to start again")
    if status == "running":
        return (f"output {out} holds a run that stopped without recording its end (started "
                f"{last.get('started', '?')}; its process was killed); pass --resume to continue it (committed "
                "units are kept) or --overwrite to start again")
    return (f"output {out} already holds results (status: {status or f'no {MANIFEST}'}); pass --resume to continue "
            "that run or --overwrite to replace it")


def _empty_files() -> pa.Table:
    from das_core.output.format import FILES_SCHEMA

    return FILES_SCHEMA.empty_table()


def _check_resumable(c: LabelConfig, previous: RunManifest | None, settings: dict, units: pa.Table | None) -> None:
    if previous is None:
        raise RunRefused(f"output {c.out} has results but no {MANIFEST}: it was not written by das label; "
                         f"use --overwrite or another --out")
    if previous.format_version != FORMAT_VERSION:
        raise RunRefused(f"output {c.out} was written by das {previous.das_version} in an older "
                         f"layout; --resume cannot continue it: use --overwrite or another --out")
    before = previous.settings
    changed = [k for k in RESUME_KEYS if before.get(k) != settings[k]]
    if changed:
        raise RunRefused("cannot --resume with different settings (" + ", ".join(
            f"{k}: was {before.get(k)!r}, now {settings[k]!r}" for k in changed)
            + "); use --overwrite or another --out")


ERROR_EXAMPLES = 5        # failed files named in the summary (and the run's entry in the manifest)


@dataclass
class RunCounts:
    """Counts of a run kept up to date from chunk statistics (``files/`` is never read back for them).

    One scale: a "file" is a ``files/`` row, i.e. a plain file or a member of a tar or Parquet shard.
    Shards are units of work; how many members one holds is known only once it is decoded.
    """

    files: int = 0
    ok: int = 0
    error: int = 0
    segments: int = 0
    windows: int = 0
    errors_by_kind: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    nodes: set = field(default_factory=set)
    error_examples: list = field(default_factory=list)      # a few "path (kind)" of files that failed

    def add(self, stats: dict) -> None:
        self.skipped.update(json.loads(stats.get("skipped") or "{}"))
        room = ERROR_EXAMPLES - len(self.error_examples)
        if room > 0:
            self.error_examples.extend(json.loads(stats.get("error_examples") or "[]")[:room])
        self.ok += stats["files_ok"]
        self.error += stats["files_error"]
        self.files += stats["files_ok"] + stats["files_error"]
        self.segments += stats["segments"]
        self.windows += stats["windows"]
        self.errors_by_kind.update(json.loads(stats["errors_by_kind"]))
        self.nodes.update(n for n in (stats.get("decoded_on"), stats.get("node")) if n)

    def total(self, prior: dict) -> dict:
        kinds = Counter(prior.get("errors_by_kind") or {})
        kinds.update(self.errors_by_kind)
        skipped = Counter(prior.get("skipped_members") or {})
        skipped.update(self.skipped)
        return {"files": prior["files"] + self.files, "ok": prior["ok"] + self.ok,
                "error": prior["error"] + self.error, "segments": prior["segments"] + self.segments,
                "errors_by_kind": dict(sorted(kinds.items())),
                "skipped_members": dict(sorted(skipped.items()))}


def run_manifest(p: LabelPlan, status: str, counts: dict, runs: list[dict]) -> RunManifest:
    """The ``_manifest.json`` of a label run (one schema, read back by rescore, evaluate and --resume)."""
    c, cache = p.config, p.cache
    return RunManifest(
        job="label", status=status, das_version=__version__, format_version=FORMAT_VERSION,
        settings=settings_of(c, cache.fingerprint, p.checkpoint_id),
        cache=cache_block(c.cache, cache),
        checkpoint={"uri": c.checkpoint, "fingerprint": p.checkpoint_id, **p.checkpoint_info},
        counts=counts, runs=tuple(runs),
        extra={"windows": {"window_s": WINDOW_SECONDS, "hop_s": WINDOW_SECONDS, "min_tail_s": MIN_TAIL_SECONDS,
                           "file_pooling": "max over windows"},
               "work": {"units": len(p.units), "inputs": p.n_inputs, "files_per_unit": c.files_per_unit,
                        "scale": "counts.files = files/ rows (plain files and shard members); inputs = listed "
                                 "entries (a shard is one)",
                        "unit_bytes": c.unit_bytes, "chunk_windows": c.windows_per_chunk},
               "skipped": _skipped(p, counts)})


def _skipped(p: LabelPlan, counts: dict) -> dict:
    """Inputs not labelled: what the listing skipped, plus shard members skipped while decoding."""
    listed = p.skipped.as_dict()
    by_reason = Counter(listed["by_reason"])
    by_reason.update(counts.get("skipped_members") or {})
    return {"total": sum(by_reason.values()), "by_reason": dict(sorted(by_reason.items())),
            "examples": listed["examples"]}


def new_run_entry(p: LabelPlan) -> dict:
    return {"started": utc_now(), "units_to_do": len(p.todo),
            "files_to_do": p.todo_files}


def print_dry_run(p: LabelPlan) -> dict:
    """Print what the run would do; return it as a dict."""
    c = p.config
    skipped = p.skipped.as_dict()
    lines = [f"das label --dry-run: {c.input} -> {c.out}",
             f"  inputs:    {p.n_inputs} file(s) in {len(p.units)} unit(s) of <= {c.files_per_unit} files / "
             f"{c.unit_bytes / 2**20:g} MiB",
             f"  skipped:   {skipped['total']}" + "".join(
                 f"; {reason} {n} (e.g. {', '.join(skipped['examples'].get(reason, []))})"
                 for reason, n in skipped["by_reason"].items()),
             f"  to do:     {len(p.todo)} unit(s), {p.todo_files} file(s)"
             + (f" ({len(p.units) - len(p.todo)} unit(s) already committed: --resume skips them)"
                if len(p.todo) != len(p.units) else ""),
             f"  chunks:    <= {c.windows_per_chunk} windows each; encoder batch {c.batch_size}",
             f"  cache:     {len(p.cache.labels)} classes, lam {p.cache.lam:g}; checkpoint "
             f"{p.checkpoint_info.get('weights', '')} weights",
             "  nothing was written; no Ray, no model"]
    print("\n".join(lines), flush=True)
    return {"dry_run": True, "inputs": p.n_inputs, "units": len(p.units), "todo_units": len(p.todo),
            "todo_files": p.todo_files, "skipped": skipped}


def _not_done_text(not_done: dict) -> str:
    files, shards = not_done.get("files", 0), not_done.get("shards", 0)
    return ((f" + {files} not done" if files else "")
            + (f" (+ {shards} shard(s) not finished, members not yet counted)" if shards else ""))


def _errors_text(manifest: dict) -> str:
    kinds = ", ".join(f"{k} {v}" for k, v in manifest["counts"]["errors_by_kind"].items()) or "none"
    examples = (manifest["runs"] or [{}])[-1].get("error_examples") or []
    return kinds + (f"; e.g. {', '.join(examples)}" if examples else "")


def summary(manifest: dict, out: str, wall: float, segments_now: int, not_done: dict, steady: float | None) -> str:
    """The closing lines of ``das label``. "files" are ``files/`` rows (plain files and shard members);
    ``not_done``: plain files and shards of the plan that no row counts yet (never negative)."""
    counts = manifest["counts"]
    files_in = counts["files"] + not_done.get("files", 0)
    skipped = manifest.get("skipped") or {}
    return (f"das label: {manifest['status']} in {wall:.1f} s\n"
          f"  files in:  {files_in} = {counts['ok']} ok + {counts['error']} error" + _not_done_text(not_done) + "\n"
          + (f"  skipped:   {skipped['total']} not picked up ("
             + ", ".join(f"{k} {v}" for k, v in skipped["by_reason"].items()) + ")\n" if skipped.get("total") else "")
          + f"  segments:  {counts['segments']} ({segments_now} this run, "
          f"{segments_now / wall if wall > 0 else 0:.2f} clips/s"
          + (f"; {steady:.2f} windows/s after start-up" if steady else "") + ")\n"
          f"  errors:    {_errors_text(manifest)}\n"
          + weights_line(manifest["checkpoint"].get("weights"))
          + f"\n  output:    {out} (segments/, files/, _manifest.json)")


class UnitTracker:
    """Which units have all their chunks written, and which of their chunks wrote pieces."""

    def __init__(self):
        self.seen: dict[str, set[int]] = {}
        self.expected: dict[str, int] = {}
        self.pieces: dict[str, list[int]] = {}
        self.whole: set[str] = set()

    def is_repeat(self, stats: dict) -> bool:
        """A chunk already counted: a retried task may hand the driver its statistics twice; the part it
        wrote has the same name and overwrote the first, so it must neither count nor commit twice."""
        unit = stats["unit"]
        return unit in self.whole or stats["chunk"] in self.seen.get(unit, ())

    def add(self, stats: dict) -> tuple[str, list[int]] | None:
        """Count a chunk (repeats are ignored); the unit and its pieces' chunks once the unit is whole."""
        if self.is_repeat(stats):
            return None
        unit = stats["unit"]
        self.seen.setdefault(unit, set()).add(stats["chunk"])
        if stats["pieces"]:
            self.pieces.setdefault(unit, []).append(stats["chunk"])
        if stats["last"]:
            self.expected[unit] = stats["chunk"] + 1
        if len(self.seen[unit]) == self.expected.get(unit):
            del self.seen[unit], self.expected[unit]
            self.whole.add(unit)
            return unit, sorted(self.pieces.pop(unit, []))
        return None

    @property
    def open_units(self) -> int:
        return len(self.seen)


class LabelRun:
    """The driver's side of one label run, everything but Ray: what is written before, during and after.

    ``start`` prepares OUT (--overwrite, --resume clean-up, the work manifest,
    a ``running`` manifest); ``observe`` counts each chunk's statistics and
    returns the unit they make whole, to be committed; ``finish`` writes the
    final manifest, prints the summary and says whether the run failed;
    ``abandon`` records a run that ended otherwise as ``failed`` or ``interrupted``.
    """

    def __init__(self, p: LabelPlan, run_id: str | None = None):
        c = p.config
        self.plan = p
        self.runs = list(p.previous.runs) if c.resume and p.previous else []
        self.engine, self.engine_reason = engine.choose(c.local, c.ray, engine.label_too_big(
            p.todo, c.num_gpus, c.actor_count))
        self.this_run = {**({"run_id": run_id} if run_id else {}), **new_run_entry(p),
                         "device": "cuda" if c.num_gpus > 0 else "cpu", "torch_threads": c.torch_threads,
                         "engine": self.engine}
        self.counts, self.tracker = RunCounts(), UnitTracker()
        self.t0 = self.last_progress = self.last_manifest = time.monotonic()
        self.first_output: tuple[float, int] | None = None
        self.chunks = 0                           # chunks counted (repeats excluded)
        self.aborted: str | None = None          # why the run stopped early
        self.failure: RunFailed | None = None     # set by finish: the run's result is not acceptable
        self.started = False                      # a "running" manifest was written
        shard = p.todo.column("shard").to_pylist() if "shard" in p.todo.column_names else [None] * len(p.todo)
        self.shard_units = {u for u, k in zip(p.todo.column("unit").to_pylist(), shard) if k}
        self.plain_todo = p.todo_files - len(self.shard_units)   # a shard unit lists its shard: one entry
        self.plain_counted = 0                    # files/ rows counted this run from plain-file units

    def start(self) -> bool:
        """Prepare OUT; False (and a line printed) when --resume finds every unit committed."""
        p, c, store = self.plan, self.plan.config, self.plan.store
        if c.overwrite and store.has_output():
            log.info("--overwrite: deleting previous results in %s", c.out)
            store.remove_all()
        if p.checkpoint_info.get("weights") == "random":
            log.warning("checkpoint %s has RANDOM weights (a das test/demo checkpoint): labels are meaningless",
                        c.checkpoint)
        if c.resume and p.previous and not len(p.todo):
            print(f"das label: nothing to do: all {len(p.units)} unit(s) of {c.out} are committed "
                  f"(status {p.previous.status})", flush=True)
            return False
        if c.resume and p.previous:
            removed = store.remove_units(set(p.todo.column("unit").to_pylist()), store.listing())
            log.info("resuming: %d of %d unit(s) committed, %d to do (%d file(s), %d of them new in the input); "
                     "removed %d part(s) left by unfinished units", len(p.units) - len(p.todo), len(p.units),
                     len(p.todo), p.todo_files, p.added_files, removed)
        if p.write_unit_table:
            write_unit_table(c.out, p.units)
        self._write_manifest("running", p.prior_counts)
        self.started = True
        log.info("labelling %d file(s) in %d unit(s) with %d encoder actor(s) (%s), %d class(es), lam=%g; "
                 "engine: %s (%s)", p.todo_files, len(p.todo), c.actor_count,
                 f"{c.gpus_per_actor:g} GPU each" if c.gpus_per_actor else "CPU", len(p.cache.labels), p.cache.lam,
                 self.engine, self.engine_reason)
        self.t0 = self.last_progress = self.last_manifest = time.monotonic()
        return True

    def _write_manifest(self, status: str, counts: dict) -> dict:
        manifest = run_manifest(self.plan, status, counts, self.runs + [self.this_run])
        manifest.write(self.plan.config.out)
        return manifest.to_dict()

    def observe(self, stats: dict, committed: int = 0) -> tuple[str, list[int]] | None:
        """Count one chunk's statistics; the unit (with its pieces' chunks) they make whole, if any.

        Sets ``aborted`` once the error budget is exceeded for good (``known_files``).
        """
        if self.tracker.is_repeat(stats):
            return None               # a retried task's chunk, already counted (its part was overwritten)
        p, c, counts = self.plan, self.plan.config, self.counts
        counts.add(stats)
        if stats["unit"] not in self.shard_units:
            self.plain_counted += stats["files_ok"] + stats["files_error"]
        now = time.monotonic()
        self.chunks += 1
        if self.first_output is None:
            # start-up (Ray Data planning, actors importing and loading the model) ends with the first output
            self.first_output = (now - self.t0, stats["windows"])
        if now - self.last_manifest >= c.manifest_every_s:
            self.last_manifest = now
            self._write_manifest("running", counts.total(p.prior_counts))
        errors, known = p.prior_counts["error"] + counts.error, self.known_files()
        if c.over_error_budget(errors, known):
            self.aborted = (f"{errors} of the {known} files known so far failed to decode, more than "
                            f"--max-error-fraction {c.max_error_fraction:g} of them however the rest turns out; "
                            "stopping early")
        return self.tracker.add(stats)

    def known_files(self) -> int:
        """Files (``files/`` rows) known so far: those counted, plus the plain files still to do. A shard's
        members are known only as they are decoded, so the early stop never judges them before."""
        return (self.plan.prior_counts["files"] + self.counts.files
                + max(self.plain_todo - self.plain_counted, 0))

    def not_done(self) -> dict:
        """Plain files and shards of this run's units that no counted row covers (never negative)."""
        return {"files": max(self.plain_todo - self.plain_counted, 0),
                "shards": len(self.shard_units - self.tracker.whole)}

    def check_whole(self) -> None:
        """After the pipeline: every unit it started is whole, unless the run stopped early."""
        if self.aborted is None and self.tracker.open_units:
            raise RuntimeError(f"pipeline ended with {self.tracker.open_units} unit(s) not whole")

    def abandon(self, exc: BaseException) -> None:
        """Record a run that ends by ``exc`` as ``interrupted`` (Ctrl-C, SIGTERM) or ``failed`` with the one-line
        reason, so that no manifest is left ``running``; the next plain run then says what to do."""
        if not self.started:
            return
        status, reason = ended_by(exc)
        self.this_run.update({"finished": utc_now(),
                              "ended": status, "reason": reason, "files_done": self.counts.files,
                              "error_examples": self.counts.error_examples})
        try:
            self._write_manifest(status, self.counts.total(self.plan.prior_counts))
        except Exception as write_error:  # noqa: BLE001 - the run's own error is the one to report
            log.error("could not record the %s run in %s (%s)", status, self.plan.config.out, write_error)
        self.started = False

    def finish(self) -> dict:
        """Write the final manifest and print the summary; RunFailed when too many files failed."""
        p, c, counts, run = self.plan, self.plan.config, self.counts, self.this_run
        removed = sum(storage.remove_temporaries(p.store.path(sub)) for sub in (SEGMENTS_DIR, FILES_DIR, PIECES_DIR))
        if removed:
            log.info("removed %d temporary file(s) left by workers that died while writing", removed)
        wall = time.monotonic() - self.t0
        total = counts.total(p.prior_counts)
        run.update({"finished": utc_now(), "wall_time_s": round(wall, 3),
                    "files_done": counts.files, "segments_done": counts.segments,
                    "segments_per_s": round(counts.segments / wall, 4) if wall > 0 else None,
                    "nodes": len(counts.nodes), "error_examples": counts.error_examples})
        if self.first_output is not None:
            run["startup_s"] = round(self.first_output[0], 3)
            steady = steady_rate(*self.first_output, self.chunks, wall, counts.windows)
            if steady is not None:          # too few chunks after start-up to measure: left out
                run.update(steady_segments_per_s=round(steady, 4), steady_chunks=self.chunks - 1)
        failed = self.aborted or (c.over_error_budget(total["error"], total["files"]) and
                                  f"{total['error']} of {total['files']} files failed to decode (more than "
                                  f"--max-error-fraction {c.max_error_fraction:g}, and at least "
                                  f"--min-errors-to-fail {c.min_errors_to_fail})")
        run.update({"ended": "failed" if failed else "complete", **({"reason": failed} if failed else {})})
        manifest = self._write_manifest("failed" if failed else "complete", total)
        self.started = False
        print(summary(manifest, c.out, wall, counts.segments, self.not_done(), run.get("steady_segments_per_s")),
              flush=True)
        self.failure = (RunFailed(f"{failed}. Rows for every processed file are in {c.out}/files/ "
                                  "(see the 'error' column)") if failed else None)
        return manifest


def run_label(c: LabelConfig, run_units: Callable[[LabelRun], None]) -> dict:
    """A label run: the lock on OUT, plan, ``run_units(run)`` (the job's pipeline, which feeds ``run.observe``),
    the final manifest, the summary and the report; returns the manifest. A worker's disk-full or permission
    error ends the run as one ``RunFailed`` that says what is kept; any other end is recorded in the manifest
    (``LabelRun.abandon``) before it is raised."""
    from das_core.report.run import report_after_run

    check_output_folder(c.out)
    command = "das label" + (" --resume" if c.resume else " --overwrite" if c.overwrite else "")
    with sigterm_as_interrupt(), Lease(c.out, command) as lease:
        run = LabelRun(plan_run(c), run_id=lease.run_id)
        try:
            if not run.start():
                return run.plan.previous.to_dict()
            run_units(run)
        except BaseException as exc:
            refusal = write_refusal(exc, c.out) if isinstance(exc, Exception) else None
            run.abandon(refusal or exc)
            if refusal is None:
                raise
            raise refusal from None
        manifest = run.finish()
        if c.report:
            report_after_run(c.out)
    if run.failure:
        raise run.failure
    return manifest


def write_refusal(exc: BaseException, out: str) -> RunFailed | None:
    """A RunFailed for the disk-full or permission error behind ``exc`` (a worker's write, wrapped by Ray)."""
    for _ in range(8):
        cause = getattr(exc, "cause", None)       # a Ray task error: the worker's own exception
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
            continue
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            # the part being written was a hidden temporary file, now removed: what is visible is committed
            return RunFailed(f"cannot write {exc.filename or out} ({exc.strerror or exc}); the units committed "
                             f"so far are kept: free space or fix the permissions of {out}, then rerun with --resume")
        exc = exc.__cause__ or exc.__context__
        if exc is None:
            return None
    return None
