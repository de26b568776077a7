"""Fetching checkpoints into das's cache, atomically: LAION's published files, s3:// objects and folders, the hub.

Everything fetched lands in ``$DAS_CACHE_DIR/checkpoints`` (default
``~/.cache/das``; hub ids in the hub's own cache) under a name derived from
what was fetched (the URL's file name; for s3, the URI with each object's
ETag and size), so a second run finds it without fetching again. A file or
folder appears there complete or not at all: it is written beside its final
name and renamed onto it. Without network (``HF_HUB_OFFLINE`` defaults to 1
inside das) a fetch fails within seconds and says how to pass a local file
or folder instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator

from das_core.clap.formats import HF_MODEL_FILES, read_hf_config
from das_core.clap.offline import hf_offline
from das_core.errors import CheckpointError
from das_core.io import storage

DOWNLOAD_TIMEOUT_S = 10.0


def cache_dir() -> str:
    """das's cache folder: ``$DAS_CACHE_DIR``, or ``~/.cache/das``."""
    return os.path.expanduser(os.environ.get("DAS_CACHE_DIR") or "~/.cache/das")


@contextlib.contextmanager
def _partial_file(target: str) -> Iterator[tuple[int, str]]:
    """A new temporary file beside ``target`` (descriptor, path), readable as the umask allows; removed at the end
    of the block unless the caller has renamed it onto ``target`` by then."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=os.path.dirname(target))
    try:
        os.fchmod(fd, storage.default_file_mode())      # a shared cache: readable as the umask allows
        yield fd, tmp
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def download_hub(repo_id: str) -> str:
    """The hub's snapshot folder of ``repo_id`` (its files that matter), local-only unless ``HF_HUB_OFFLINE=0``.

    Raises ``CheckpointError`` (saying how to pass a local folder instead) when it cannot be had, or when
    what it holds is not a saved ``ClapModel``.
    """
    from huggingface_hub import snapshot_download

    with hf_offline() as offline:
        try:
            folder = snapshot_download(repo_id, allow_patterns=list(HF_MODEL_FILES), local_files_only=offline,
                                       etag_timeout=DOWNLOAD_TIMEOUT_S)
        except Exception as exc:        # the hub raises many kinds (offline, HTTP, timeouts, missing repo)
            why = "offline (HF_HUB_OFFLINE=1, das's default) and not in the Hugging Face cache" if offline else \
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            raise CheckpointError(
                f"checkpoint {repo_id!r} is no local file or folder, and as a Hugging Face hub id it could not be "
                f"fetched ({why}). Pass a local folder instead: on a "
                f"machine with network run `hf download {repo_id} --local-dir /models/"
                f"{repo_id.split('/')[-1]}`, copy that folder here (or to s3://) and use --checkpoint "
                f"/models/{repo_id.split('/')[-1]}; or set HF_HUB_OFFLINE=0 where the hub is reachable.") from None
    read_hf_config(folder)
    return folder


def download_published(name: str, url: str) -> str:
    """The cached copy of LAION's published checkpoint ``name`` at ``url``, downloaded first if it is not there.

    Raises ``CheckpointError`` (saying how to pass a local file instead) when the download fails.
    """
    target = os.path.join(cache_dir(), "checkpoints", "laion", url.rsplit("/", 1)[1])
    if os.path.isfile(target):
        return target
    with _partial_file(target) as (fd, tmp):
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                shutil.copyfileobj(resp, out, length=8 * 2**20)
            os.replace(tmp, target)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CheckpointError(
                f"could not download checkpoint {name!r} from {url} ({reason}). Without network access, "
                f"fetch that file on another machine and pass its local path, e.g. "
                f"--checkpoint /models/{url.rsplit('/', 1)[1]} (or an s3:// URI).") from None
    return target


def _etag(info: dict) -> str:
    """An s3 object's ETag as fsspec reports it, without quotes."""
    return str(info.get("ETag") or info.get("etag") or "").strip('"')


def download_s3(uri: str) -> str:
    """The cached copy of the s3 object or ``ClapModel`` folder prefix ``uri``, fetched first if it is not there.

    The cache key covers the URI and each object's ETag and size: a changed object is fetched again.
    Raises ``CheckpointError`` when nothing is at ``uri``.
    """
    fs, path = storage.filesystem(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {uri} does not exist") from None
    if info.get("type") == "directory":
        return _download_s3_folder(uri, fs, path.rstrip("/"))
    key = hashlib.sha256(f"{uri}|{_etag(info)}|{info.get('size')}".encode()).hexdigest()[:24]
    target = os.path.join(cache_dir(), "checkpoints", "s3", key, os.path.basename(path))
    if os.path.isfile(target):
        return target
    with _partial_file(target) as (fd, tmp):
        os.close(fd)
        fs.get_file(path, tmp)
        os.replace(tmp, target)
    return target


def _download_s3_folder(uri: str, fs, path: str) -> str:
    """An s3 ``ClapModel`` folder, fetched once: the cache key covers every fetched object's ETag and size."""
    import fnmatch

    listing = fs.find(path, detail=True)
    wanted = {p: i for p, i in sorted(listing.items())
              if "/" not in p[len(path) + 1:] and any(fnmatch.fnmatch(p.rsplit("/", 1)[1], pat)
                                                     for pat in HF_MODEL_FILES)}
    names = {p.rsplit("/", 1)[1] for p in wanted}
    if "config.json" not in names:
        raise CheckpointError(f"checkpoint {uri} is an s3 prefix without config.json: neither a .pt object nor "
                              f"a saved Hugging Face ClapModel folder")
    objects = "|".join(f"{p}:{_etag(i)}:{i.get('size')}" for p, i in wanted.items())
    key = hashlib.sha256(f"{uri.rstrip('/')}|{objects}".encode()).hexdigest()[:24]
    target = os.path.join(cache_dir(), "checkpoints", "s3", key, os.path.basename(path) or "model")
    if os.path.isdir(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(target))
    try:
        for p in wanted:
            fs.get_file(p, os.path.join(tmp, p.rsplit("/", 1)[1]))
        os.replace(tmp, target)         # atomic: a folder in the cache is always complete
    except OSError:
        if not os.path.isdir(target):   # another process may have won the race with the same files
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    read_hf_config(target)
    return target
