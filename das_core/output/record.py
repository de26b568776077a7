"""What every command's run record shares: timestamps, the drift cache's block, the weights note, how a run ended.

``das label`` and ``das rescore`` write these into their ``_manifest.json``
and their closing lines; ``das evaluate`` stamps ``evaluation.json`` with
``utc_now``. Written once here so that the records cannot drift apart.
"""

from __future__ import annotations

import datetime as dt

from das_core.errors import interrupted_by
from das_core.failure import explain

RANDOM_WEIGHTS_NOTE = "  (RANDOM: labels are meaningless)"


def utc_now() -> str:
    """The current UTC time to the second, ISO 8601 (``2026-12-06T11:25:31+00:00``)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def utc_from_unix(unix: float) -> str:
    """A Unix time as ``utc_now`` writes it."""
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds")


def utc_compact() -> str:
    """The current UTC time as ``20261206T112531Z`` (for run ids)."""
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def utc_date() -> str:
    """Today's UTC date, ``2026-12-06``."""
    return dt.datetime.now(dt.UTC).date().isoformat()


def cache_block(uri: str, cache) -> dict:
    """The manifest's ``cache`` section for the drift cache ``cache`` read from ``uri``."""
    return {"uri": uri, "fingerprint": cache.fingerprint, "n_labels": len(cache.labels), "lam": cache.lam,
            "clean_template": cache.clean_template, "noisy_template": cache.noisy_template,
            "clean_templates": list(cache.clean_templates) or None,     # a prompt ensemble, if any
            "noise_phrases": list(cache.noise_phrases), "labels": list(cache.labels)}


def weights_line(weights: str | None) -> str:
    """The closing summary's ``weights:`` line, flagged when the checkpoint has random (test or demo) weights."""
    return f"  weights:   {weights}" + (RANDOM_WEIGHTS_NOTE if weights == "random" else "")


def ended_by(exc: BaseException) -> tuple[str, str]:
    """The manifest status (``interrupted`` or ``failed``) and the one-line reason for a run ended by ``exc``."""
    interrupt = exc if isinstance(exc, KeyboardInterrupt) else interrupted_by(exc)
    if interrupt is not None:
        return "interrupted", f"interrupted ({interrupt.args[0] if interrupt.args else 'Ctrl-C'})"
    if isinstance(exc, SystemExit):          # Ray's driver turns SIGTERM into sys.exit(15)
        return "interrupted", ("interrupted (signal SIGTERM)" if exc.code == 15 else f"exited ({exc.code})")
    return "failed", explain(exc)[1]
