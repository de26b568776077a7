"""Choosing ``das index``'s library: FAISS and Lance nearest-neighbour indexes over window embeddings, measured.

``python -m bench.run --only index`` runs ``bench_index`` at 10^5 rows (``--index-rows`` for other sizes); the
10^7 rehearsal calls ``bench_index(rows=10_000_000, ...)`` itself. For each candidate: build time, size on disk,
memory once loaded, recall@10 against the exact scan and the latency of one query (p50, p95) at the smallest
``nprobe`` of a sweep that reaches recall@10 >= 0.95 (or the largest tried).

The vectors are seeded, clustered unit vectors (a mixture of Gaussians on the sphere: ``clustered_vectors``),
stored as float16 as das stores embeddings. Real CLAP embeddings are clustered (sounds of a kind sit
together); uniform random vectors on the sphere are the worst case for IVF (no structure for the coarse
quantiser to find), so they would understate recall at a given ``nprobe``. The queries are drawn near the
clusters too, as text queries land near the sounds they describe.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np

from bench.common import log
from das_core.index.build import default_nprobe, ivf_lists

DIM = 512
TOP = 10
CHUNK_ROWS = 100_000
RECALL_GOAL = 0.95
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128)


def clustered_vectors(rows: int, dim: int = DIM, clusters: int = 1000, spread: float = 1.2, seed: int = 0,
                      chunk: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """``rows`` float16 unit vectors in chunks of ``chunk``: each a random cluster centre plus Gaussian noise of
    norm about ``spread``, renormalised (same seed, same vectors, whatever the chunk size's multiples)."""
    centres = _unit(np.random.default_rng(seed).standard_normal((clusters, dim)))
    for start in range(0, rows, chunk):
        rng = np.random.default_rng([seed, start])
        n = min(chunk, rows - start)
        noise = rng.standard_normal((n, dim)) * (spread / math.sqrt(dim))
        yield _unit(centres[rng.integers(0, clusters, n)] + noise).astype(np.float16)


def query_vectors(n: int, dim: int = DIM, clusters: int = 1000, seed: int = 0) -> np.ndarray:
    """``n`` float32 unit queries near the clusters of ``clustered_vectors`` (same seed), further out than the
    data (a text query is not one of the sounds)."""
    vectors = next(clustered_vectors(n, dim, clusters, spread=1.6, seed=seed, chunk=max(n, 1)))
    return vectors.astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(data: np.ndarray, queries: np.ndarray, top: int = TOP) -> np.ndarray:
    """The exact scan's ``top`` row ids per query (cosine of the renormalised float16 rows), in chunks."""
    best_ids = np.zeros((len(queries), 0), np.int64)
    best_scores = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(data), CHUNK_ROWS):
        scores = _unit(data[start:start + CHUNK_ROWS].astype(np.float32)) @ queries.T
        ids = np.argpartition(-scores, min(top, len(scores) - 1), axis=0)[:top].T + start
        best_ids = np.concatenate([best_ids, ids], axis=1)
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores.T, ids - start, axis=1)], axis=1)
        keep = np.argsort(-best_scores, axis=1)[:, :top]
        best_ids, best_scores = np.take_along_axis(best_ids, keep, 1), np.take_along_axis(best_scores, keep, 1)
    return best_ids


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found & truth| / |truth| (recall@k, k = truth's width)."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def rss_bytes() -> int:
    """This process's resident memory now (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def folder_bytes(path: str) -> int:
    """Bytes of every file under ``path``."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


# ------------------------------------------------------------------------------------------ the candidates
class FaissCandidate:
    """A FAISS index by factory string, inner product on unit vectors, built by train + add in chunks."""

    def __init__(self, name: str, factory: str, sample: int):
        self.name, self.factory, self.sample = name, factory, sample

    def build(self, data: np.ndarray, folder: str) -> str:
        """Train on a seeded sample, add every row in chunks, write the index; its path."""
        import faiss

        index = faiss.index_factory(data.shape[1], self.factory, faiss.METRIC_INNER_PRODUCT)
        pick = np.random.default_rng(1).choice(len(data), min(self.sample, len(data)), replace=False)
        index.train(_unit(data[np.sort(pick)].astype(np.float32)))
        for start in range(0, len(data), CHUNK_ROWS):
            index.add(_unit(data[start:start + CHUNK_ROWS].astype(np.float32)))
        path = os.path.join(folder, f"{self.name}.faiss")
        faiss.write_index(index, path)
        return path

    def load(self, path: str):
        """The index at ``path``, loaded."""
        import faiss

        return faiss.read_index(path)

    def search(self, index, query: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``TOP`` ids of one query ``(1, d)``."""
        import faiss

        if "HNSW" in self.factory:
            params = faiss.SearchParametersHNSW(efSearch=max(TOP, 16 * nprobe))
        elif "RFlat" in self.factory:      # the PQ codes rank 4 x TOP candidates, their float vectors re-rank them
            params = faiss.IndexRefineSearchParameters(k_factor=4,
                                                       base_index_params=faiss.SearchParametersIVF(nprobe=nprobe))
        else:
            params = faiss.SearchParametersIVF(nprobe=nprobe)
        return index.search(query, TOP, params=params)[1][0]


class LanceCandidate:
    """A Lance dataset of the vectors with an IVF-PQ index (cosine), searched with exact re-ranking."""

    name = "lance_ivf_pq"

    def __init__(self, sub_vectors: int = 64, refine: int = 4):
        self.sub_vectors, self.refine = sub_vectors, refine

    def build(self, data: np.ndarray, folder: str) -> str:
        """Write the vectors as a Lance dataset in chunks and index them; the dataset's path."""
        os.environ.setdefault("LANCE_LOG", "error")      # not a deprecation notice per query
        import lance
        import pyarrow as pa

        path = os.path.join(folder, "lance")
        def batches():
            """The rows as record batches of ``CHUNK_ROWS``."""
            for start in range(0, len(data), CHUNK_ROWS):
                flat = pa.array(data[start:start + CHUNK_ROWS].reshape(-1).astype(np.float32))
                yield pa.record_batch([pa.FixedSizeListArray.from_arrays(flat, data.shape[1])], names=["vector"])
        schema = pa.schema([pa.field("vector", pa.list_(pa.float32(), data.shape[1]))])
        dataset = lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), path)
        dataset.create_index("vector", index_type="IVF_PQ", metric="cosine", num_partitions=ivf_lists(len(data)),
                             num_sub_vectors=self.sub_vectors)
        return path

    def load(self, path: str):
        """The dataset at ``path``, opened and its index warmed by one query."""
        import lance

        dataset = lance.dataset(path)
        self.search(dataset, np.zeros((1, DIM), np.float32) + 1 / math.sqrt(DIM), 1)
        return dataset

    def search(self, dataset, query: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``TOP`` row ids of one query."""
        table = dataset.to_table(columns=[], with_row_id=True, nearest={
            "column": "vector", "q": query[0], "k": TOP, "nprobes": nprobe, "refine_factor": self.refine})
        return table.column("_rowid").to_numpy()


def candidates(rows: int, with_hnsw: bool) -> list:
    """The candidates measured at ``rows`` rows (HNSW only where asked: its build is slow on 2 cores)."""
    lists = ivf_lists(rows)
    sample = min(rows, max(64 * lists, 50_000))
    out = [FaissCandidate("faiss_ivf_flat", f"IVF{lists},Flat", sample),
           FaissCandidate("faiss_ivf_sq_fp16", f"IVF{lists},SQfp16", sample),
           FaissCandidate("faiss_ivf_pq_refine", f"IVF{lists},PQ64,RFlat", sample),
           LanceCandidate()]
    if with_hnsw:
        out.append(FaissCandidate("faiss_hnsw_flat", "HNSW32,Flat", 0))
    return out


def measure(candidate, data: np.ndarray, queries: np.ndarray, truth: np.ndarray, folder: str) -> dict:
    """One candidate's figures: build, size, memory, and recall and latency over the ``NPROBES`` sweep."""
    started = time.perf_counter()
    path = candidate.build(data, folder)
    out = {"build_s": time.perf_counter() - started, "disk_mib": folder_bytes(path) / 2**20}
    before = rss_bytes()
    index = candidate.load(path)
    out["loaded_mib"] = (rss_bytes() - before) / 2**20
    for nprobe in NPROBES:
        out.update(nprobe=nprobe, **sweep_point(candidate, index, queries, truth, nprobe))
        if out["recall_at_10"] >= RECALL_GOAL:
            break
    if "HNSW" not in getattr(candidate, "factory", ""):       # at das index's own nprobe (bigger: a margin)
        das_nprobe = default_nprobe(ivf_lists(len(data)), len(data))
        point = sweep_point(candidate, index, queries, truth, das_nprobe)
        out.update(das_nprobe=das_nprobe, **{f"das_{k}": v for k, v in point.items()})
    return out


def sweep_point(candidate, index, queries: np.ndarray, truth: np.ndarray, nprobe: int) -> dict:
    """Recall@10 and one-query latency p50/p95 (ms) at ``nprobe``."""
    found, times = [], []
    for q in queries:
        t = time.perf_counter()
        found.append(candidate.search(index, q[None, :], nprobe))
        times.append(time.perf_counter() - t)
    return {"recall_at_10": recall(np.array(found), truth), "p50_ms": 1000 * float(np.percentile(times, 50)),
            "p95_ms": 1000 * float(np.percentile(times, 95))}


def index_table(results: dict) -> str:
    """``bench_index``'s figures as a text table, one candidate a row."""
    keys = ("build_s", "disk_mib", "loaded_mib", "nprobe", "recall_at_10", "p50_ms", "p95_ms", "das_nprobe",
            "das_recall_at_10", "das_p50_ms", "das_p95_ms")
    rows = [("candidate", *keys)] + [(name, *(f"{f[k]:.3f}" if isinstance(f.get(k), float) else str(f.get(k, "-"))
                                               for k in keys)) for name, f in results.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(keys) + 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def bench_index(rows: int = 100_000, n_queries: int = 200, with_hnsw: bool = True, work: str | None = None,
                only: Callable[[str], bool] = lambda name: True) -> dict:
    """Every candidate's figures on ``rows`` clustered vectors (``{candidate: {figure: value}}``), logged as they
    come; the generated data is removed at the end."""
    folder = tempfile.mkdtemp(prefix="das-bench-index-", dir=work)
    try:
        data = np.concatenate(list(clustered_vectors(rows)))
        queries = query_vectors(n_queries, seed=0)
        truth = exact_top(data, queries)
        results = {}
        for candidate in candidates(rows, with_hnsw):
            if not only(candidate.name):
                continue
            figures = measure(candidate, data, queries, truth, folder)
            results[candidate.name] = figures
            log(f"index {candidate.name} at {rows} rows: " + ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)
        return results
    finally:
        shutil.rmtree(folder, ignore_errors=True)
