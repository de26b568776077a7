"""Planning a ``das label`` run: check everything, list the input, group it into units, apply the resume rule.

``plan_run`` refuses whatever can be refused (``RunRefused``, exit 2) before any audio is decoded or any
model loaded, and returns the ``LabelPlan``: the run's units, the ones this invocation does, and the
settings each stage gets.

Resume rule: ``--resume`` continues the run whose unit table is in OUT. It needs the same settings
(``RESUME_KEYS``: what changes the rows) and redoes every unit that is not committed, after deleting
whatever parts it left. The input is listed again: files that are not in any planned unit (an archive that
grew) become new units appended to the unit table; the planned units never change, so their part names and
rows stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from das_core import __version__
from das_core.errors import AudioDecodeError, DeviceChangeRefused, InputError, RunRefused
from das_core.io.inputs import Skipped, list_input_table, list_inputs, normalise_uri
from das_core.label.config import LabelConfig
from das_core.label.decode import DecodeSettings
from das_core.label.encode import EncodeSettings
from das_core.label.sink import WriteSettings
from das_core.label.units import plan_units, read_unit_table, units_per_row_group
from das_core.output.format import FILES_SCHEMA, FORMAT_VERSION, READABLE_FORMAT_VERSIONS, STAGED_SUFFIX, run_metadata
from das_core.output.manifest import MANIFEST, RunManifest
from das_core.output.store import OutputStore
from das_core.output.tables import count_outcomes
from das_core.scoring.scorer import DEFAULT_TOP_K

# Settings that must not change between a run and its --resume: each changes the rows. batch_size and
# precision fix the encoder's floating-point path, so they are part of "exactly the same rows". The
# manifest's ``settings`` are these, in this order (``settings_of``).
RESUME_KEYS = ("input", "cache_fingerprint", "checkpoint_fingerprint", "snr_db", "seed", "noise", "top_k",
               "embedding_dtype", "batch_size", "precision", "probabilities", "audio_column", "id_column",
               "keep_metadata", "device")


def settings_of(config: LabelConfig, cache_fingerprint: str, checkpoint_id: str) -> dict:
    """The run's settings as its manifest records them and ``--resume`` compares them: ``RESUME_KEYS``, from
    ``config`` (URIs normalised) and the fingerprints of the cache and the checkpoint."""
    derived = {"input": normalise_uri(config.input), "cache_fingerprint": cache_fingerprint,
               "checkpoint_fingerprint": checkpoint_id, "noise": normalise_uri(config.noise) if config.noise else None,
               "device": "cuda" if config.num_gpus > 0 else "cpu"}
    return {key: derived[key] if key in derived else getattr(config, key) for key in RESUME_KEYS}


@dataclass
class LabelPlan:
    """What a label run does: its settings, cache and checkpoint, every unit, and the units to do now."""

    config: LabelConfig
    store: OutputStore
    cache: object
    checkpoint_id: str
    checkpoint_info: dict
    units: pa.Table                     # every unit of the run (the unit table)
    todo: pa.Table                      # the units this invocation labels
    n_inputs: int
    skipped: Skipped
    noise_uris: tuple[str, ...]
    previous: RunManifest | None        # the manifest found in OUT (resume)
    prior_counts: dict                  # counts of the committed units (resume)
    writes_unit_table: bool             # a new plan, or a resume that appended units
    added_files: int = 0                # --resume: files new since the run was planned

    @property
    def todo_files(self) -> int:
        """Entries (plain files and shards) of the units to do."""
        return int(pc.sum(pc.list_value_length(self.todo.column("file_ids"))).as_py() or 0)

    def decode_settings(self) -> DecodeSettings:
        """What the decode stage needs."""
        c = self.config
        return DecodeSettings(chunk_windows=c.windows_per_chunk, extensions=c.extensions,
                              audio_column=c.audio_column, id_column=c.id_column, keep_metadata=c.keep_metadata)

    def encode_settings(self) -> EncodeSettings:
        """How each encoder loads and runs the model."""
        c = self.config
        return EncodeSettings(checkpoint=c.checkpoint, num_gpus_per_actor=c.gpus_per_actor,
                              cpus_per_actor=c.cpus_per_actor, precision=c.precision, max_batch_size=c.batch_size,
                              torch_threads=c.torch_threads, tokenizer_dir=c.tokenizer_dir, snr_db=c.snr_db,
                              seed=c.seed, noise_uris=self.noise_uris)

    @property
    def format_version(self) -> int:
        """The run's output format: a resumed run keeps the one it was started in, a new run has this das's."""
        return self.previous.format_version if self.previous is not None else FORMAT_VERSION

    def write_settings(self) -> WriteSettings:
        """How the unit sink writes the rows (a format 2 run resumed: list<...> embeddings, as its parts)."""
        c, cache = self.config, self.cache
        return WriteSettings(top_k=c.top_k, embedding_dtype=c.embedding_dtype, snr_db=c.snr_db,
                             seed=c.seed if c.snr_db is not None else None,
                             logit_scale=self.checkpoint_info.get("logit_scale") if c.probabilities else None,
                             embedding_dim=cache.dim if self.format_version >= 3 else None,
                             metadata=run_metadata("label", cache.labels, cache.lam, self.checkpoint_id,
                                                   c.checkpoint, cache.fingerprint, __version__,
                                                   self.format_version),
                             staged_suffix=STAGED_SUFFIX if c.pack_rows else ".parquet")

    def row_groups_to_do(self) -> dict[int, list[str]] | None:
        """Per row group of the unit table, the units to do in it; None when every unit is to do."""
        if len(self.todo) == len(self.units):
            return None
        per_group = units_per_row_group(len(self.units))
        index = {u: i for i, u in enumerate(self.units.column("unit").to_pylist())}
        keep: dict[int, list[str]] = {}
        for u in self.todo.column("unit").to_pylist():
            keep.setdefault(index[u] // per_group, []).append(u)
        return keep


def _list(config: LabelConfig) -> tuple[pa.Table, Skipped, tuple[str, ...]]:
    try:
        inputs, skipped = list_input_table(config.input, config.extensions)
    except InputError as exc:
        raise RunRefused(str(exc)) from None
    noise_uris: tuple[str, ...] = ()
    if config.noise:
        try:
            noise_uris = tuple(f.path for f in list_inputs(config.noise))
        except InputError as exc:
            raise RunRefused(f"--noise: {exc}") from None
        _check_noise(noise_uris)
    return inputs, skipped, noise_uris


def _check_noise(uris: tuple[str, ...]) -> None:
    """Refuse, before any work, a noise recording whose header no decoder reads: the encoders decode the
    recordings on demand, and one that fails there would end the run half-way."""
    from das_core.audio.decode import AudioStream
    from das_core.io import storage

    for uri in uris:
        try:
            with storage.open_input(uri) as f, AudioStream(f, uri):
                pass
        except AudioDecodeError as exc:
            raise RunRefused(f"--noise: {exc}; remove it from the noise recordings") from None


def plan_run(config: LabelConfig) -> LabelPlan:
    """Check everything, list the input (or read the planned units back on --resume) and choose the units to do."""
    from das_core.clap import checkpoint as ckpt
    from das_core.scoring.cache import DriftCache

    config.check()
    store = OutputStore(config.out)
    previous = RunManifest.read(config.out)
    has_output = store.has_output()
    if has_output and not (config.resume or config.overwrite):
        raise RunRefused(holds_message(config.out, previous))
    cache = DriftCache.load(config.cache)
    config = replace(config, top_k=cache.top_k_for(config.top_k, config.cache, DEFAULT_TOP_K))
    local = ckpt.resolve(config.checkpoint)
    checkpoint_id = ckpt.fingerprint(local)
    cache.check_encoder(checkpoint_id, config.checkpoint)
    settings = settings_of(config, cache.fingerprint, checkpoint_id)
    units = read_unit_table(config.out) if config.resume and has_output else None
    if config.resume and has_output:
        _check_resumable(config, previous, settings, units)
    inputs, skipped, noise_uris = _list(config)
    # after the input is listed: a bad input is refused before torch is imported; a dry run never imports it
    info = ckpt.describe(local, without_torch=config.dry_run)
    if units is not None:
        planned = pc.list_flatten(units.column("file_ids"))
        new = inputs.filter(pc.invert(pc.is_in(inputs.column("file_id"), planned)))
        added = plan_units(new, config.files_per_unit, config.unit_bytes, first_unit=len(units))
        if len(added):
            units = pa.concat_tables([units, added])
        listing = store.listing()
        committed = set(listing.committed_units())
        todo = units.filter(pc.invert(pc.is_in(units.column("unit"), pa.array(sorted(committed), pa.string()))))
        prior = count_outcomes(store.read_files(sorted(committed), ["status", "error_kind", "n_segments"]))
        n_inputs = int(pc.sum(pc.list_value_length(units.column("file_ids"))).as_py() or 0)
        return LabelPlan(config, store, cache, checkpoint_id, info, units, todo, n_inputs, skipped, noise_uris,
                         previous, prior, writes_unit_table=bool(len(added)), added_files=len(new))
    units = plan_units(inputs, config.files_per_unit, config.unit_bytes)
    return LabelPlan(config, store, cache, checkpoint_id, info, units, units, len(inputs), skipped, noise_uris,
                     previous if config.resume else None, count_outcomes(FILES_SCHEMA.empty_table()),
                     writes_unit_table=True)


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


def _check_resumable(config: LabelConfig, previous: RunManifest | None, settings: dict, units: pa.Table | None) -> None:
    if previous is None:
        raise RunRefused(f"output {config.out} has results but no {MANIFEST}: it was not written by das label; "
                         f"use --overwrite or another --out")
    if previous.format_version not in READABLE_FORMAT_VERSIONS:
        raise RunRefused(f"output {config.out} was written by das {previous.das_version} in an older "
                         f"layout; --resume cannot continue it: use --overwrite or another --out")
    before = previous.settings
    if before.get("device") not in (None, settings["device"]):
        gpus = "--num-gpus 0" if before["device"] == "cpu" else "--num-gpus 1 (or more)"
        raise DeviceChangeRefused(f"cannot --resume on {settings['device']}: the run in {config.out} encoded on "
                                  f"{before['device']}, and the two give embeddings that differ in their last bits; "
                                  f"resume with {gpus}, or use --overwrite or another --out")
    changed = [k for k in RESUME_KEYS if before.get(k) != settings[k]]
    if changed:
        raise RunRefused("cannot --resume with different settings (" + ", ".join(
            f"{k}: was {before.get(k)!r}, now {settings[k]!r}" for k in changed)
            + "); use --overwrite or another --out")
