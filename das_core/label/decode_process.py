"""Decoding in a child process, for runs without Ray: a file that crashes the decoder kills the child, not das.

On Ray a decode task that dies is retried by Ray Data, and ``crash_watch.DecodeProgress`` finds the input that
kills it. A local run (``das_core.label.local``) gets the same guarantee from this module: each unit is
decoded by ``decode.decode_units`` in a child process, watched by a ``DecodeProgress`` that lives in the das
process. When the child dies, a new one decodes the unit again; chunks the dead attempt already delivered are not
delivered twice (as Ray keeps a dead task's output), and an input that two careful attempts died on becomes
one ``decoder_crash`` error row. The rows are those of an undisturbed run.

The child imports only the decoding stack (no torch), ignores Ctrl-C (the das process decides what an
interrupt means) and exits when the das process goes away (its pipe closes).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
from collections.abc import Iterator

import pyarrow as pa

from das_core.errors import RunFailed
from das_core.label.crash_watch import DecodeProgress, RemoteWatch
from das_core.label.decode import DecodeSettings, decode_units

log = logging.getLogger("das")

# Attempts at one unit: two careful deaths per crashing input, plus room for deaths of other causes.
BASE_ATTEMPTS = 4


def _child_main(conn, settings: DecodeSettings) -> None:
    """The child: decode each unit it is sent, sending its chunks, watch reports and ``done`` back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def call(method: str, *args, wait: bool):
        """Send a watch report to the das process; its answer when ``wait``."""
        conn.send(("watch", method, args, wait))
        return conn.recv() if wait else None

    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        try:
            for chunk in decode_units(message[1], settings, RemoteWatch(call)):
                conn.send(("chunk", chunk))
        except Exception as exc:  # noqa: BLE001 - the das process raises it; decoding errors are rows already
            conn.send(("error", exc))
            continue
        conn.send(("done",))


class DecodeProcess:
    """``das_core.label.decode.decode_units`` one unit at a time in a child process, restarted when it dies."""

    def __init__(self, settings: DecodeSettings):
        self.settings = settings
        self.progress = DecodeProgress()
        self.context = multiprocessing.get_context("spawn")     # never fork a process that holds torch threads
        self.process = None
        self.conn = None

    def __enter__(self) -> DecodeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        here, there = self.context.Pipe()
        self.process = self.context.Process(target=_child_main, args=(there, self.settings), daemon=True,
                                            name="das-decode")
        self.process.start()
        there.close()
        self.conn = here

    def _reap(self) -> int | None:
        """Forget a dead child; its exit code (negative: the signal that killed it)."""
        self.conn.close()
        self.process.join(5)
        code = self.process.exitcode
        self.process = self.conn = None
        return code

    def close(self) -> None:
        """Stop the child (asked first, killed after 5 s) and reap it."""
        if self.process is None:
            return
        try:
            self.conn.send(("stop",))
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
        self._reap()

    def decode(self, units_table: pa.Table) -> Iterator[pa.Table]:
        """The chunk rows of every unit of ``units_table`` (unit-table rows), in order."""
        for i in range(len(units_table)):
            yield from self._decode_unit(units_table.slice(i, 1))

    def _decode_unit(self, row: pa.Table) -> Iterator[pa.Table]:
        unit = row.column("unit")[0].as_py()
        attempts = BASE_ATTEMPTS + 2 * len(row.column("file_ids")[0])
        delivered: set[int] = set()
        for _ in range(attempts):
            if self.process is None:
                self._start()
            self.conn.send(("unit", row))
            try:
                yield from self._receive(delivered)
                return
            except (EOFError, ConnectionResetError, BrokenPipeError):
                code = self._reap()
                log.warning("the decoding process died while decoding unit %s (exit code %s); decoding it again, "
                            "carefully", unit, code)
        raise RunFailed(f"the decoding process died {attempts} times on unit {unit} without reaching a file to "
                        "blame; its files are listed in OUT/_work/units.parquet: check them, then rerun with --resume")

    def _receive(self, delivered: set[int]) -> Iterator[pa.Table]:
        """One attempt's messages until ``done``: watch calls answered, chunks not delivered before yielded."""
        while True:
            message = self.conn.recv()
            kind = message[0]
            if kind == "watch":
                _, method, args, wait = message
                answer = getattr(self.progress, method)(*args)
                if wait:
                    self.conn.send(answer)
            elif kind == "chunk":
                index = message[1].column("chunk")[0].as_py()
                if index not in delivered:
                    delivered.add(index)
                    yield message[1]
            elif kind == "error":
                raise message[1]
            else:
                return
