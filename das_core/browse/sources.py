"""Which audio ``das browse`` may serve (``InputGuard``): only the inputs that the run's manifest names.

A path comes from the output's ``files`` rows, never from the client; it is served only when it lies in the
run's input, as the manifest records it (``settings.input``; a rescore run's is its label output's):

- a local folder: the path, once every symlink is resolved, stays inside the folder (itself resolved), so a
  symlink inside the input that points out of it is refused; so is any ``..`` part;
- an ``s3://`` prefix: the same bucket, a key under the prefix, no ``..`` part;
- a path list (``.csv`` or a Parquet file without an audio column): the path is on the list;
- a single file or shard: that file.

A shard's member (``<shard>.tar/<member>``, ``<shard>.parquet#<row>``) is judged by its shard. Anything else
raises ``SourceRefused`` (the server answers 403).
"""

from __future__ import annotations

import os
import re
import threading

from das_core.errors import ManifestError, SourceRefused
from das_core.io import storage
from das_core.io.inputs import PATH_LIST_EXTENSIONS, audio_column_of, normalise_uri
from das_core.io.s3 import is_s3
from das_core.output.manifest import RunManifest

FOLDER, LIST, ONE_FILE = "folder", "path list", "file"
_MEMBER = re.compile(r"^(.+?\.tar)/.+$|^(.+\.parquet)#\d+$", re.IGNORECASE)


def run_input(uri: str, manifest: RunManifest) -> str:
    """The input the run at ``uri`` labelled: its manifest's ``settings.input``, or for a rescore run, that of
    the label output it re-scored (followed through its ``settings.embeddings``)."""
    seen = {uri}
    while manifest.job == "rescore":
        source = manifest.settings.get("embeddings")
        if not source or source in seen:
            break
        seen.add(source)
        manifest = RunManifest.read(source) or manifest
    found = manifest.settings.get("input")
    if not found:
        raise ManifestError(f"{storage.join(uri, '_manifest.json')} names no input (settings.input): das browse "
                            "serves audio only from the inputs a run's manifest names")
    return normalise_uri(found)


def shard_of(path: str) -> str | None:
    """The shard that holds ``path`` when it names a shard's member, else None."""
    match = _MEMBER.match(path)
    return (match.group(1) or match.group(2)) if match else None


def _has_dot_dot(path: str) -> bool:
    return any(part == ".." for part in re.split(r"[/\\]", path))


def input_kind(uri: str) -> str:
    """``FOLDER``, ``LIST`` or ``ONE_FILE`` for the input ``uri`` (an s3:// prefix is a folder)."""
    lowered = uri.lower()
    if lowered.endswith(PATH_LIST_EXTENSIONS) and storage.exists(uri):
        if lowered.endswith(".csv"):
            return LIST
        import pyarrow.parquet as pq

        with storage.open_input(uri) as f:
            has_audio = audio_column_of(pq.ParquetFile(f).schema_arrow, None) is not None
        return ONE_FILE if has_audio else LIST
    if is_s3(uri):
        fs, path = storage.filesystem(uri)
        return ONE_FILE if fs.isfile(path) else FOLDER
    return ONE_FILE if os.path.isfile(uri) else FOLDER


class InputGuard:
    """The rule of the module for one run's input: ``check(path)`` returns the path to open or raises
    ``SourceRefused``. A path list is read once, at the first check."""

    def __init__(self, input_uri: str, kind: str | None = None):
        self.input = input_uri
        self.kind = kind or input_kind(input_uri)
        self._listed: frozenset[str] | None = None
        self._lock = threading.Lock()

    def listed(self) -> frozenset[str]:
        """The paths of a path-list input, as das label resolved them (read once)."""
        with self._lock:
            if self._listed is None:
                from das_core.io.inputs import list_input_table

                table, _ = list_input_table(self.input)
                self._listed = frozenset(table.column("path").to_pylist())
            return self._listed

    def check(self, path: str) -> str:
        """``path`` when it lies in the input (see the module), else ``SourceRefused``."""
        if not path or "\0" in path or _has_dot_dot(path):
            raise SourceRefused(f"{path!r}: a path with '..' is never served")
        shard = shard_of(path)           # a member is judged by its shard (lexically: no request is made)
        if self.kind == LIST:
            if path not in self.listed() and shard not in self.listed():
                raise SourceRefused(f"{path}: not on the run's path list {self.input}")
        elif is_s3(self.input) or is_s3(path):
            self._check_s3(shard or path)
        elif shard and self.kind == ONE_FILE:
            self._check_local(shard)
        else:                            # a symlink may be the shard or the file itself: both resolved
            for each in filter(None, (shard, path)):
                self._check_local(each)
        return path

    def _check_s3(self, path: str) -> None:
        if not (is_s3(path) and is_s3(self.input)):
            raise SourceRefused(f"{path}: not in the run's input {self.input}")
        bucket, _, key = path.split("://", 1)[1].partition("/")
        root_bucket, _, prefix = self.input.split("://", 1)[1].partition("/")
        prefix = prefix.rstrip("/")
        inside = key == prefix if self.kind == ONE_FILE else (not prefix or key.startswith(prefix + "/"))
        if bucket != root_bucket or not inside:
            raise SourceRefused(f"{path}: not in the run's input {self.input} (another bucket or prefix)")

    def _check_local(self, path: str) -> None:
        if is_s3(path) or not os.path.isabs(path):
            raise SourceRefused(f"{path}: not an absolute path in the run's input {self.input}")
        real, root = os.path.realpath(path), os.path.realpath(self.input)
        inside = real == root if self.kind == ONE_FILE else real.startswith(root.rstrip("/") + "/")
        if not inside:
            raise SourceRefused(f"{path}: it resolves to {real}, outside the run's input {self.input} "
                                "(a symlink out of the input is not served)")


def guard_for(uri: str, manifest: RunManifest) -> InputGuard:
    """The ``InputGuard`` of the run at ``uri``."""
    return InputGuard(run_input(uri, manifest))

