"""Readers for the published layouts of the evaluation datasets and of the noise recordings.

Each reader takes the dataset's root (a local folder or an ``s3://`` prefix)
and returns plain dataclasses; nothing is decoded here. A layout that does
not match raises ``LayoutError`` naming the file and the column or row at
fault.

* UrbanSound8K: ``metadata/UrbanSound8K.csv`` (``slice_file_name, fsID, start,
  end, salience, fold, classID, class``), audio in ``audio/fold<N>/``;
  single-label, 10 folds; classes ordered by ``classID``.
* FSD50K eval: ``FSD50K.ground_truth/eval.csv`` (``fname, labels, mids``;
  ``labels`` comma-separated), ``FSD50K.ground_truth/vocabulary.csv``
  (``index, label, mid``, no header in the published files), audio in
  ``FSD50K.eval_audio/<fname>.wav``; multi-label, classes in vocabulary order.
* ESC-50: ``meta/esc50.csv`` (``filename, fold, target, category, esc10,
  src_file, take``), audio in ``audio/``; single-label, 5 folds; classes
  ordered by ``target``.
* Noise: TAU Urban Acoustic Scenes 2019 (tab-separated ``meta.csv`` with
  ``filename`` such as ``audio/airport-barcelona-0-0-a.wav`` and
  ``scene_label``), or any folder of audio recordings, whose scene is
  unknown (``None``).

A dataset's clip list (``Dataset.clips``) is read from its metadata; "manifest"
means ``_manifest.json`` only. Label names are kept in the dataset's spelling (``dog_bark``); prompts are made
from them by ``das_core.scoring.prompts.label_text`` where prompts are made.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from das_core.errors import LayoutError
from das_core.io import storage
from das_core.io.inputs import AUDIO_EXTENSIONS

log = logging.getLogger("das.datasets")

URBANSOUND8K = "urbansound8k"
FSD50K = "fsd50k"
ESC50 = "esc50"
DATASETS = (URBANSOUND8K, FSD50K, ESC50)

US8K_META = "metadata/UrbanSound8K.csv"
US8K_COLUMNS = ("slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class")
FSD50K_EVAL = "FSD50K.ground_truth/eval.csv"
FSD50K_VOCAB = "FSD50K.ground_truth/vocabulary.csv"
FSD50K_AUDIO = "FSD50K.eval_audio"
ESC50_META = "meta/esc50.csv"
ESC50_COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
TAU_META = "meta.csv"


@dataclass(frozen=True)
class Clip:
    """One clip of a dataset's clip list: its id, where its audio is, its labels and its fold."""

    clip_id: str                 # the dataset's own name for the clip (unique): slice_file_name, fname, filename
    uri: str                     # where the audio is (absolute local path or s3:// URI)
    labels: tuple[str, ...]      # label names, in the dataset's spelling; exactly one for single-label datasets
    fold: int | None             # published fold (None for FSD50K eval)


@dataclass(frozen=True)
class Dataset:
    """A dataset as its metadata describes it: its clip list (in the metadata's order) and its classes (in the
    dataset's own order)."""

    name: str
    root: str
    label_names: tuple[str, ...]
    clips: tuple[Clip, ...]
    multi_label: bool

    @property
    def folds(self) -> tuple[int, ...]:
        """The published folds present, sorted (none for FSD50K eval)."""
        return tuple(sorted({c.fold for c in self.clips if c.fold is not None}))

    def label_index(self) -> dict[str, int]:
        """Each class name's index in ``label_names``."""
        return {name: i for i, name in enumerate(self.label_names)}

    def targets(self) -> np.ndarray:
        """Class index of each clip, ``(n,)``; single-label datasets only."""
        if self.multi_label:
            raise ValueError(f"{self.name} is multi-label: use label_matrix()")
        index = self.label_index()
        return np.array([index[c.labels[0]] for c in self.clips], dtype=np.int64)

    def label_matrix(self) -> np.ndarray:
        """0/1 matrix ``(n, K)`` of each clip's labels."""
        index = self.label_index()
        y = np.zeros((len(self.clips), len(self.label_names)), dtype=bool)
        for i, c in enumerate(self.clips):
            y[i, [index[lb] for lb in c.labels]] = True
        return y

    def with_clips(self, clips: Sequence[Clip]) -> Dataset:
        """The same dataset with another clip list (a subset)."""
        return replace(self, clips=tuple(clips))


@dataclass(frozen=True)
class NoiseSet:
    """The noise recordings mixed into the clips: their URIs (sorted) and scenes, and the layout they came in."""

    root: str
    uris: tuple[str, ...]                  # sorted
    scenes: tuple[str | None, ...]         # scene label per recording; None where unknown
    layout: str                            # "tau" or "folder"
    missing: tuple[str, ...] = ()          # listed in meta.csv but absent, left out (and reported)

    def scene_of(self) -> dict[str, str | None]:
        """Each recording's scene (None where unknown), by URI."""
        return dict(zip(self.uris, self.scenes))

    def with_uris(self, uris: Sequence[str]) -> NoiseSet:
        """The same set restricted to ``uris`` (a subset), kept sorted."""
        scene = self.scene_of()
        kept = tuple(sorted(uris))
        return replace(self, uris=kept, scenes=tuple(scene[u] for u in kept))


# ------------------------------------------------------------------ helpers
def _root(root: str) -> str:
    """``root`` as an absolute local path, or an s3:// prefix without its trailing slash."""
    if storage.is_s3(root):
        return root.rstrip("/")
    return os.path.abspath(os.path.expanduser(root))


def _read_text(root: str, rel: str, what: str) -> tuple[str, str]:
    """The URI and UTF-8 text of the metadata file ``rel`` under ``root``, refused with the file at fault."""
    uri = storage.join(root, rel)
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        raise LayoutError(f"{uri} does not exist: {root} is not a {what} root (expected {rel})") from None
    except IsADirectoryError:
        raise LayoutError(f"{uri} is a folder, expected the {what} metadata file {rel}") from None
    try:
        return uri, data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LayoutError(f"{uri} is not UTF-8 text") from None


def _read_rows(uri: str, text: str, required: Sequence[str], delimiter: str = ",") -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV with a header holding at least ``required``."""
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        sep = "tab" if delimiter == "\t" else repr(delimiter)
        raise LayoutError(f"{uri}: missing column(s) {', '.join(missing)} (found: {', '.join(header) or 'none'}; "
                          f"{sep}-separated with a header row expected)")
    reader.fieldnames = header
    rows = [(n + 2, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()})
            for n, row in enumerate(reader)]
    if not rows:
        raise LayoutError(f"{uri}: no rows after the header")
    return rows


def _int(uri: str, line: int, row: dict, column: str) -> int:
    """The integer in ``column`` of a CSV row, refused naming the file, line and column."""
    value = row.get(column)
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        raise LayoutError(f"{uri}, line {line}: column {column} is {value!r}, expected an integer") from None


def _nonempty(uri: str, line: int, row: dict, column: str) -> str:
    """The non-empty text in ``column`` of a CSV row, refused naming the file, line and column."""
    value = row.get(column)
    if not value:
        raise LayoutError(f"{uri}, line {line}: column {column} is empty")
    return value


def _unique(uri: str, ids: Sequence[str], column: str) -> None:
    """Refuse a clip list in which an id appears twice."""
    dup = [k for k, n in Counter(ids).items() if n > 1]
    if dup:
        raise LayoutError(f"{uri}: {column} {dup[0]!r} appears {Counter(ids)[dup[0]]} times")


def _check_audio(dataset: str, folder: str, uris: Sequence[str]) -> list[str]:
    """The listed files absent from ``folder``; refuses a folder that is missing or holds none of them."""
    if not storage.exists(folder):
        raise LayoutError(f"{dataset}: audio folder {folder} does not exist")
    present = set(storage.list_files(folder))
    absent = [u for u in uris if u not in present]
    if uris and len(absent) == len(uris):
        raise LayoutError(f"{dataset}: none of the {len(uris)} files listed in the metadata is under {folder} "
                          f"(first expected: {uris[0]})")
    if absent:
        log.warning("%s: %d of %d listed audio files are missing (e.g. %s); they will be reported as errors",
                    dataset, len(absent), len(uris), absent[0])
    return absent


def _classes_by_id(uri: str, pairs: list[tuple[int, int, str]], id_col: str, name_col: str) -> tuple[str, ...]:
    """Class names ordered by their numeric id, refusing an id with two names or a name with two ids."""
    by_id: dict[int, str] = {}
    by_name: dict[str, int] = {}
    for line, cid, name in pairs:
        if by_id.setdefault(cid, name) != name:
            raise LayoutError(f"{uri}, line {line}: {id_col} {cid} is {name!r} here but {by_id[cid]!r} earlier")
        if by_name.setdefault(name, cid) != cid:
            raise LayoutError(f"{uri}, line {line}: {name_col} {name!r} has {id_col} {cid} here but "
                              f"{by_name[name]} earlier")
    return tuple(by_id[k] for k in sorted(by_id))


# ------------------------------------------------------------------ readers
@dataclass(frozen=True)
class _FoldLayout:
    """A single-label dataset described by one CSV: file name, fold, class id and class name per clip."""

    name: str                       # dataset name in messages
    key: str                        # Dataset.name
    meta: str                       # the CSV, relative to the root
    columns: tuple[str, ...]        # the CSV's columns
    file_col: str
    id_col: str
    label_col: str
    fold_folders: bool              # audio/fold<k>/<file> (UrbanSound8K) or audio/<file> (ESC-50)


_US8K = _FoldLayout("UrbanSound8K", URBANSOUND8K, US8K_META, US8K_COLUMNS, "slice_file_name", "classID", "class",
                    fold_folders=True)
_ESC50 = _FoldLayout("ESC-50", ESC50, ESC50_META, ESC50_COLUMNS, "filename", "target", "category",
                     fold_folders=False)


def _read_fold_layout(layout: _FoldLayout, root: str, check_audio: bool) -> Dataset:
    root = _root(root)
    uri, text = _read_text(root, layout.meta, layout.name)
    clips, pairs = [], []
    for line, row in _read_rows(uri, text, layout.columns):
        name = _nonempty(uri, line, row, layout.file_col)
        fold = _int(uri, line, row, "fold")
        label = _nonempty(uri, line, row, layout.label_col)
        pairs.append((line, _int(uri, line, row, layout.id_col), label))
        audio = storage.join(root, "audio", f"fold{fold}", name) if layout.fold_folders else \
            storage.join(root, "audio", name)
        clips.append(Clip(name, audio, (label,), fold))
    _unique(uri, [c.clip_id for c in clips], layout.file_col)
    labels = _classes_by_id(uri, pairs, layout.id_col, layout.label_col)
    if check_audio:
        _check_audio(layout.name, storage.join(root, "audio"), [c.uri for c in clips])
    return Dataset(layout.key, root, labels, tuple(clips), multi_label=False)


def read_urbansound8k(root: str, check_audio: bool = True) -> Dataset:
    """UrbanSound8K's clip list at ``root`` (with ``check_audio``: its audio folder checked too)."""
    return _read_fold_layout(_US8K, root, check_audio)


def read_esc50(root: str, check_audio: bool = True) -> Dataset:
    """ESC-50's clip list at ``root`` (with ``check_audio``: its audio folder checked too)."""
    return _read_fold_layout(_ESC50, root, check_audio)


def _read_vocabulary(root: str) -> tuple[str, ...]:
    uri, text = _read_text(root, FSD50K_VOCAB, "FSD50K")
    records = [r for r in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in r)]
    if records and records[0] and not records[0][0].strip().lstrip("-").isdigit():
        records = records[1:]          # a header row (the published file has none)
    if not records:
        raise LayoutError(f"{uri}: no classes (expected rows 'index,label,mid')")
    by_index: dict[int, str] = {}
    for line, rec in enumerate(records, start=1):
        if len(rec) < 2:
            raise LayoutError(f"{uri}, row {line}: expected 'index,label,mid', got {','.join(rec)!r}")
        try:
            idx = int(rec[0].strip())
        except ValueError:
            raise LayoutError(f"{uri}, row {line}: index {rec[0]!r} is not an integer") from None
        label = rec[1].strip()
        if not label:
            raise LayoutError(f"{uri}, row {line}: empty label")
        if idx in by_index:
            raise LayoutError(f"{uri}, row {line}: index {idx} appears twice")
        by_index[idx] = label
    labels = tuple(by_index[k] for k in sorted(by_index))
    if len(set(labels)) != len(labels):
        dup = next(lb for lb, n in Counter(labels).items() if n > 1)
        raise LayoutError(f"{uri}: label {dup!r} appears twice")
    return labels


def read_fsd50k(root: str, check_audio: bool = True) -> Dataset:
    """FSD50K eval's clip list at ``root``, classes in vocabulary order (with ``check_audio``: its audio too)."""
    root = _root(root)
    labels = _read_vocabulary(root)
    known = set(labels)
    uri, text = _read_text(root, FSD50K_EVAL, "FSD50K")
    rows = _read_rows(uri, text, ("fname", "labels"))
    clips = []
    for line, row in rows:
        fname = _nonempty(uri, line, row, "fname")
        names = tuple(dict.fromkeys(lb.strip() for lb in _nonempty(uri, line, row, "labels").split(",")
                                    if lb.strip()))
        unknown = [lb for lb in names if lb not in known]
        if unknown:
            raise LayoutError(f"{uri}, line {line}: label {unknown[0]!r} is not in {FSD50K_VOCAB}")
        if not names:
            raise LayoutError(f"{uri}, line {line}: column labels is empty")
        clips.append(Clip(fname, storage.join(root, FSD50K_AUDIO, f"{fname}.wav"), names, None))
    _unique(uri, [c.clip_id for c in clips], "fname")
    if check_audio:
        _check_audio("FSD50K", storage.join(root, FSD50K_AUDIO), [c.uri for c in clips])
    return Dataset(FSD50K, root, labels, tuple(clips), multi_label=True)


READERS: dict[str, Callable[..., Dataset]] = {
    URBANSOUND8K: read_urbansound8k,
    FSD50K: read_fsd50k,
    ESC50: read_esc50,
}


def read_dataset(name: str, root: str, check_audio: bool = True) -> Dataset:
    """The clip list of dataset ``name`` (one of ``DATASETS``) at ``root``; ``LayoutError`` for another name."""
    if name not in READERS:
        raise LayoutError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return READERS[name](root, check_audio=check_audio)


def read_noise(root: str, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> NoiseSet:
    """TAU Urban Acoustic Scenes 2019 when ``root`` holds ``meta.csv``, else every audio file under ``root``."""
    root = _root(root)
    if not storage.exists(root):
        raise LayoutError(f"noise root {root} does not exist")
    meta_uri = storage.join(root, TAU_META)
    if storage.exists(meta_uri):
        uri, text = _read_text(root, TAU_META, "TAU Urban Acoustic Scenes")
        rows = _read_rows(uri, text, ("filename", "scene_label"), delimiter="\t")
        listed: dict[str, str] = {}
        for line, row in rows:
            rel = _nonempty(uri, line, row, "filename")
            listed[storage.join(root, rel)] = _nonempty(uri, line, row, "scene_label")
        uris = sorted(listed)
        absent = set(_check_audio("TAU noise", root, uris)) if uris else set()
        kept = [u for u in uris if u not in absent]
        return NoiseSet(root, tuple(kept), tuple(listed[u] for u in kept), "tau", tuple(sorted(absent)))
    uris = [u for u in storage.list_files(root, extensions)]
    if not uris:
        raise LayoutError(f"noise root {root} holds no {TAU_META} and no audio files "
                          f"(extensions: {', '.join(extensions)})")
    return NoiseSet(root, tuple(uris), tuple(None for _ in uris), "folder")
