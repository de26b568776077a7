"""bench.index at a tiny size: the FAISS candidates run, recall is measured against the exact scan."""

from __future__ import annotations

import numpy as np

from bench.index import bench_index, clustered_vectors, exact_top, index_table, recall


def test_clustered_vectors_are_seeded_unit_float16_rows():
    first = np.concatenate(list(clustered_vectors(300, dim=16, clusters=5, chunk=100)))
    again = np.concatenate(list(clustered_vectors(300, dim=16, clusters=5, chunk=100)))
    assert first.dtype == np.float16 and first.shape == (300, 16) and np.array_equal(first, again)
    assert np.allclose(np.linalg.norm(first.astype(np.float32), axis=1), 1, atol=2e-3)
    assert recall(exact_top(first, first[:3].astype(np.float32), 5), exact_top(first, first[:3].astype(np.float32),
                                                                                5)) == 1.0


def test_bench_index_measures_the_faiss_candidates():
    results = bench_index(3000, 20, with_hnsw=False, only=lambda name: name.startswith("faiss_ivf_sq"))
    figures = results["faiss_ivf_sq_fp16"]
    assert 0.0 <= figures["recall_at_10"] <= 1.0 and figures["das_recall_at_10"] >= 0.9
    assert figures["build_s"] > 0 and figures["disk_mib"] > 0 and figures["p95_ms"] >= figures["p50_ms"]
    assert "faiss_ivf_sq_fp16" in index_table(results)
