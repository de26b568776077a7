"""The settings of one ``das search`` (``SearchConfig``), checked when made (``ConfigError``).

The output searched (``--embeddings``) is a ``das label`` output or one
``das rescore`` run folder (``OUT/run_id=ID``); local paths are made absolute
here, once.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from das_core.errors import ConfigError
from das_core.io import storage
from das_core.io.checks import overlap
from das_core.runtime import engine
from das_core.search.queries import LEVELS, SEGMENT
from das_core.settings import setting

log = logging.getLogger("das.search")

DEFAULT_TOP = 10


@dataclass(frozen=True)
class SearchConfig:
    """The settings of one search, checked when made (``ConfigError``), before storage or the model is used."""

    embeddings: str = setting(metavar="URI", help="output folder or s3:// prefix of `das label`, or a `das rescore` "
                              "run folder (run_id=ID)")
    checkpoint: str = setting(metavar="CKPT", help="the CLAP checkpoint the embeddings were made with (refused if it "
                              "is another one)")
    texts: list[str] = setting([], flag="--text", repeat=True, metavar="QUERY",
                               help="a text query, e.g. 'glass breaking at night' (repeatable)")
    like: list[str] = setting([], repeat=True, metavar="AUDIO",
                              help="an audio file (local or s3://): find what sounds like it (repeatable)")
    level: str = setting(SEGMENT, choices=LEVELS,
                         help="rank 10 s windows (segment) or whole files (file: their mean embedding)")
    top: int = setting(DEFAULT_TOP, metavar="N", help="matches kept per query")
    min_score: float | None = setting(None, metavar="X", help="drop matches scoring below X")
    lam: float = setting(0.0, metavar="X", help="text queries: add X times the cosine with the query's drift "
                         "direction (DAS-style bonus; 0: plain cosine)")
    noise_phrases: tuple[str, ...] | None = None     # of the drift direction (--noise-phrases FILE, jobs.search)
    out: str | None = setting(None, metavar="URI", help="write the matches to this Parquet file (local or s3://)")
    tokenizer_dir: str | None = setting(None, metavar="DIR", help="roberta-base tokenizer files (RoBERTa "
                                        "checkpoints)")
    exact: bool = setting(False, help="rank by the exact scan even where `das index` built an index for --level")
    device: str = setting("cpu", help="where queries are encoded: cpu or cuda[:N]")
    local: bool = setting(False, help="search in this process, without Ray (the same matches). Default: automatic, "
                          "local when the output holds few windows (see README)")
    ray: bool = setting(False, help="search on Ray (RAY_ADDRESS, or a private local Ray) even a small output")

    def __post_init__(self) -> None:
        self._absolute_paths()
        engine.check_forced(self.local, self.ray)
        if not self.texts and not self.like:
            raise ConfigError("no query: give --text QUERY, --text-file FILE or --like AUDIO")
        if any(not t.strip() for t in self.texts):
            raise ConfigError("--text: a query is empty")
        if self.top < 1:
            raise ConfigError(f"--top must be at least 1, got {self.top}")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ConfigError(f"--lam must be a finite number >= 0, got {self.lam}")
        if self.min_score is not None and not math.isfinite(self.min_score):
            raise ConfigError(f"--min-score must be a finite number, got {self.min_score}")
        if self.level not in LEVELS:
            raise ConfigError(f"--level must be one of {', '.join(LEVELS)}, got {self.level!r}")
        if self.lam > 0 and self.texts and self.noise_phrases is not None and not self.noise_phrases:
            raise ConfigError("--noise-phrases: the file holds no phrase, and --lam needs at least one")
        if self.lam > 0 and not self.texts:
            log.warning("--lam applies to text queries only; --like queries are ranked by plain cosine")

    def _absolute_paths(self) -> None:
        """Every local path made absolute once, here; ``--out`` inside ``--embeddings`` refused (it could replace
        one of das's parts there)."""
        def put(name: str, value) -> None:
            """Set a field of this frozen config."""
            object.__setattr__(self, name, value)

        put("embeddings", storage.absolute(self.embeddings))
        put("like", [storage.absolute(u) for u in self.like])
        put("checkpoint", storage.absolute_if_local(self.checkpoint))
        if self.out:
            put("out", storage.absolute(self.out))
            if overlap(self.out, self.embeddings) in ("inside", "the same location as"):
                raise ConfigError(f"--out {self.out} is inside --embeddings {self.embeddings} (the matches could "
                                  f"replace das's own files there); write them outside {self.embeddings}")
        if self.tokenizer_dir:
            put("tokenizer_dir", storage.absolute(self.tokenizer_dir))
