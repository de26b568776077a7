"""Locations checked before any work: an output that overlaps what das reads, an output that cannot be
written. Each check refuses (``Refused``) with the option's name, the location and what to do.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress

from das_core.errors import Refused
from das_core.io.s3 import is_s3
from das_core.io.storage import TEMP_PREFIX, absolute


def _components(uri: str) -> tuple[str, ...]:
    """A location as comparable path components: S3 ``("s3", bucket, key parts...)`` (``s3a`` is ``s3``);
    local: the real path (symlinks resolved), split."""
    if is_s3(uri):
        return ("s3", *[p for p in uri.split("://", 1)[1].split("/") if p])
    return ("file", *[p for p in os.path.realpath(absolute(uri)).split(os.sep) if p])


def overlap(inner: str, outer: str) -> str | None:
    """How location ``inner`` meets location ``outer``: ``"the same location as"``, ``"inside"``, ``"contains"``,
    or None when neither holds the other. Compared by path components (``out2`` is not inside ``out``),
    local paths with symlinks resolved, S3 prefixes within one bucket."""
    a, b = _components(inner), _components(outer)
    if a == b:
        return "the same location as"
    if a[:len(b)] == b:
        return "inside"
    if b[:len(a)] == a:
        return "contains"
    return None


def refuse_overlap(out: str, out_option: str, source: str, source_option: str) -> None:
    """Refuse, before any work, an output location that is, holds or lies inside a location das reads
    (``Refused``): das would read its own output back, and mix its files with the ones it reads."""
    how = overlap(out, source)
    if how is None:
        return
    raise Refused(f"{out_option} {out} is {how} {source_option} {source} (das would mix its output with the "
                  f"files it reads); choose an {out_option} that neither lies inside {source} nor contains it")


def _cause(exc: OSError) -> str:
    """An OS error's cause as a message part: ``read-only file system``, ``no space left on device``."""
    text = exc.strerror or type(exc).__name__
    return text[:1].lower() + text[1:]


def _try_write_in(folder: str) -> None:
    """Create and remove a hidden temporary file in ``folder``: the only true test of writing there
    (``os.access`` says yes to root on a read-only file system)."""
    fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "probe-", dir=folder)
    os.close(fd)
    os.unlink(probe)


def _check_can_make(folder: str, uri: str, option: str) -> None:
    """Refuse ``uri`` unless a file can be written in ``folder``: try it, creating the nearest missing folder
    on the way (and removing what the try made)."""
    parent, missing = folder, None
    while not os.path.lexists(parent) and os.path.dirname(parent) != parent:   # the folders to create
        parent, missing = os.path.dirname(parent), parent
    if not os.path.isdir(parent):
        raise Refused(f"{option} {uri}: {parent} is a file, not a folder; choose another location")
    try:
        if missing:
            os.mkdir(missing)
    except FileExistsError:
        missing = None                           # made meanwhile by someone else: only test writing in it
    except OSError as exc:
        raise Refused(f"{option} {uri}: cannot create {missing} ({_cause(exc)}); "
                      "choose a location you can write to") from None
    where = missing or parent
    try:
        _try_write_in(where)
    except OSError as exc:
        it = "it" if where == os.path.abspath(os.path.expanduser(uri)) else where
        raise Refused(f"{option} {uri}: cannot write in {it} ({_cause(exc)}); "
                      "choose a location you can write to") from None
    finally:
        if missing:
            with suppress(OSError):              # something else wrote there meanwhile: leave it
                os.rmdir(missing)


def check_output_file(uri: str, option: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, or a place without write access."""
    if is_s3(uri):
        if uri.endswith("/"):
            raise Refused(f"{option} {uri} names a folder (a file such as {uri}cache.npz is expected); "
                             "give a file name")
        return                     # the bucket was probed by run_main; S3 has no folders to collide with
    path = os.path.abspath(os.path.expanduser(uri))
    if os.path.isdir(path):
        raise Refused(f"{option} {uri} is a folder (a file is expected); give a file name, "
                         f"e.g. {os.path.join(uri, 'cache.npz')}")
    _check_can_make(os.path.dirname(path), uri, option)


def check_output_folder(uri: str, option: str = "--out") -> None:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    if is_s3(uri):
        return                     # the bucket was probed by run_main
    path = os.path.abspath(os.path.expanduser(uri))
    if os.path.exists(path) and not os.path.isdir(path):
        raise Refused(f"{option} {uri} is a file (a folder is expected); choose another {option}")
    _check_can_make(path, uri, option)
