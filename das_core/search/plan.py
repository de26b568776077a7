"""Planning a ``das search``: the checks on the output searched, the queries encoded once, groups of units.

Everything that can be refused (another checkpoint, no committed unit, a
missing column, a ``--like`` file that is not audio) is refused here, before
any task; then the queries are encoded, once, with the label run's batch shape
and precision. The units are grouped for the tasks (``unit_groups``).
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from das_core.errors import Refused
from das_core.io import storage
from das_core.output.manifest import RunManifest
from das_core.output.store import OutputStore, StoreListing, open_embeddings
from das_core.search.config import SearchConfig
from das_core.search.queries import SEGMENT, Queries, audio_query, level_source, text_queries

log = logging.getLogger("das.search")

LIKE_BATCH = 16          # windows per encoder call while embedding a --like file



def check_embeddings(config: SearchConfig) -> RunManifest:
    """The manifest of ``config.embeddings``, after refusing embeddings made with another checkpoint."""
    from das_core.clap import checkpoint as ckpt

    mine = ckpt.fingerprint(ckpt.resolve(config.checkpoint))
    return open_embeddings(config.embeddings, mine, f"--checkpoint {config.checkpoint} is",
                           "das search; for rescore output, give OUT/run_id=ID",
                           remedy="queries from another model do not live in the same space; "
                                  "pass --checkpoint {made_with}")


def check_columns(store: OutputStore, listing: StoreListing, units: list[str], level: str) -> None:
    """Refuse, before any task, an output whose parts lack what ``level`` ranks (one part's schema is read)."""
    folder, columns = level_source(level)
    if level == SEGMENT and store.embedding_source():
        columns = [name for name in columns if name != "embedding"]      # joined back from the label output
    parts = next((found for u in units if (found := listing.parts_of(u, folder))), None)
    if parts is None:
        return
    uri = store.path(folder, parts[0])
    have = set(pq.read_schema(io.BytesIO(storage.read_bytes(uri))).names)
    missing = [name for name in columns if name not in have]
    if missing:
        hint = ("it was written by a das without file embeddings: use --level segment, or relabel it"
                if level != SEGMENT and missing == ["embedding"] else "it is not a das label or rescore output")
        raise Refused(f"{uri} has no column {', '.join(missing)} (needed by --level {level}); {hint}")


def searchable_units(config: SearchConfig) -> tuple[StoreListing, list[str]]:
    """The listing and committed units of ``config.embeddings``, refused when there is none or they lack a column."""
    store = OutputStore(config.embeddings)
    listing = store.listing()
    units = listing.committed_units()
    if not units:
        raise Refused(f"{config.embeddings} has no committed unit yet: nothing to search")
    check_columns(store, listing, units, config.level)
    return listing, units


def embed_like(encoder, uri: str) -> np.ndarray:
    """The window embeddings of an audio file, decoded and encoded as ``das label`` does; ``(n, d)``."""
    from das_core.api import embed_file

    embedded = embed_file(encoder, uri, batch=LIKE_BATCH)
    if not len(embedded.embeddings):
        raise Refused(f"--like {uri}: no audio window could be decoded from it")
    return embedded.embeddings


def check_like_files(uris: Sequence[str]) -> None:
    """Refuse a ``--like`` file that is missing, unreadable or not audio, before the model is loaded: only its
    header is read."""
    from das_core.audio.decode import AudioStream
    from das_core.errors import AudioDecodeError

    for uri in uris:
        try:
            with storage.open_input(uri) as f, AudioStream(f, uri):
                pass
        except AudioDecodeError as exc:
            raise Refused(f"--like {uri}: not audio das can decode ({exc.kind}: {exc.cause}); "
                          "give an audio file") from None
        except OSError as exc:
            cause = exc.strerror or str(exc)
            raise Refused(f"--like {uri}: cannot read it ({cause[:1].lower() + cause[1:]}); "
                          "give an existing audio file you can read") from None


def encode_queries(config: SearchConfig, label_settings: dict) -> Queries:
    """Every query as a unit vector, encoded once; ``label_settings``: the label run's (batch size, precision)."""
    from das_core.clap.encoder import ClapEncoder
    from das_core.scoring.prompts import DEFAULT_NOISE_PHRASES

    phrases = list(DEFAULT_NOISE_PHRASES if config.noise_phrases is None else config.noise_phrases)
    # the label run's batch shape and precision: a --like clip of the archive gets the embeddings das label gave it
    encoder = ClapEncoder.from_checkpoint(config.checkpoint, device=config.device,
                                          precision=label_settings.get("precision") or "fp32",
                                          tokenizer_dir=config.tokenizer_dir,
                                          max_batch_size=label_settings.get("batch_size") or LIKE_BATCH,
                                          batch_invariant=True)
    queries = Queries((), np.zeros((0, encoder.dim), np.float32), np.zeros((0, encoder.dim), np.float32), config.lam)
    if config.texts:
        queries = queries.concat(text_queries(encoder.embed_text, config.texts, phrases, config.lam))
    for uri in config.like:
        try:
            like = audio_query(uri, embed_like(encoder, uri))
        except ValueError as exc:          # silence: no direction to search along
            raise Refused(f"--like {exc}") from None
        queries = queries.concat(Queries(like.names, like.vectors, like.drift, config.lam))
    return queries


def units_per_task(n_units: int, cpus: float) -> int:
    """Units one task ranks: enough tasks to keep every CPU busy (4 per CPU), no more, since each task costs
    Ray Data tens of milliseconds whatever it holds."""
    return max(1, math.ceil(n_units / max(1, int(4 * cpus))))


def unit_groups(units: list[str], listing: StoreListing, level: str, size: int) -> list[dict]:
    """Rows of units, each with its part lists in the level's folder, in unit order: what ``search_group``
    reads. The units of one pack are one row (its file read once, by one task); staged units go ``size`` to a
    row."""
    folder = level_source(level)[0]
    batches: list[list[str]] = []
    staged: list[str] = []
    for source, wanted in listing.groups(units):
        if source.endswith(".parquet"):               # a pack
            batches += [staged] if staged else []
            batches.append(wanted)
            staged = []
        else:
            staged.append(source)
            if len(staged) == size:
                batches.append(staged)
                staged = []
    batches += [staged] if staged else []
    return [{"units": batch, "parts": [listing.parts_of(u, folder) for u in batch]} for batch in batches]



@dataclass
class SearchPlan:
    """What a search does, fixed before any task: its config, the output's listing, the committed units searched
    and the encoded queries."""

    config: SearchConfig
    listing: StoreListing
    units: list[str]                 # the committed units searched
    queries: Queries
    start: float                     # time.monotonic() when query encoding began

    def groups(self, size: int) -> list[dict]:
        """The units in groups of ``size``: one row per task (``unit_groups``)."""
        return unit_groups(self.units, self.listing, self.config.level, size)

    def task_settings(self) -> dict:
        """The keyword arguments of ``search_group`` (the same for every group)."""
        config = self.config
        return {"embeddings": config.embeddings, "top": config.top, "min_score": config.min_score,
                "level": config.level}


def plan_search(config: SearchConfig) -> SearchPlan:
    """Check the output searched (manifest, checkpoint, columns), then encode the queries; before any task."""
    check_like_files(config.like)
    manifest = check_embeddings(config)
    listing, units = searchable_units(config)
    start = time.monotonic()
    queries = encode_queries(config, manifest.settings)
    log.info("searching %d unit(s) of %s at %s level for %d query(ies)", len(units), config.embeddings, config.level,
             len(queries))
    return SearchPlan(config, listing, units, queries, start)

