"""The DriftCache: everything DAS needs at scoring time, derived once from text.

For K classes and P noise phrases (METHOD.md §2)::

    C_c    = E_t(clean_template(c))                       clean prompt embedding
    D_c    = mean_p [ E_t(noisy_template(c, p)) - C_c ]   mean drift
    dhat_c = D_c / ||D_c||      (0, with a warning, if ||D_c|| is ~0)
    W      = C + lam * Dhat                               folded scoring matrix

so that for a unit audio embedding ``z``: ``a1 = z.C``, ``a2 = z.dhat`` and the
DAS score ``s = a1 + lam * a2 = z.W`` costs one matrix product. ``C`` and
``Dhat`` are kept so that ``lam`` can change without encoding text again.

Stored as one ``.npz`` (arrays plus a JSON metadata blob) loaded with
``allow_pickle=False``: loading a cache never runs code.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from das_core import __version__
from das_core.errors import CacheError, CacheMismatchError
from das_core.io import storage
from das_core.scoring.prompts import CLEAN_TEMPLATE, NOISY_TEMPLATE, check_template, label_text

FORMAT = "das-drift-cache"
FORMAT_VERSION = 1
ZERO_DRIFT_EPS = 1e-6
UNIT_NORM_TOL = 1e-3

TextEncoder = Callable[[list[str]], np.ndarray]
DEFAULT_LAM = 0.1            # weight of the drift bonus; chosen here, the paper only calls it small


def _fingerprint(payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _arrays_digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


# Rows per matrix product. BLAS picks kernels and summation order by the shapes it is given, so every
# product has exactly this shape (the last block zero-padded): a row's scores never depend on the other
# rows of its batch, in float32 at full BLAS speed. 32 is das label's default chunk: a chunk is one block,
# with nothing padded (256 cost a 32-window chunk 8x the products it needs).
PROJECT_ROWS = 32


def project_rows(z: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``z @ matrix.T`` in float32, computed in fixed-shape blocks of ``PROJECT_ROWS`` rows (batch-invariant).

    ``matrix``: (K, d), used without a copy when C-contiguous float32. Each block is computed as
    ``matrix @ block.T``: BLAS packs the (K, d) matrix on every product, and packs it fastest in this
    orientation (a 32-row block 20 % faster, large inputs 40 %, the same values).
    The products run on one BLAS thread (``one_blas_thread``): the same bits as on several.
    """
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    z = np.ascontiguousarray(z, dtype=np.float32)
    n = len(z)
    out = np.empty((n, m.shape[0]), dtype=np.float32)
    full = n - n % PROJECT_ROWS
    with one_blas_thread():
        for start in range(0, full, PROJECT_ROWS):
            out[start:start + PROJECT_ROWS] = (m @ z[start:start + PROJECT_ROWS].T).T
        if full < n:
            block = np.zeros((PROJECT_ROWS, z.shape[1]), dtype=np.float32)
            block[: n - full] = z[full:]
            out[full:] = (m @ block.T).T[: n - full]
    return out


@functools.cache
def _blas_controller():
    """This process's threadpoolctl controller (finding the BLAS libraries once)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def one_blas_thread():
    """A context in which numpy's BLAS runs on one thread. A 32-row product gains nothing from a second one,
    and where every core already runs a worker (Ray's actors, a loaded node) BLAS's threads wait for each other
    (``bench.scale``'s rescore step: README, "The rehearsal")."""
    return _blas_controller().limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class DriftCache:
    """The text side of DAS for one checkpoint: clean prototypes ``C``, unit drift directions ``Dhat`` and ``lam``.

    Built once from prompt embeddings (``build``), saved as ``.npz`` plus JSON
    metadata (never a pickle: ``load`` runs no code), and broadcast to every
    worker. ``scores(z)`` is ``z . C + lam * z . Dhat`` for unit-norm audio
    embeddings ``z``; ``fingerprint`` identifies what the scores depend on, and
    ``check_encoder`` refuses embeddings of another checkpoint.
    """

    labels: tuple[str, ...]
    label_texts: tuple[str, ...]
    noise_phrases: tuple[str, ...]
    clean_template: str
    noisy_template: str
    lam: float
    encoder_id: str | None
    clean: np.ndarray = field(repr=False)             # C    (K, d) float32
    drift_direction: np.ndarray = field(repr=False)   # Dhat (K, d) float32
    drift_norm: np.ndarray = field(repr=False)        # ||D_c|| (K,) float32
    encoder_name: str | None = None
    clean_templates: tuple[str, ...] = ()              # the prompt ensemble behind C, when more than one template
    weights: np.ndarray = field(init=False, repr=False)  # W = C + lam * Dhat

    def __post_init__(self):
        w = (self.clean.astype(np.float64) + float(self.lam) * self.drift_direction.astype(np.float64))
        object.__setattr__(self, "weights", w.astype(np.float32))

    # ---------------------------------------------------------------- build
    @classmethod
    def build(
        cls,
        encode_text: TextEncoder,
        labels: Sequence[str],
        noise_phrases: Sequence[str],
        *,
        clean_template: str = CLEAN_TEMPLATE,
        noisy_template: str = NOISY_TEMPLATE,
        lam: float = DEFAULT_LAM,
        encoder_id: str | None = None,
        encoder_name: str | None = None,
        clean_templates: Sequence[str] | None = None,
    ) -> DriftCache:
        """Encode ``K * (T + P)`` prompts in one call to ``encode_text`` and derive C, Dhat and W.

        ``labels`` are dataset labels (``dog_bark``); their prompt text is
        ``label_text(label)`` (``dog bark``). ``encoder_id`` is the checkpoint
        fingerprint, recorded so that jobs can refuse a cache made with
        another model.

        ``clean_templates``: a prompt ensemble for the clean prototype, used
        instead of ``clean_template``: ``C_c`` is the mean of the T unit
        embeddings, renormalised (as open_clip builds its zero-shot
        classifier). The drift is still taken relative to that ``C_c``. One
        template gives exactly the cache of ``clean_template=`` that template.
        """
        labels = tuple(labels)
        phrases = tuple(p.strip() for p in noise_phrases)
        templates = tuple(clean_templates) if clean_templates is not None else (clean_template,)
        validate_clean_templates(templates)
        validate_build_inputs(labels, phrases, templates[0], noisy_template, lam)
        texts = tuple(label_text(lb) for lb in labels)
        prompts = [t.format(label=text) for t in templates for text in texts]
        prompts += [noisy_template.format(label=t, noise=p) for t in texts for p in phrases]
        emb = np.asarray(encode_text(prompts), dtype=np.float64)
        k, p, n_clean = len(labels), len(phrases), len(templates) * len(labels)
        if emb.ndim != 2 or emb.shape[0] != len(prompts):
            raise ValueError(f"encode_text returned shape {emb.shape} for {len(prompts)} prompts")
        if not np.isfinite(emb).all():
            raise ValueError("encode_text returned non-finite values")
        norms = np.linalg.norm(emb, axis=1)
        if np.abs(norms - 1.0).max() > UNIT_NORM_TOL:
            raise ValueError(f"encode_text must return unit-norm rows (norms {norms.min():.4f}..{norms.max():.4f})")
        clean = emb[:k] if len(templates) == 1 else ensemble_prototypes(emb[:n_clean].reshape(len(templates), k, -1))
        noisy = emb[n_clean:].reshape(k, p, -1)
        drift = (noisy - clean[:, None, :]).mean(axis=1)
        drift_norm = np.linalg.norm(drift, axis=1)
        has_direction = drift_norm > ZERO_DRIFT_EPS
        direction = np.zeros_like(drift)
        direction[has_direction] = drift[has_direction] / drift_norm[has_direction, None]
        if not has_direction.all():
            lost = [labels[i] for i in np.flatnonzero(~has_direction)]
            warnings.warn(f"{len(lost)} class(es) have no drift direction (||D_c|| <= {ZERO_DRIFT_EPS}); "
                          f"their DAS bonus is 0: {', '.join(lost[:10])}", RuntimeWarning, stacklevel=2)
        return cls(labels, texts, phrases, templates[0], noisy_template, float(lam), encoder_id,
                   clean.astype(np.float32), direction.astype(np.float32), drift_norm.astype(np.float32),
                   encoder_name, templates if len(templates) > 1 else ())

    # -------------------------------------------------------------- scoring
    @property
    def dim(self) -> int:
        """The embedding dimension ``d``."""
        return int(self.clean.shape[1])

    @property
    def n_text_encodings(self) -> int:
        """How many prompts the build encoded: K x (clean templates + noise phrases)."""
        return len(self.labels) * (max(1, len(self.clean_templates)) + len(self.noise_phrases))

    @property
    def zero_drift_labels(self) -> tuple[str, ...]:
        """Classes whose noisy prompts did not move from the clean one (``||D_c||`` at most ``ZERO_DRIFT_EPS``):
        their drift bonus is zero."""
        return tuple(lb for lb, n in zip(self.labels, self.drift_norm) if n <= ZERO_DRIFT_EPS)

    def _project(self, z: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(np.asarray(z, dtype=np.float32))
        if z.shape[-1] != self.dim:
            raise ValueError(f"embeddings have dimension {z.shape[-1]}, the cache {self.dim}")
        return project_rows(z, matrix)

    def scores(self, z: np.ndarray) -> np.ndarray:
        """DAS scores ``a1 + lam * a2`` as one product with the folded matrix; (n, K) float32."""
        return self._project(z, self.weights)

    def clean_scores(self, z: np.ndarray) -> np.ndarray:
        """Plain zero-shot scores ``a1 = z . C_c``."""
        return self._project(z, self.clean)

    def drift_scores(self, z: np.ndarray) -> np.ndarray:
        """Drift cosines ``a2 = z . dhat_c``."""
        return self._project(z, self.drift_direction)

    def with_lam(self, lam: float) -> DriftCache:
        """The same cache with another ``lam`` (a new fingerprint); ``ValueError`` unless finite and >= 0."""
        if not np.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        return dataclasses.replace(self, lam=float(lam))

    # --------------------------------------------------------- identity, I/O
    def metadata(self) -> dict:
        """The JSON metadata saved beside the arrays: format, labels, templates, phrases, ``lam``, encoder, dim."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "labels": list(self.labels),
            "label_texts": list(self.label_texts),
            "noise_phrases": list(self.noise_phrases),
            "clean_template": self.clean_template,
            "noisy_template": self.noisy_template,
            "lam": self.lam,
            "encoder_id": self.encoder_id,
            "encoder_name": self.encoder_name,
            "dim": self.dim,
            # only an ensemble adds the key, so single-template caches keep their fingerprints
            **({"clean_templates": list(self.clean_templates)} if self.clean_templates else {}),
        }

    @property
    def fingerprint(self) -> str:
        """Identity of what the scores depend on: checkpoint, templates, phrases, labels, lam."""
        meta = self.metadata()
        return _fingerprint({k: meta[k] for k in ("format_version", "labels", "label_texts", "noise_phrases",
                                                   "clean_template", "noisy_template", "lam", "encoder_id",
                                                   "clean_templates") if k in meta})

    def top_k_for(self, top_k: int | None, uri: str, default: int) -> int:
        """The classes to keep per window: ``top_k`` when asked for (refused above this cache's class count),
        else ``default`` or every class of a cache with fewer."""
        n = len(self.labels)
        if top_k is None:
            return min(default, n)
        if top_k > n:
            raise CacheError(f"--top-k {top_k} is more than the {n} classes of the drift cache {uri}; "
                             f"give --top-k {n} or less")
        return top_k

    def check_encoder(self, encoder_id: str, checkpoint: str = "the checkpoint") -> None:
        """Refuse to score embeddings of another model with this cache."""
        if self.encoder_id != encoder_id:
            raise CacheMismatchError(
                f"the drift cache was built with checkpoint {self.encoder_id} ({self.encoder_name or 'unnamed'}), "
                f"but {checkpoint} is {encoder_id}. Its text embeddings do not match that model's audio "
                f"embeddings: rebuild it with `das build-cache --checkpoint {checkpoint} ...`.")

    def to_bytes(self) -> bytes:
        """The cache as ``.npz`` bytes: the three arrays, and the metadata with fingerprint and array digest."""
        meta = self.metadata()
        meta["das_version"] = __version__
        meta["fingerprint"] = self.fingerprint
        meta["arrays_sha256"] = _arrays_digest(self.clean, self.drift_direction, self.drift_norm)
        buf = io.BytesIO()
        np.savez(buf, clean=self.clean, drift_direction=self.drift_direction, drift_norm=self.drift_norm,
                 metadata=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        return buf.getvalue()

    def save(self, uri: str) -> None:
        """Write ``to_bytes()`` to ``uri`` (local path or s3://) atomically."""
        storage.write_bytes_atomic(uri, self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "cache") -> DriftCache:
        """The cache ``to_bytes`` wrote; ``CacheError`` (naming ``name``) for anything else, another format
        version, or arrays and metadata that do not match their recorded digests."""
        try:
            npz = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise CacheError(f"{name} is not a DAS drift cache (not a readable .npz archive: {exc})") from None
        with npz:
            names = set(npz.files)
            need = {"clean", "drift_direction", "drift_norm", "metadata"}
            if not need <= names:
                raise CacheError(f"{name} is not a DAS drift cache (arrays {sorted(names)}, "
                                 f"expected {sorted(need)})")
            try:
                arrays = {k: npz[k] for k in need}
                meta = json.loads(arrays.pop("metadata").tobytes().decode())
            except (ValueError, OSError, zipfile.BadZipFile, EOFError, UnicodeDecodeError) as exc:
                raise CacheError(f"{name} is a damaged DAS drift cache ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CacheError(f"{name} is not a DAS drift cache (metadata format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise CacheError(f"{name} has cache format version {meta.get('format_version')}, this das reads "
                             f"version {FORMAT_VERSION}: rebuild it with `das build-cache`")
        digest = _arrays_digest(arrays["clean"], arrays["drift_direction"], arrays["drift_norm"])
        if digest != meta.get("arrays_sha256"):
            raise CacheError(f"{name} is a damaged DAS drift cache: its arrays do not match their recorded digest")
        try:
            cache = cls(tuple(meta["labels"]), tuple(meta["label_texts"]), tuple(meta["noise_phrases"]),
                        meta["clean_template"], meta["noisy_template"], float(meta["lam"]), meta["encoder_id"],
                        arrays["clean"], arrays["drift_direction"], arrays["drift_norm"], meta.get("encoder_name"),
                        tuple(meta.get("clean_templates") or ()))
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{name} is a damaged DAS drift cache (metadata: {exc})") from None
        k = len(cache.labels)
        shapes_ok = cache.clean.shape == cache.drift_direction.shape and cache.clean.shape[0] == k
        if not shapes_ok or cache.drift_norm.shape != (k,):
            raise CacheError(f"{name} is a damaged DAS drift cache (array shapes do not match {k} labels)")
        if cache.fingerprint != meta.get("fingerprint"):
            raise CacheError(f"{name} is a damaged DAS drift cache: its metadata does not match its fingerprint")
        return cache

    @classmethod
    def load(cls, uri: str) -> DriftCache:
        """The cache saved at ``uri`` (local path or s3://); ``CacheError`` if it is missing or not a valid cache."""
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            raise CacheError(f"drift cache {uri} does not exist: build one with `das build-cache`") from None
        return cls.from_bytes(data, name=uri)


def ensemble_prototypes(emb: np.ndarray) -> np.ndarray:
    """``(T, K, d)`` prompt embeddings -> ``(K, d)``: normalise each, average over templates, renormalise."""
    unit = emb / np.linalg.norm(emb, axis=2, keepdims=True)
    mean = unit.mean(axis=0)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def validate_clean_templates(templates: Sequence[str]) -> None:
    """Refuse an empty ensemble, duplicates, and templates without ``{label}`` (ValueError)."""
    if not templates:
        raise ValueError("no clean template given")
    if len(set(templates)) != len(templates):
        raise ValueError("clean templates contain duplicates")
    for t in templates:
        check_template(t, {"label"}, "clean template")


def validate_build_inputs(labels: Sequence[str], phrases: Sequence[str], clean_template: str, noisy_template: str,
                          lam: float) -> None:
    """Refuse what ``DriftCache.build`` cannot use (raised as ValueError), before any encoding."""
    if not labels:
        raise ValueError("no labels given")
    blank = [i for i, lb in enumerate(labels) if not str(lb).strip()]
    if blank:
        raise ValueError(f"label #{blank[0] + 1} is empty")
    seen: dict[str, str] = {}
    for lb in labels:
        key = label_text(lb)
        if key in seen:
            same = f"{lb!r}" if seen[key] == lb else f"{seen[key]!r} and {lb!r} (both read {key!r})"
            raise ValueError(f"duplicate label {same}")
        seen[key] = lb
    if not phrases or any(not p for p in phrases):
        raise ValueError("noise phrases must be a non-empty list of non-empty phrases")
    if len(set(phrases)) != len(phrases):
        raise ValueError("noise phrases contain duplicates")
    check_template(clean_template, {"label"}, "clean template")
    check_template(noisy_template, {"label", "noise"}, "noisy template")
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
