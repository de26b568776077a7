"""Typed views of what a run records: its ``_manifest.json`` and each window's noise source.

``RunManifest`` is the one reader and writer of ``_manifest.json`` (label and
rescore runs, read back by rescore, search, evaluate, report and --resume).
The common sections are typed fields; what only one job records (the label
run's ``work`` and ``skipped``, the rescore run's ``watermark``) stays in
``extra`` and is written back unchanged.

``NoiseSource`` is the ``noise_source`` column of ``segments``: which noise
recording was mixed into a window and where in it, or why none was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from das_core.errors import ManifestError
from das_core.io import storage

MANIFEST = "_manifest.json"

_TYPED = ("job", "status", "das_version", "format_version", "settings", "cache", "checkpoint", "counts", "runs")


@dataclass(frozen=True)
class RunManifest:
    """A run's ``_manifest.json``: what was run, with what, how it ended, its counts and every invocation."""

    job: str                                 # "label" or "rescore"
    status: str                              # "running", "complete", "failed", ...
    das_version: str = "0.1"
    format_version: int | None = None
    settings: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    checkpoint: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)
    runs: tuple = ()
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> RunManifest:
        """The manifest of parsed ``_manifest.json`` JSON; sections it does not type go to ``extra``."""
        if not isinstance(data, dict):
            raise ManifestError("a run manifest is a JSON object")
        return cls(job=str(data.get("job", "label")), status=str(data.get("status", "unknown")),
                   das_version=str(data.get("das_version", "0.1")), format_version=data.get("format_version"),
                   settings=dict(data.get("settings") or {}), cache=dict(data.get("cache") or {}),
                   checkpoint=dict(data.get("checkpoint") or {}), counts=dict(data.get("counts") or {}),
                   runs=tuple(data.get("runs") or ()),
                   extra={k: v for k, v in data.items() if k not in _TYPED})

    def to_dict(self) -> dict:
        """The JSON object as written: typed sections, then ``extra``, then counts and runs."""
        out: dict[str, Any] = {"job": self.job, "status": self.status, "das_version": self.das_version,
                               "format_version": self.format_version, "settings": self.settings,
                               "cache": self.cache, "checkpoint": self.checkpoint}
        out.update(self.extra)
        out.update({"counts": self.counts, "runs": list(self.runs)})
        return out

    def get(self, key: str, default=None):
        """A section by its JSON name (typed or extra)."""
        if key in _TYPED:
            value = getattr(self, key)
            return list(value) if key == "runs" else value
        return self.extra.get(key, default)

    # --------------------------------------------------------------- reading
    @classmethod
    def read(cls, folder: str) -> RunManifest | None:
        """The manifest of the run at ``folder`` (a relative path is taken from the working folder); None when
        it has none."""
        uri = storage.join(storage.absolute(folder), MANIFEST)
        if not storage.exists(uri):
            return None
        try:
            return cls.from_dict(json.loads(storage.read_bytes(uri)))
        except ValueError as exc:
            raise ManifestError(f"{uri} is not valid JSON ({exc})") from None

    @classmethod
    def require(cls, folder: str, needed_by: str) -> RunManifest:
        """The manifest at ``folder``, or a ManifestError that says what ``needed_by`` needs instead."""
        folder = storage.absolute(folder)
        manifest = cls.read(folder)
        if manifest is None:
            raise ManifestError(f"{folder} has no {MANIFEST}: it is not the output of `das label` or a `das rescore` "
                                f"run folder ({needed_by} needs one)")
        return manifest

    def write(self, folder: str) -> None:
        """Write ``folder/_manifest.json`` atomically."""
        text = json.dumps(self.to_dict(), indent=2, default=str) + "\n"
        storage.write_bytes_atomic(storage.join(storage.absolute(folder), MANIFEST), text.encode())

    # ------------------------------------------------------------- accessors
    @property
    def complete(self) -> bool:
        """Whether the run ended ``complete``."""
        return self.status == "complete"

    @property
    def checkpoint_fingerprint(self) -> str | None:
        """The fingerprint of the checkpoint the run's embeddings were made with, if recorded."""
        return self.settings.get("checkpoint_fingerprint") or self.checkpoint.get("fingerprint")

    def require_checkpoint(self, folder: str) -> str:
        """The checkpoint fingerprint, or a ManifestError when the manifest records none."""
        fingerprint = self.checkpoint_fingerprint
        if not fingerprint:
            raise ManifestError(f"{storage.join(folder, MANIFEST)} records no checkpoint fingerprint")
        return fingerprint

    @property
    def checkpoint_uri(self) -> str | None:
        """The checkpoint as the run was given it, if recorded."""
        return self.checkpoint.get("uri")

    @property
    def weights(self) -> str | None:
        """The checkpoint's weights (``random`` for a test or demo checkpoint), if recorded."""
        return self.checkpoint.get("weights")

    @property
    def embedding_dtype(self) -> str:
        """The storage type of the run's embeddings (``float16`` when not recorded)."""
        return self.settings.get("embedding_dtype") or "float16"

    @property
    def logit_scale(self) -> float | None:
        """The checkpoint's logit scale when the run wrote probabilities with it, else None."""
        return self.checkpoint.get("logit_scale") if self.settings.get("probabilities") else None

    @property
    def runs_started(self) -> list:
        """When each recorded invocation started."""
        return [r.get("started") for r in self.runs]


@dataclass(frozen=True)
class NoiseSource:
    """Where a window's noise came from: ``"<uri>@<offset>s"``, or ``"skipped: <why>"`` when none was mixed."""

    uri: str | None
    offset_s: float = 0.0
    skipped: str | None = None

    @classmethod
    def mixed(cls, uri: str, offset_s: float) -> NoiseSource:
        """Noise from ``uri``, starting ``offset_s`` seconds in."""
        return cls(uri, offset_s)

    @classmethod
    def not_mixed(cls, why: str) -> NoiseSource:
        """No noise mixed, and why."""
        return cls(None, 0.0, why)

    def __str__(self) -> str:
        return f"skipped: {self.skipped}" if self.skipped is not None else f"{self.uri}@{self.offset_s:.3f}s"

    @classmethod
    def parse(cls, text: str | None) -> NoiseSource | None:
        """The column value back as a NoiseSource; None for a clean window (no noise asked for)."""
        if not text:
            return None
        if text.startswith("skipped"):
            return cls.not_mixed(text.partition(":")[2].strip())
        uri, _, offset = text.rpartition("@")
        if not uri or not offset.endswith("s"):
            raise ManifestError(f"noise_source {text!r} is not '<uri>@<seconds>s' or 'skipped: <why>'")
        return cls.mixed(uri, float(offset[:-1]))
