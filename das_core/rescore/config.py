"""The settings of one ``das rescore`` run (``RescoreConfig``) and how its run folder is named.

A run writes into ``OUT/run_id=<ID>/``; the id defaults to today's UTC date.
Everything here is checked when the config is made, before any storage is
touched (``ConfigError``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from das_core.errors import ConfigError
from das_core.io import storage
from das_core.io.checks import refuse_overlap
from das_core.output.record import utc_date
from das_core.report.picks import DEFAULT_EXCERPTS, check_excerpts
from das_core.runtime import engine
from das_core.settings import setting

RUN_PREFIX = "run_id="
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class RescoreConfig:
    """The settings of one rescore run, checked when made (``ConfigError``), before any storage is touched."""

    embeddings: str = setting(metavar="URI", help="output folder or s3:// prefix of a `das label` run (its "
                              "segments/, files/, _manifest.json)")
    cache: str = setting(metavar="URI", help="drift cache (`das build-cache`) built with the checkpoint the "
                         "embeddings were made with")
    out: str = setting(metavar="URI", help="folder or s3:// prefix that holds one run_id=ID/ folder per rescore run")
    run_id: str | None = setting(None, metavar="ID", help="name of this run's folder, OUT/run_id=ID/ (letters, "
                                 "digits, '.', '_', '-'); default: today's UTC date, YYYY-MM-DD")
    since_last_run: bool = setting(False, help="score only the rows the label output gained since the last complete "
                                   "rescore run of the same --embeddings under OUT (its manifest's watermark); "
                                   "everything when there is none")
    top_k: int | None = setting(None, metavar="K",
                                help="classes kept per window and per file (default: the label run's --top-k)")
    overwrite: bool = setting(False, help="replace OUT/run_id=ID/ when it already holds a run (otherwise refused)")
    copy_embeddings: bool = setting(False, help="write the window embeddings into this run's segments/ too "
                                    "(default: the run references the label output's, which das readers follow)")
    local: bool = setting(False, help="run in this process, without Ray (the same rows). Default: automatic, local "
                          "when the label output holds few windows (see README)")
    ray: bool = setting(False, help="run on Ray (RAY_ADDRESS, or a private local Ray) even for a small output")
    progress_every_s: float = 15.0
    report: bool = True                  # write the run's report/ at the end (das report)
    report_excerpts: int = DEFAULT_EXCERPTS   # excerpts per label in its report.html; --excerpts

    def __post_init__(self) -> None:
        for name in ("embeddings", "cache", "out"):        # local paths made absolute once, here
            object.__setattr__(self, name, storage.absolute(getattr(self, name)))
        refuse_overlap(self.out, "--out", self.embeddings, "--embeddings")
        engine.check_forced(self.local, self.ray)
        if self.run_id is not None and not RUN_ID_PATTERN.match(self.run_id):
            raise ConfigError(f"--run-id {self.run_id!r} is not a valid run name: use up to 128 letters, digits, "
                              f"'.', '_' or '-', starting with a letter or digit")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError("--top-k must be at least 1")
        if not self.progress_every_s > 0:
            raise ConfigError(f"progress_every_s must be positive, got {self.progress_every_s}")
        check_excerpts(self.report_excerpts)


def default_run_id() -> str:
    """The run id when ``--run-id`` is not given: today's UTC date."""
    return utc_date()
