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

import dataclasses
import datetime as dt
import json
import math
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from das_core import __version__
from das_core.errors import Refused
from das_core.audio import MIN_TAIL_SECONDS, WINDOW_SECONDS
from das_core.inputs import DEFAULT_EXTENSIONS, InputError, Skipped, list_input_table, list_inputs, normalise_uri
from das_core.results import FORMAT_VERSION, MANIFEST, OutputStore, count_outcomes
from das_core.units import plan_units, read_work_manifest

DEFAULT_TOP_K = 5
DEFAULT_BATCH_SIZE = 16

# Settings that must not change between a run and its --resume: each changes the rows.
# batch_size and precision fix the encoder's floating-point path, so they are part of "exactly the same rows".
RESUME_KEYS = ("input", "cache_fingerprint", "checkpoint_fingerprint", "snr_db", "seed", "noise", "top_k",
               "embedding_dtype", "batch_size", "precision", "probabilities", "audio_column", "id_column",
               "keep_metadata")


class RunRefused(Refused):
    """A label run that cannot start as asked; the message says what to do."""


@dataclass
class LabelConfig:
    input: str
    cache: str
    checkpoint: str
    out: str
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
    snr_db: float | None = None
    noise: str | None = None
    seed: int = 0
    num_gpus: float = 0.0
    actors: int | None = None
    cpus_per_actor: float = 1.0
    batch_size: int = DEFAULT_BATCH_SIZE
    top_k: int = DEFAULT_TOP_K
    embedding_dtype: str = "float16"
    precision: str = "fp32"
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    probabilities: bool = False
    audio_column: str | None = None
    id_column: str | None = None
    keep_metadata: bool = False
    max_error_fraction: float = 0.1
    files_per_unit: int = 64
    unit_bytes: int = 512 * 2**20
    chunk_windows: int | None = None     # default: whole encoder batches, at least 32 windows
    torch_threads: int | None = None
    tokenizer_dir: str | None = None
    progress_every_s: float = 15.0
    report: bool = True                  # write OUT/report/ at the end (das report)
    manifest_every_s: float = 60.0

    def check(self) -> None:
        """Refuse contradictory or out-of-range settings (before any I/O)."""
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

    @property
    def windows_per_chunk(self) -> int:
        """``chunk_windows``; by default whole encoder batches (at least 32 windows), so that chunks cost no
        zero-padded forward pass but the last of each unit."""
        if self.chunk_windows is not None:
            return self.chunk_windows
        return self.batch_size * -(-32 // self.batch_size)


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
    previous: dict | None
    prior_counts: dict                  # counts of the committed units (resume)
    write_work_manifest: bool           # a new plan, or a resume that appended units
    added_files: int = 0                # --resume: files new since the run was planned

    @property
    def todo_files(self) -> int:
        return int(pc.sum(pc.list_value_length(self.todo.column("file_ids"))).as_py() or 0)


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
    from das_core import checkpoint as ckpt
    from das_core.cache import DriftCache

    c.check()
    store = OutputStore(c.out)
    previous = store.read_manifest()
    has_output = store.has_output()
    if has_output and not (c.resume or c.overwrite):
        raise RunRefused(f"output {c.out} already holds results; pass --resume to continue that run or "
                         f"--overwrite to replace it")
    cache = DriftCache.load(c.cache)
    local = ckpt.resolve(c.checkpoint)
    checkpoint_id = ckpt.fingerprint(local)
    cache.check_encoder(checkpoint_id, c.checkpoint)
    info = ckpt.describe(local)
    settings = settings_of(c, cache.fingerprint, checkpoint_id)
    units = read_work_manifest(c.out) if c.resume and has_output else None
    if c.resume and has_output:
        _check_resumable(c, previous, settings, units)
    inputs, skipped, noise_uris = _list(c)
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
                         previous, prior, write_work_manifest=bool(len(added)), added_files=len(new))
    units = plan_units(inputs, c.files_per_unit, c.unit_bytes)
    return LabelPlan(c, store, cache, checkpoint_id, info, units, units, len(inputs), skipped, noise_uris,
                     previous if c.resume else None, count_outcomes(_empty_files()), write_work_manifest=True)


def _empty_files() -> pa.Table:
    from das_core.results import FILES_SCHEMA

    return FILES_SCHEMA.empty_table()


def _check_resumable(c: LabelConfig, previous: dict | None, settings: dict, units: pa.Table | None) -> None:
    if previous is None:
        raise RunRefused(f"output {c.out} has results but no {MANIFEST}: it was not written by das label; "
                         f"use --overwrite or another --out")
    if previous.get("format_version") != FORMAT_VERSION:
        raise RunRefused(f"output {c.out} was written by das {previous.get('das_version', '0.1')} in an older "
                         f"layout; --resume cannot continue it: use --overwrite or another --out")
    before = previous.get("settings", {})
    changed = [k for k in RESUME_KEYS if before.get(k) != settings[k]]
    if changed:
        raise RunRefused("cannot --resume with different settings (" + ", ".join(
            f"{k}: was {before.get(k)!r}, now {settings[k]!r}" for k in changed)
            + "); use --overwrite or another --out")


@dataclass
class RunCounts:
    """Counts of a run kept up to date from chunk statistics (``files/`` is never read back for them)."""

    files: int = 0
    ok: int = 0
    error: int = 0
    segments: int = 0
    windows: int = 0
    errors_by_kind: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    nodes: set = field(default_factory=set)

    def add(self, stats: dict) -> None:
        self.skipped.update(json.loads(stats.get("skipped") or "{}"))
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
                "errors_by_kind": dict(sorted(kinds.items())), "skipped_members": dict(sorted(skipped.items()))}


def run_manifest(p: LabelPlan, status: str, counts: dict, runs: list[dict]) -> dict:
    """The ``_manifest.json`` of a label run (one schema, read back by rescore, evaluate and --resume)."""
    c, cache = p.config, p.cache
    return {
        "job": "label",
        "status": status,
        "das_version": __version__,
        "format_version": FORMAT_VERSION,
        "settings": settings_of(c, cache.fingerprint, p.checkpoint_id),
        "cache": {"uri": c.cache, "fingerprint": cache.fingerprint, "n_labels": len(cache.labels),
                  "lam": cache.lam, "clean_template": cache.clean_template, "noisy_template": cache.noisy_template,
                  "clean_templates": list(cache.clean_templates) or None,     # a prompt ensemble, if any
                  "noise_phrases": list(cache.noise_phrases), "labels": list(cache.labels)},
        "checkpoint": {"uri": c.checkpoint, "fingerprint": p.checkpoint_id, **p.checkpoint_info},
        "windows": {"window_s": WINDOW_SECONDS, "hop_s": WINDOW_SECONDS, "min_tail_s": MIN_TAIL_SECONDS,
                    "file_pooling": "max over windows"},
        "work": {"units": len(p.units), "inputs": p.n_inputs, "files_per_unit": c.files_per_unit,
                 "unit_bytes": c.unit_bytes, "chunk_windows": c.windows_per_chunk},
        "skipped": _skipped(p, counts),
        "counts": counts,
        "runs": runs,
    }


def _skipped(p: LabelPlan, counts: dict) -> dict:
    """Inputs not labelled: what the listing skipped, plus shard members skipped while decoding."""
    listed = p.skipped.as_dict()
    by_reason = Counter(listed["by_reason"])
    by_reason.update(counts.get("skipped_members") or {})
    return {"total": sum(by_reason.values()), "by_reason": dict(sorted(by_reason.items())),
            "examples": listed["examples"]}


def new_run_entry(p: LabelPlan) -> dict:
    return {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "units_to_do": len(p.todo),
            "files_to_do": p.todo_files}


def replace(c: LabelConfig, **changes) -> LabelConfig:
    return dataclasses.replace(c, **changes)


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


def summary(manifest: dict, out: str, wall: float, segments_now: int, n_inputs: int, steady: float | None) -> str:
    """The closing lines of ``das label``."""
    counts = manifest["counts"]
    errs = ", ".join(f"{k} {v}" for k, v in counts["errors_by_kind"].items()) or "none"
    missing = n_inputs - counts["files"]
    skipped = manifest.get("skipped") or {}
    return (f"das label: {manifest['status']} in {wall:.1f} s\n"
          f"  files in:  {n_inputs} = {counts['ok']} ok + {counts['error']} error"
          + (f" + {missing} not done" if missing else "") + "\n"
          + (f"  skipped:   {skipped['total']} not picked up ("
             + ", ".join(f"{k} {v}" for k, v in skipped["by_reason"].items()) + ")\n" if skipped.get("total") else "")
          + f"  segments:  {counts['segments']} ({segments_now} this run, "
          f"{segments_now / wall if wall > 0 else 0:.2f} clips/s"
          + (f"; {steady:.2f} clips/s after start-up" if steady else "") + ")\n"
          f"  errors:    {errs}\n"
          f"  weights:   {manifest['checkpoint'].get('weights')}"
          + ("  (RANDOM: labels are meaningless)" if manifest["checkpoint"].get("weights") == "random" else "")
          + f"\n  output:    {out} (segments/, files/, _manifest.json)")
