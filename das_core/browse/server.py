"""The web app of ``das browse`` (``Browser`` and its aiohttp application, ``Browser.app``), read-only.

Routes: ``/`` (the page), ``/api/status``, ``/api/search?q=&label=&min_score=&top=``,
``/api/like?file=&segment=&top=``, ``/api/timeline?file=``, ``/audio?file=&segment=`` (Ogg/Opus, byte ranges
answered). Only GET. Work that reads storage or ranks runs in a thread pool, so a slow source or a long scan
never stops the server answering; a request that fails answers its status with one line of text.

What starts with the server (``Browser.start_loading``), in the background: the index (if ``das index``
made one), the file directory, and the text encoder. Until the encoder is there, text queries wait for it;
when there is none, they answer 503 with the reason, and everything else works.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from das_core.browse.catalogue import RunCatalogue
from das_core.browse.engine import BrowseSearch, TextEncoder
from das_core.browse.listen import WindowAudio
from das_core.browse.page import build_page
from das_core.browse.sources import InputGuard
from das_core.errors import ConfigError, Refused

log = logging.getLogger("das.browse")

MAX_TOP = 200
DEFAULT_TOP = 20
FILTER_POOL = 200        # a text query with a label or score filter ranks this many windows, then filters
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _number(request: web.Request, name: str, default: float | None, kind=float) -> float | None:
    raw = request.query.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a finite number")
    return value


def _top(request: web.Request) -> int:
    return max(1, min(MAX_TOP, int(_number(request, "top", DEFAULT_TOP, int))))


def _rows(table) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "query"} for row in table.to_pylist()]


class Browser:
    """One run served: its catalogue, input guard, search engine, text encoder and audio cutter."""

    def __init__(self, catalogue: RunCatalogue, guard: InputGuard, text: TextEncoder, workers: int = 4):
        self.catalogue, self.guard, self.text = catalogue, guard, text
        self.search = BrowseSearch(catalogue.uri, catalogue.units, catalogue.listing)
        self.audio = WindowAudio(catalogue, guard)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="das-browse")
        self.page = build_page(catalogue.uri)

    def start_loading(self) -> None:
        """Load the index, the file directory and the text encoder in the background."""
        self.pool.submit(self.search.load)
        self.pool.submit(self.text.load)
        self.pool.submit(self.catalogue.directory)

    def status(self) -> dict:
        """What the page's status line says: the run, its size, text search and how queries are ranked."""
        if not self.text.loaded.is_set():
            text = "loading the checkpoint for text queries"
        else:
            text = "ready" if self.text.encoder is not None else self.text.why_not
        return {"uri": self.catalogue.uri, "windows": self.catalogue.windows, "files_units": len(self.catalogue.units),
                "labels": self.catalogue.labels, "text_search": text, "ranking": self.search.describe(),
                "loading": not (self.text.loaded.is_set() and self.search.loaded.is_set()),
                "index_load_s": self.search.load_s, "checkpoint_load_s": self.text.load_s,
                "directory_s": self.catalogue.directory_s}

    def find(self, text: str, label: str | None, min_score: float | None, top: int) -> list[dict]:
        """A text query's best windows (filtered by DAS label and minimum query score), or without text the
        best windows of ``label`` (of any label) by their DAS score."""
        if not text:
            return self.catalogue.best_windows(label, min_score, top)
        filtered = label is not None or min_score is not None
        hits = self.catalogue.annotate(_rows(self.search.rank(self.text.queries(text),
                                                              max(top, FILTER_POOL) if filtered else top)))
        kept = [h for h in hits if (label is None or h["label"] == label)
                and (min_score is None or h["score"] >= min_score)]
        return kept[:top]

    def like(self, file_id: str, segment: int, top: int) -> list[dict] | None:
        """The windows most like one window of the run (its stored embedding), or None for an unknown one."""
        embedding = self.catalogue.embedding_of(file_id, segment)
        if embedding is None:
            return None
        return self.catalogue.annotate(_rows(self.search.like(f"{file_id}#{segment}", embedding, top)))

    def timeline(self, file_id: str) -> dict | None:
        """A file's windows in time order, with its path and duration; None for an unknown file."""
        row = self.catalogue.file_row(file_id)
        if row is None:
            return None
        windows = self.catalogue.file_windows(file_id).to_pylist()
        return {"file_id": file_id, "path": row.path, "duration_s": row.duration_s, "status": row.status,
                "error": row.error, "windows": windows}

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _json(self, request: web.Request, work) -> web.Response:
        """``work()`` in the pool, answered as JSON with its time; its refusals as one line of text."""
        started = time.monotonic()
        try:
            result = await self._run(work)
        except ConfigError as exc:
            return web.Response(status=400, text=str(exc))
        except Refused as exc:
            return web.Response(status=503, text=str(exc))
        if result is None:
            return web.Response(status=404, text="no such file or window in this run")
        return web.json_response({**result, "seconds": time.monotonic() - started}
                                 if isinstance(result, dict) else
                                 {"results": result, "seconds": time.monotonic() - started})

    async def index(self, request: web.Request) -> web.Response:
        """The page."""
        return web.Response(text=self.page, content_type="text/html", charset="utf-8")

    async def api_status(self, request: web.Request) -> web.Response:
        """``/api/status``."""
        return web.json_response(self.status())

    async def api_search(self, request: web.Request) -> web.Response:
        """``/api/search``: see ``find``."""
        try:
            args = (request.query.get("q", "").strip(), request.query.get("label", "").strip() or None,
                    _number(request, "min_score", None), _top(request))
        except ConfigError as exc:
            return web.Response(status=400, text=str(exc))
        return await self._json(request, lambda: self.find(*args))

    async def api_like(self, request: web.Request) -> web.Response:
        """``/api/like``: see ``like``."""
        try:
            args = (request.query.get("file", ""), int(_number(request, "segment", -1, int)), _top(request))
        except ConfigError as exc:
            return web.Response(status=400, text=str(exc))
        return await self._json(request, lambda: self.like(*args))

    async def api_timeline(self, request: web.Request) -> web.Response:
        """``/api/timeline``: see ``timeline``."""
        file_id = request.query.get("file", "")
        return await self._json(request, lambda: self.timeline(file_id))

    async def audio_route(self, request: web.Request) -> web.Response:
        """``/audio``: one window's excerpt (``WindowAudio``), with byte ranges."""
        try:
            segment = int(_number(request, "segment", -1, int))
        except ConfigError as exc:
            return web.Response(status=400, text=str(exc))
        answer = await self._run(self.audio, request.query.get("file", ""), segment)
        if answer.status != 200:
            return web.Response(status=answer.status, body=answer.body, content_type="text/plain", charset="utf-8")
        return ranged(request, answer.body, answer.content_type)

    def app(self) -> web.Application:
        """The aiohttp application: GET routes only."""
        application = web.Application()
        application.add_routes([web.get("/", self.index), web.get("/api/status", self.api_status),
                                web.get("/api/search", self.api_search), web.get("/api/like", self.api_like),
                                web.get("/api/timeline", self.api_timeline), web.get("/audio", self.audio_route)])
        return application


def ranged(request: web.Request, body: bytes, content_type: str) -> web.Response:
    """``body``, or the byte range the request asks for (206), as a media element reads it."""
    headers = {"Accept-Ranges": "bytes", "Cache-Control": "no-store"}
    match = _RANGE.match(request.headers.get("Range", "").strip())
    if not match or not (match.group(1) or match.group(2)):
        return web.Response(body=body, content_type=content_type, headers=headers)
    size = len(body)
    if match.group(1):
        first = int(match.group(1))
        last = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    else:
        first, last = max(0, size - int(match.group(2))), size - 1
    if first >= size or first > last:
        return web.Response(status=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return web.Response(status=206, body=body[first:last + 1], content_type=content_type, headers=headers)
