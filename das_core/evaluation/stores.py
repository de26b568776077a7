"""The label-job stores of an evaluation: ``OUT/store/<condition>/`` and ``OUT/store/noise/``.

Each (clip, condition) is encoded once, by a label run over a path list of
the clips (``OUT/manifests/clips.parquet``); the noise recordings once, clean.
A store whose ``_manifest.json`` says ``complete`` and that holds every clip is
skipped; an interrupted one is resumed with the settings it was started with; a
store made with other settings is refused (``label_runs`` says which label runs
are needed; the caller runs them). Scoring reads the stored window embeddings
only.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from das_core.errors import EvaluationError, Refused
from das_core.evaluation.datasets import NoiseSet
from das_core.evaluation.prompts import UNKNOWN_SCENE, TextEmbeddings, saved_caches
from das_core.evaluation.protocol import Condition, Plan
from das_core.io import storage
from das_core.label.config import LabelConfig
from das_core.output.manifest import NoiseSource, RunManifest

log = logging.getLogger("das.evaluation")

STORE_DIR = "store"
LIST_DIR = "manifests"       # OUT/manifests/: the label runs' path lists (the folder's name on disk)
NOISE_STORE = "noise"


# ---------------------------------------------------------- reading stores
@dataclass
class StoreData:
    """The stored windows of one store, restricted to the files asked for."""

    ok: np.ndarray                # (n,) bool: decoded
    errors: dict[str, str]        # file id -> error message
    embeddings: np.ndarray        # (m, d) float32, windows of ok files sorted by (file, segment)
    owner: np.ndarray             # (m,) index of each window's file
    noise_uri: list[str | None]   # (m,) noise recording mixed into the window; None if none


@dataclass
class ConditionData:
    """One condition's store and, per window, the scene of the noise mixed into it."""

    condition: Condition
    store: StoreData
    background: list[str | None]     # per window: scene key of the noise mixed in; None = no background


def _file_outcomes(uri: str, files: dict, ids: Sequence[str]) -> tuple[np.ndarray, dict[str, str]]:
    """Which of ``ids`` decoded, and the errors of the others; every id must have exactly one result."""
    index = {fid: i for i, fid in enumerate(ids)}
    ok = np.zeros(len(ids), dtype=bool)
    seen = np.zeros(len(ids), dtype=bool)
    errors: dict[str, str] = {}
    for fid, status, error in zip(files["file_id"], files["status"], files["error"]):
        i = index.get(fid)
        if i is None:
            continue
        if seen[i]:
            raise EvaluationError(f"{uri}: file {fid!r} has two committed results; delete the store and rerun")
        seen[i] = True
        if status == "ok":
            ok[i] = True
        else:
            errors[fid] = error or "unknown error"
    if not seen.all():
        absent = [ids[i] for i in np.flatnonzero(~seen)]
        raise EvaluationError(f"{uri} has no result for {len(absent)} file(s), e.g. {absent[0]!r}: rerun das evaluate")
    return ok, errors


def noise_uri(source: str | None) -> str | None:
    """The recording mixed into a window; None when none was (clean, or a skipped zero-power mix)."""
    parsed = NoiseSource.parse(source)
    return parsed.uri if parsed is not None else None


def read_store(uri: str, ids: Sequence[str]) -> StoreData:
    """The committed results of the store at ``uri`` for the files ``ids`` (in that order); refused
    (``EvaluationError``) when a file has no result, two, or is ok without a stored window."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from das_core.output.format import SEGMENTS_DIR
    from das_core.output.store import OutputStore
    from das_core.output.tables import embeddings_to_numpy

    store = OutputStore(uri)
    listing = store.listing()
    committed = listing.committed_units()
    ok, errors = _file_outcomes(uri, store.read_files(committed, ["file_id", "status", "error"]).to_pydict(), ids)
    columns = ["file_id", "segment", "embedding", "noise_source"]
    tables = store.read_units(committed, SEGMENTS_DIR, listing, columns)
    owner, emb, sources = np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), []
    if tables:
        index = {fid: i for i, fid in enumerate(ids)}
        table = pa.concat_tables(tables)
        table = table.filter(pc.is_in(table.column("file_id"), value_set=pa.array(
            [ids[i] for i in np.flatnonzero(ok)], pa.string())))
        owner = np.array([index[f] for f in table.column("file_id").to_pylist()], dtype=np.int64)
        order = np.lexsort((np.asarray(table.column("segment").to_numpy(), dtype=np.int64), owner))
        emb = embeddings_to_numpy(table.column("embedding"))[order]
        column = table.column("noise_source").to_pylist()
        sources = [noise_uri(column[j]) for j in order]
        owner = owner[order]
    empty = ok & (np.bincount(owner, minlength=len(ids)) == 0)
    if empty.any():
        bad = ids[int(np.flatnonzero(empty)[0])]
        raise EvaluationError(f"{uri}: file {bad!r} is marked ok but has no stored window; delete the store and rerun")
    return StoreData(ok, errors, emb, owner, sources)


def background_keys(noise_uris: Sequence[str | None], scene_of: dict[str, str | None]) -> list[str | None]:
    """Per window, the scene of the recording mixed in (``UNKNOWN_SCENE`` when not known); None: no noise."""
    keys: list[str | None] = []
    for uri in noise_uris:
        scene = scene_of.get(uri) if uri is not None else None
        keys.append(None if uri is None else scene if scene is not None else UNKNOWN_SCENE)
    return keys


def load_conditions(plan: Plan) -> tuple[list[ConditionData], StoreData]:
    """Every condition's store, with each window's background, and the store of the noise recordings."""
    config = plan.config
    ids = [clip.clip_id for clip in plan.dataset.clips]
    scene_of = plan.noise.scene_of()
    conditions = []
    for cond in config.conditions:
        store = read_store(storage.join(config.out, STORE_DIR, cond.name), ids)
        keys = background_keys(store.noise_uri, scene_of) if cond.snr_db is not None else [None] * len(store.owner)
        conditions.append(ConditionData(cond, store, keys))
    noise_store = read_store(storage.join(config.out, STORE_DIR, NOISE_STORE), list(plan.noise.uris))
    return conditions, noise_store


# ------------------------------------------------------- the label runs that fill the stores
def write_path_list(uri: str, paths: Sequence[str], ids: Sequence[str]) -> None:
    """A label run's input: a path list (``path``, ``id``) as Parquet, rewritten only when its content changes."""
    import pyarrow as pa

    from das_core.output.format import table_to_bytes

    table = pa.table({"path": pa.array(list(paths), pa.string()), "id": pa.array(list(ids), pa.string())})
    data = table_to_bytes(table)
    if storage.exists(uri) and storage.read_bytes(uri) == data:
        return
    storage.write_bytes_atomic(uri, data)


def noise_list_uri(out: str, noise: NoiseSet) -> str:
    """Where the path list of the noise recordings is written, named by its content: a different noise set can
    never be mistaken for the one a store was mixed with."""
    digest = hashlib.sha1("\n".join(noise.uris).encode()).hexdigest()[:12]
    return storage.join(out, LIST_DIR, f"noise-{digest}.parquet")


@dataclass
class StoreJob:
    """One store of the evaluation and the label run that fills it: what it reads, its noise and seed."""

    name: str                     # condition name or "noise"
    uri: str
    input: str                    # the path list the label run reads
    ids: list[str]
    snr_db: float | None
    noise: str | None
    seed: int


def store_jobs(plan: Plan) -> list[StoreJob]:
    """The label runs the evaluation needs (the noise store first), after writing their path lists."""
    config = plan.config
    clips_uri = storage.join(config.out, LIST_DIR, "clips.parquet")
    noise_list = noise_list_uri(config.out, plan.noise)
    ids = [clip.clip_id for clip in plan.dataset.clips]
    write_path_list(clips_uri, [clip.uri for clip in plan.dataset.clips], ids)
    write_path_list(noise_list, plan.noise.uris, plan.noise.uris)
    jobs = [StoreJob(NOISE_STORE, storage.join(config.out, STORE_DIR, NOISE_STORE), noise_list, list(plan.noise.uris),
                     None, None, 0)]
    for cond in config.conditions:
        # the seed only matters where noise is mixed; clean stores keep seed 0 so that --seed never invalidates them
        noisy = cond.snr_db is not None
        jobs.append(StoreJob(cond.name, storage.join(config.out, STORE_DIR, cond.name), clips_uri, ids, cond.snr_db,
                             noise_list if noisy else None, config.seed if noisy else 0))
    return jobs


def store_state(job: StoreJob, checkpoint_id: str) -> tuple[str, RunManifest | None]:
    """``new``, ``complete`` or ``partial`` (and the store's manifest); refuses a store made with other settings."""
    from das_core.output.store import OutputStore

    store = OutputStore(job.uri)
    manifest = RunManifest.read(job.uri)
    if manifest is None:
        if store.has_output():
            raise Refused(f"{job.uri} holds results but no _manifest.json: it was not written by das; "
                          f"delete it or use another --out")
        return "new", None
    settings = dict(manifest.settings)
    # Path lists are compared by name (the noise list's is derived from its content), so that an OUT folder
    # copied elsewhere (e.g. from a cluster's bucket to a laptop) is still recognised; clips are checked by id below.
    for key in ("input", "noise"):
        if settings.get(key):
            settings[key] = posixpath.basename(settings[key])
    expected = {"input": posixpath.basename(job.input), "checkpoint_fingerprint": checkpoint_id,
                "snr_db": job.snr_db, "noise": posixpath.basename(job.noise) if job.noise else None,
                "seed": job.seed}
    changed = [f"{k}: stored {settings.get(k)!r}, now {v!r}" for k, v in expected.items() if settings.get(k) != v]
    if changed:
        raise Refused(f"{job.uri} was encoded with other settings ({'; '.join(changed)}). Its embeddings do not "
                      f"belong to this evaluation: delete that folder or use another --out")
    done = store.read_files(columns=["file_id"]).column("file_id").to_pylist()
    return ("complete" if manifest.complete and set(job.ids) <= set(done) else "partial"), manifest


def _label_config(plan: Plan, job: StoreJob, text: TextEmbeddings, manifest: RunManifest | None,
                  saved: dict[str, str]) -> LabelConfig:
    """The settings of the label run that fills ``job``'s store (``manifest``: the store's, when it exists)."""
    config = plan.config
    cache_uri, batch_size = text.cache_uri, config.batch_size
    if manifest is not None:
        # An interrupted store resumes with the settings it was started with: the cache (only its label
        # columns use it) and the batch size (part of the encoder's floating-point path).
        started = manifest.settings
        if started.get("cache_fingerprint") != text.cache.fingerprint and started.get("cache_fingerprint") in saved:
            cache_uri = saved[started["cache_fingerprint"]]
        batch_size = int(started.get("batch_size") or batch_size)
    return LabelConfig(input=job.input, cache=cache_uri, checkpoint=config.checkpoint, out=job.uri,
                       snr_db=job.snr_db, noise=job.noise, seed=job.seed, num_gpus=config.num_gpus,
                       actors=config.actors, batch_size=batch_size, tokenizer_dir=config.tokenizer_dir,
                       resume=manifest is not None, max_error_fraction=config.max_error_fraction,
                       report=False)       # an intermediate encoding run: the evaluation writes its own results


@dataclass(frozen=True)
class StoreEncoding:
    """One label run the evaluation needs: the store it fills (``job``) and the run's settings (``config``)."""

    job: StoreJob
    config: LabelConfig

    def describe(self) -> str:
        """What the store holds: the noise recordings, clean, or the clips in a condition."""
        return "noise recordings, clean" if self.job.name == NOISE_STORE else Condition(self.job.snr_db).title


def label_runs(plan: Plan, text: TextEmbeddings) -> list[StoreEncoding]:
    """The label runs that fill every store not yet complete, the noise store first. A store made with other
    settings is refused (``Refused``) before any of them runs."""
    jobs = store_jobs(plan)
    states = {job.name: store_state(job, plan.checkpoint_id) for job in jobs}
    saved = {cache.fingerprint: uri for uri, cache in saved_caches(plan.config.out)}
    todo = [job for job in jobs if states[job.name][0] != "complete"]
    if not todo:
        log.info("all %d stores are complete: nothing to encode", len(jobs))
    return [StoreEncoding(job, _label_config(plan, job, text, states[job.name][1], saved)) for job in todo]


def windows_encoded(manifest: dict) -> int:
    """The windows a label run encoded, from its final manifest (``jobs.label.run``'s result)."""
    return int(manifest["runs"][-1].get("segments_done") or 0)
