"""The decode-crash watch: which input kills the processes that decode a unit, so that it can be given up.

A process that dies while decoding (a native decoder's segfault, the OOM killer) takes its ``try`` with
it: only someone outside the process can tell which input killed it. ``DecodeProgress`` is that someone
(a Ray actor on Ray, ``jobs.pipeline``; an object in the das process for a local run,
``das_core.label.decode_process``); ``RemoteWatch`` is the decode stage's side of it.
"""

from __future__ import annotations

from typing import Protocol


class DecodeWatch(Protocol):
    """What the decode stage tells about, and asks of, the watch over a unit's decode attempts."""

    def begin(self, unit: str) -> tuple[dict[int, str], int]:
        """An attempt at ``unit`` starts: the inputs to give up on (position in the unit -> path), and the
        highest chunk index any earlier attempt began filling (-1: none)."""

    def at(self, unit: str, position: int, path: str) -> None:
        """The attempt is about to decode the input at ``position`` (counted over shard members too)."""

    def chunk(self, unit: str, index: int) -> None:
        """The attempt begins filling chunk ``index`` (the ones before it are sent on)."""

    def done(self, unit: str) -> None:
        """The attempt decoded every input of ``unit``."""


class RemoteWatch:
    """A ``DecodeWatch`` over a ``DecodeProgress`` in another process, reached through ``call(method, *args,
    wait=...)`` (the job's Ray actor call). If a call fails (the actor died), decoding goes on unwatched. A retry
    of a unit that died (``careful``) waits for each report, so that a death is placed exactly."""

    def __init__(self, call):
        self.call, self.careful = call, False

    def _tell(self, method: str, *args, wait: bool):
        if self.call is None:
            return None
        try:
            return self.call(method, *args, wait=wait)
        except Exception:  # noqa: BLE001 - the watch is an aid: without it, decoding goes on unwatched
            self.call = None
            return None

    def begin(self, unit: str) -> tuple[dict[int, str], int]:
        """Report a new attempt at ``unit`` (waiting for the answer): the inputs to give up on, the chunk reached."""
        answer = self._tell("begin", unit, wait=True)
        if answer is None:
            return {}, -1
        self.careful, crashed, reached = answer
        return crashed, reached

    def at(self, unit: str, position: int, path: str) -> None:
        """The attempt at ``unit`` is about to decode the input at ``position``."""
        self._tell("at", unit, position, path, wait=self.careful)

    def chunk(self, unit: str, index: int) -> None:
        """The attempt at ``unit`` begins filling chunk ``index``."""
        self._tell("chunk", unit, index, wait=self.careful)

    def done(self, unit: str) -> None:
        """The attempt at ``unit`` finished: forget the unit."""
        self._tell("done", unit, wait=False)


class DecodeProgress:
    """Where each unit's decode attempt is, to find inputs that kill their process (a Ray actor, one per run).

    A new attempt at a unit whose last attempt never said ``done`` means that attempt's process died. The
    first death is only noted: the first attempt reports its position fire-and-forget (one message per
    input, no wait), so a message may be lost with the process. Retries of a unit that died report each
    position and wait for it (``careful``); a careful attempt that dies therefore died at a known input,
    and an input two careful attempts died on is given up (``decoder_crash``). One death is never enough:
    a node can die for other reasons. ``reached``: the highest chunk index an attempt began filling (see
    ``das_core.label.decode._give_up``). Memory: only units being decoded are held.
    """

    def __init__(self):
        self.units: dict[str, dict] = {}

    def begin(self, unit: str) -> tuple[bool, dict[int, str], int]:
        """(careful, inputs to give up on, chunk reached) for a new attempt at ``unit``."""
        state = self.units.get(unit)
        if state is None:
            self.units[unit] = {"careful": False, "at": None, "deaths": {}, "paths": {}, "reached": -1}
            return False, {}, -1
        if state["careful"] and state["at"] is not None:          # the last attempt died there
            position, path = state["at"]
            state["deaths"][position] = state["deaths"].get(position, 0) + 1
            state["paths"][position] = path
        state["careful"], state["at"] = True, None
        return True, {p: state["paths"][p] for p, n in state["deaths"].items() if n >= 2}, state["reached"]

    def at(self, unit: str, position: int, path: str) -> None:
        """The attempt at ``unit`` is about to decode the input at ``position``."""
        if unit in self.units:
            self.units[unit]["at"] = (position, path)

    def chunk(self, unit: str, index: int) -> None:
        """The attempt at ``unit`` begins filling chunk ``index``."""
        if unit in self.units:
            self.units[unit]["reached"] = max(self.units[unit]["reached"], index)

    def done(self, unit: str) -> None:
        """The attempt at ``unit`` finished: forget the unit."""
        self.units.pop(unit, None)
