"""Planning a ``das rescore`` run: the label output's committed units, the earlier runs, the watermark.

Everything that can be refused is refused here, before any part is read.

Watermark (``--since-last-run``). Label units never change once committed
(``--resume`` only adds units), so "rows added since the last run" are the
committed label units that no earlier run has scored. Every run records in
its manifest the label units it and its predecessors covered, with the label
output's identity: its checkpoint fingerprint and the start times of its
runs (``Watermark``). The previous run is the rescore run of the same
``--embeddings`` under OUT with status ``complete`` that finished last. If the
label output's run history no longer extends the recorded one (it was
replaced with ``--overwrite``), the watermark is void and everything is
scored again. Units still being written, or left by an interrupted label
run, are ignored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from das_core import __version__
from das_core.errors import Refused
from das_core.io import storage
from das_core.io.checks import check_output_folder
from das_core.io.inputs import normalise_uri
from das_core.output.format import (
    END_TAG,
    FILES_DIR,
    READABLE_FORMAT_VERSIONS,
    PartFormat,
    part_name,
    run_metadata,
    staged_name,
    unit_number,
)
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore, StoreListing, open_embeddings
from das_core.rescore.config import RUN_PREFIX, RescoreConfig, default_run_id
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import DEFAULT_TOP_K

log = logging.getLogger("das.rescore")


@dataclass(frozen=True)
class Watermark:
    """The label units a run and its predecessors covered, and what they were units of: the label output's
    checkpoint fingerprint and the start times of its runs (its identity)."""

    checkpoint_fingerprint: str | None
    label_runs_started: tuple = ()
    units: tuple[str, ...] | None = None      # None: the manifest records no units

    @classmethod
    def of(cls, label: RunManifest, checkpoint_id: str, units=()) -> Watermark:
        """The identity of the label output described by ``label``, covering ``units``."""
        return cls(checkpoint_id, tuple(label.runs_started), tuple(sorted(units)))

    @classmethod
    def from_dict(cls, data: dict | None) -> Watermark:
        """The watermark a manifest recorded (``to_dict``); ``units`` None when it records none."""
        data = data or {}
        units = data.get("units")
        return cls(data.get("checkpoint_fingerprint"), tuple(data.get("label_runs_started") or ()),
                   tuple(units) if isinstance(units, list) else None)

    def to_dict(self) -> dict:
        """The manifest's ``watermark`` block: the identity, the units covered and their number."""
        units = list(self.units or ())
        return {"checkpoint_fingerprint": self.checkpoint_fingerprint,
                "label_runs_started": list(self.label_runs_started), "units": units, "n_units": len(units)}

    def void_reason(self, label_now: Watermark) -> str | None:
        """Why this watermark cannot be trusted for the label output whose identity is ``label_now`` (None: it
        can)."""
        if self.units is None:
            return "it records no units"
        if self.checkpoint_fingerprint != label_now.checkpoint_fingerprint:
            return "the embeddings were made with another checkpoint since"
        if label_now.label_runs_started[:len(self.label_runs_started)] != self.label_runs_started:
            return "the label output was replaced since (its run history changed)"
        return None


def list_runs(out: str) -> list[RunManifest]:
    """Manifests of the rescore runs under ``out`` (``run_id=*/_manifest.json``), unreadable ones skipped."""
    fs, path = storage.filesystem(out)
    if not fs.exists(path):
        return []
    manifests = []
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith(RUN_PREFIX):
            continue
        try:
            manifest = RunManifest.read(storage.join(out, name))
        except (ValueError, OSError) as exc:
            log.warning("ignoring %s: its manifest cannot be read (%s)", storage.join(out, name), exc)
            continue
        if manifest is not None:
            manifests.append(manifest)
    return manifests


def finished_at(manifest: RunManifest) -> str:
    """When the run of ``manifest`` finished (its last run's ``finished`` time), "" if it does not say."""
    return (manifest.runs[-1] if manifest.runs else {}).get("finished") or ""


def previous_run(out: str, embeddings: str, run_id: str) -> RunManifest | None:
    """The complete rescore run of ``embeddings`` under ``out`` that finished last (not ``run_id`` itself)."""
    done = [m for m in list_runs(out)
            if m.job == "rescore" and m.complete and m.get("run_id") != run_id
            and m.settings.get("embeddings") == embeddings]
    return max(done, key=lambda m: (finished_at(m), m.get("run_id") or "")) if done else None


@dataclass
class RescorePlan:
    """What a rescore run does, fixed before any part is read: its config, folder, the label output (manifest,
    listing, committed and uncommitted units), the cache and top-k, and the units to score (``todo``)."""

    config: RescoreConfig
    run_id: str
    run_uri: str
    embeddings: str                     # normalised --embeddings
    label: RunManifest                  # the label output's manifest
    checkpoint_id: str
    cache: DriftCache
    top_k: int
    listing: StoreListing
    committed: list[str]
    uncommitted: list[str]
    todo: list[str]
    covered_before: set[str] = field(default_factory=set)   # units scored by the previous runs of the chain
    previous: RunManifest | None = None

    def unit_rows(self) -> list[dict]:
        """One row per task: the units to do of one physical part of the label output (a pack, or a staged
        unit), split where they are not consecutive (units covered before the watermark): what
        ``rescore_unit`` reads."""
        rows = []
        for source, units in self.listing.groups(self.todo):
            # a pack, or a staged unit's end part
            ends = [part_name(source, END_TAG), staged_name(source, END_TAG)]
            where = source if source.endswith(".parquet") else next(
                (n for n in ends if n in self.listing.names.get(FILES_DIR, ())), ends[0])
            run = [units[0]]
            for unit in units[1:]:
                if unit_number(unit) != unit_number(run[-1]) + 1:
                    rows.append({"units": run, "source": where})
                    run = []
                run.append(unit)
            rows.append({"units": run, "source": where})
        return rows

    def part_format(self) -> PartFormat:
        """How the run's parts are typed and labelled: this das's format (FixedSizeList embeddings of the
        cache's dimension, whatever format the label output has) and the run's schema metadata."""
        cache = self.cache
        return PartFormat(self.label.embedding_dtype, cache.dim, run_metadata(
            "rescore", cache.labels, cache.lam, self.checkpoint_id, self.label.checkpoint_uri, cache.fingerprint,
            __version__))

    def unit_settings(self) -> dict:
        """The keyword arguments of ``rescore_unit`` (the same for every unit)."""
        return {"embeddings": self.config.embeddings, "out_run": self.run_uri, "top_k": self.top_k,
                "logit_scale": self.label.logit_scale, "copy_embeddings": self.config.copy_embeddings,
                "part": self.part_format()}


def _refuse_existing_run(run_uri: str, overwrite: bool) -> None:
    """Refuse a run folder that already holds a run, unless ``--overwrite``."""
    if overwrite or not OutputStore(run_uri).has_output():
        return
    try:
        manifest = RunManifest.read(run_uri)
        status = manifest.status if manifest else "unknown"
    except ValueError:
        status = "unreadable manifest"
    raise Refused(f"{run_uri} already holds a rescore run (status: {status}); choose another --run-id or pass "
                  f"--overwrite to replace it")


def _apply_watermark(plan: RescorePlan) -> None:
    """``--since-last-run``: leave out of ``plan.todo`` the units the previous complete run covered."""
    config = plan.config
    plan.previous = previous_run(config.out, plan.embeddings, plan.run_id)
    if plan.previous is None:
        log.info("--since-last-run: no complete rescore run of %s under %s yet: scoring everything",
                 config.embeddings, config.out)
        return
    watermark = Watermark.from_dict(plan.previous.get("watermark"))
    void = watermark.void_reason(Watermark.of(plan.label, plan.checkpoint_id))
    if void:
        log.warning("--since-last-run: the watermark of run %s no longer applies (%s): scoring everything",
                    plan.previous.get("run_id"), void)
        return
    plan.covered_before = set(watermark.units)
    plan.todo = [name for name in plan.committed if name not in plan.covered_before]
    if plan.previous.cache.get("fingerprint") != plan.cache.fingerprint:
        log.warning("--since-last-run: run %s used another drift cache; rows before its watermark keep those "
                    "labels (run without --since-last-run to relabel everything)", plan.previous.get("run_id"))


def _top_k(config: RescoreConfig, cache: DriftCache, label: RunManifest) -> int:
    """``--top-k`` (refused above the cache's class count), else the label run's, at most every class."""
    if config.top_k is not None:
        return cache.top_k_for(config.top_k, config.cache, DEFAULT_TOP_K)
    return cache.top_k_for(None, config.cache, label.settings.get("top_k") or DEFAULT_TOP_K)


def plan_rescore(config: RescoreConfig) -> RescorePlan:
    """The plan of the run ``config`` describes; everything that can be refused is refused here, before any part
    is read (``Refused``)."""
    run_id = config.run_id or default_run_id()
    check_output_folder(config.out)
    cache = DriftCache.load(config.cache)
    label = open_embeddings(config.embeddings, cache.encoder_id, f"the drift cache {config.cache} was built with",
                            "das rescore", remedy="it cannot re-score them; rebuild it with "
                                                  "`das build-cache --checkpoint {made_with} ...`")
    run_uri = storage.join(config.out, RUN_PREFIX + run_id)
    _refuse_existing_run(run_uri, config.overwrite)
    if label.format_version not in READABLE_FORMAT_VERSIONS:
        raise Refused(f"{config.embeddings} was written by das {label.das_version} in an older layout; relabel it "
                      f"with this version (or rescore it with das 0.1)")
    listing = OutputStore(config.embeddings).listing()
    committed, uncommitted = listing.committed_units(), listing.uncommitted_units()
    if uncommitted:
        log.info("ignoring %d uncommitted unit(s) of %s (no end part: still being labelled, or interrupted)",
                 len(uncommitted), config.embeddings)
    if not label.complete:
        log.info("the label output is %s: its %d committed unit(s) are scored", label.status, len(committed))
    plan = RescorePlan(config, run_id, run_uri, normalise_uri(config.embeddings), label,
                       label.checkpoint_fingerprint, cache, _top_k(config, cache, label), listing, committed,
                       uncommitted, todo=list(committed))
    if config.since_last_run:
        _apply_watermark(plan)
    return plan

