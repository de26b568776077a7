"""One window's audio as ``das browse`` serves it (``window_audio``): found by its row reference, checked
against the run's input, cut by report.html's excerpt cutter (das's decoder, Opus in Ogg).

The client names a window by file id and window number only; the path comes from the output's ``files``
row and is served only when ``InputGuard`` allows it. Every answer is an ``AudioAnswer``: the Ogg bytes
(200), or a status with a one-line text the page shows: 404 for an unknown window or a source that is no
longer there, 403 for a path outside the input, 422 for a source that no longer decodes or has changed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from das_core.browse.catalogue import RunCatalogue
from das_core.browse.sources import InputGuard, shard_of
from das_core.errors import SourceRefused
from das_core.io import storage
from das_core.report.excerpts import SOURCE_ERRORS, cut_source
from das_core.report.picks import Pick

OGG = "audio/ogg"
TEXT = "text/plain; charset=utf-8"
KEPT_EXCERPTS = 64           # excerpts kept in memory (a browser asks for one in several byte ranges)


@dataclass(frozen=True)
class AudioAnswer:
    """An HTTP answer for one window's audio: status, body and content type."""

    status: int
    body: bytes
    content_type: str

    @classmethod
    def text(cls, status: int, message: str) -> AudioAnswer:
        """A plain-text answer (the page shows it in place of the player)."""
        return cls(status, message.encode(), TEXT)


class WindowAudio:
    """``window_audio`` with the last ``KEPT_EXCERPTS`` answers kept (a browser reads a file in ranges)."""

    def __init__(self, catalogue: RunCatalogue, guard: InputGuard):
        self.catalogue, self.guard = catalogue, guard
        self._kept: OrderedDict[tuple[str, int], AudioAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, file_id: str, segment: int) -> AudioAnswer:
        """The answer for window ``segment`` of ``file_id`` (see the module)."""
        key = (file_id, segment)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
        answer = window_audio(self.catalogue, self.guard, file_id, segment)
        if answer.status == 200:
            with self._lock:
                self._kept[key] = answer
                while len(self._kept) > KEPT_EXCERPTS:
                    self._kept.popitem(last=False)
        return answer


def window_audio(catalogue: RunCatalogue, guard: InputGuard, file_id: str, segment: int) -> AudioAnswer:
    """The Ogg/Opus excerpt of one window of the run, or the status and text that say why there is none."""
    row = catalogue.file_row(file_id)
    window = catalogue.window(file_id, segment) if row is not None else None
    if row is None or window is None:
        return AudioAnswer.text(404, "no such window in this run (unknown file id or window number)")
    try:
        path = guard.check(row.path)
    except SourceRefused as exc:
        return AudioAnswer.text(403, f"refused: {exc}")
    try:
        present = storage.exists(shard_of(path) or path)
    except OSError as exc:
        return AudioAnswer.text(404, f"the source cannot be reached: {path} ({exc})")
    if not present:
        return AudioAnswer.text(404, f"the source is no longer there: {path}")
    pick = Pick(file_id, path, segment, window["start_s"], window["end_s"], window["label"], window["score"],
                None, None, None, None)
    try:
        excerpt = cut_source(path, [pick], catalogue.manifest.settings.get("audio_column"))[pick]
    except SOURCE_ERRORS as exc:           # cut_source notes what it expects; anything else is the source's too
        return AudioAnswer.text(422, f"the source cannot be read: {path} ({type(exc).__name__}: {exc})")
    if excerpt.data is None:
        return AudioAnswer.text(422, f"{path}: {excerpt.note}")
    return AudioAnswer(200, excerpt.data, OGG)
