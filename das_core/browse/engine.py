"""The searches of ``das browse``, with ``das search``'s engine (``BrowseSearch``): the output's index where
``das index`` built one (``open_for_search``, loaded once), the exact scan of ``search_group`` over the units
it does not cover (all of them without an index), merged by ``merge_hits``.

Text queries need the run's checkpoint (``TextEncoder``): the manifest's, or ``--checkpoint``, refused when
its fingerprint is not the one the embeddings were made with. Without one, text search is off and says why;
"more like this" still works: its query is a window's *stored* embedding, as ``das search --like`` makes an
audio query of a clip's window embeddings (``audio_query``), so the window itself ranks first.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pyarrow as pa

from das_core.errors import Refused
from das_core.index.lookup import index_hits, open_for_search
from das_core.output.manifest import RunManifest
from das_core.output.store import open_embeddings
from das_core.search.plan import unit_groups, units_per_task
from das_core.search.queries import HITS_SCHEMA, SEGMENT, Queries, audio_query, merge_hits, text_queries
from das_core.search.task import search_group

log = logging.getLogger("das.browse")


class BrowseSearch:
    """Ranks the windows of one output for ``Queries``; the index is loaded by ``load`` (once)."""

    def __init__(self, uri: str, units: list[str], listing):
        self.uri, self.units, self.listing = uri, units, listing
        self.opened = None
        self.loaded = threading.Event()
        self.load_s: float | None = None

    def load(self) -> None:
        """Load the index, if the output has a valid one (a warning says why one that is there is not used)."""
        started = time.monotonic()
        try:
            self.opened = open_for_search(self.uri, SEGMENT, self.units)
        finally:
            self.load_s = time.monotonic() - started
            self.loaded.set()

    def describe(self) -> str:
        """How queries are ranked, in words."""
        if not self.loaded.is_set():
            return "loading the index"
        if self.opened is None:
            return "exact scan (no index: `das index OUT` makes queries fast on a large output)"
        extra = f", plus an exact scan of {len(self.opened.uncovered)} unit(s)" if self.opened.uncovered else ""
        return f"index {self.opened.record.parameters['factory']} over {self.opened.record.rows} windows{extra}"

    def rank(self, queries: Queries, top: int) -> pa.Table:
        """The ``top`` best windows per query (``HITS_SCHEMA``, ranked), as ``das search`` ranks them."""
        self.loaded.wait()
        parts, scanned = [], self.units
        if self.opened is not None:
            parts.append(index_hits(self.opened, queries, top, None))
            scanned = self.opened.uncovered
        for row in unit_groups(scanned, self.listing, SEGMENT, units_per_task(len(scanned), 1)):
            parts.append(search_group(row, queries, embeddings=self.uri, top=top, min_score=None, level=SEGMENT))
        return merge_hits(parts, queries.names, top) if parts else HITS_SCHEMA.empty_table()

    def like(self, name: str, embedding: np.ndarray, top: int) -> pa.Table:
        """The windows most like one window: its stored embedding as the query (``audio_query``)."""
        return self.rank(audio_query(name, embedding[None, :]), top)


class TextEncoder:
    """The text tower of the run's checkpoint, loaded by ``load`` (in the background); ``why_not`` says why
    text queries are off when it cannot be."""

    def __init__(self, uri: str, manifest: RunManifest, checkpoint: str | None):
        self.uri, self.manifest = uri, manifest
        self.checkpoint = checkpoint or manifest.checkpoint_uri
        self.encoder = None
        self.why_not: str | None = None
        self.loaded = threading.Event()
        self.load_s: float | None = None

    def available(self) -> str | None:
        """Why no checkpoint can be loaded (None when one is there to try): checked at start, cheaply."""
        if not self.checkpoint:
            return "the run's manifest names no checkpoint; pass --checkpoint CKPT for text queries"
        from das_core.io.s3 import is_s3

        if not is_s3(self.checkpoint) and "/" in self.checkpoint and not os.path.exists(self.checkpoint):
            return (f"the run's checkpoint {self.checkpoint} is not there; pass --checkpoint CKPT (the one the run "
                    "was labelled with) for text queries")
        return None

    def load(self) -> None:
        """Load the encoder after checking its fingerprint against the run's; a failure turns text queries
        off with its reason (``why_not``), never the server."""
        started = time.monotonic()
        try:
            self.why_not = self.available()
            if self.why_not is None:
                self.encoder = self._load()
        except Refused as exc:
            self.why_not = f"text queries are off: {exc}"
        finally:
            self.load_s = time.monotonic() - started
            self.loaded.set()

    def verify(self) -> None:
        """Refuse (``EmbeddingsMismatch``) a checkpoint other than the one the run's embeddings were made with."""
        from das_core.clap import checkpoint as ckpt

        mine = ckpt.fingerprint(ckpt.resolve(self.checkpoint))
        open_embeddings(self.uri, mine, f"--checkpoint {self.checkpoint} is", "das browse",
                        remedy="text queries need the checkpoint the run was labelled with: pass --checkpoint "
                               "{made_with}")

    def _load(self):
        from das_core.clap.encoder import ClapEncoder

        self.verify()
        settings = self.manifest.settings
        return ClapEncoder.from_checkpoint(self.checkpoint, precision=settings.get("precision") or "fp32",
                                          max_batch_size=settings.get("batch_size") or 16, batch_invariant=True)

    def queries(self, text: str) -> Queries:
        """``text`` as a query (plain cosine, as ``das search --text`` without ``--lam``); waits for the load."""
        self.loaded.wait()
        if self.encoder is None:
            raise Refused(self.why_not or "text queries are off")
        return text_queries(self.encoder.embed_text, [text])
