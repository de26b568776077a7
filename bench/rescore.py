"""``das rescore`` throughput against a plain read of the embeddings, where one part's time goes, and the
bound the matrix products set."""

from __future__ import annotations

import os
import time

import numpy as np

from bench.common import Sizes, best_of
from bench.inputs import write_label_output


def rescore_breakdown(labels: str, cache) -> dict:
    """Where one part's re-scoring time goes, in this process: what must be read, scored and written."""
    import pyarrow.parquet as pq

    from das_core.output.format import END_TAG, part_name, table_to_bytes
    from das_core.rescore.unit import rescore_tables

    seg_path = os.path.join(labels, "segments", part_name("u00000000", 0))
    files_path = os.path.join(labels, "files", part_name("u00000000", END_TAG))
    out = {"embedding_column_read": best_of(lambda: pq.read_table(seg_path, columns=["embedding"]))}
    out["read_both_tables"] = best_of(lambda: (pq.read_table(seg_path), pq.read_table(files_path)))
    segments, files = pq.read_table(seg_path), pq.read_table(files_path)
    out["score_and_pool"] = best_of(lambda: rescore_tables(segments, files, cache, 5))
    new_segments, new_files = rescore_tables(segments, files, cache, 5)
    out["write_both_tables"] = best_of(lambda: (table_to_bytes(new_segments), table_to_bytes(new_files)))
    out["rows"] = len(segments)
    return out


def matmul_bound_rows_per_s(dim: int, classes: int) -> float:
    """Rows/s re-scoring could reach if it did nothing but its two float32 products (DAS and plain scores),
    at the float32 matrix-product speed this machine shows on a large product (best of 5)."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((4096, dim)).astype(np.float32)
    b = rng.standard_normal((dim, 1024)).astype(np.float32)
    seconds = best_of(lambda: a @ b, 5)
    flops_per_s = 2 * 4096 * dim * 1024 / seconds
    return flops_per_s / (2 * (2 * dim * classes))


def bench_rescore(cache, cache_uri: str, work: str, sizes: Sizes) -> dict:
    """``das rescore`` rows/s against a plain pyarrow read of the same embedding column."""
    import pyarrow.parquet as pq

    from jobs.rescore import RescoreConfig, run

    labels = os.path.join(work, f"rescore-labels-{len(cache.labels)}")
    write_label_output(cache, labels, sizes.rescore_rows)
    segments_dir = os.path.join(labels, "segments")
    read_s = best_of(lambda: pq.read_table(segments_dir, columns=["embedding"]))
    rows = sum(pq.read_metadata(os.path.join(segments_dir, f)).num_rows for f in os.listdir(segments_dir))
    out = os.path.join(work, "rescore-out")
    run(RescoreConfig(embeddings=labels, cache=cache_uri, out=out, run_id="warmup", overwrite=True,
                      progress_every_s=1e9, report=False))
    t = time.perf_counter()
    run(RescoreConfig(embeddings=labels, cache=cache_uri, out=out, run_id="bench", overwrite=True,
                      progress_every_s=1e9, report=False))
    rescore_s = time.perf_counter() - t
    breakdown = rescore_breakdown(labels, cache)
    bound = matmul_bound_rows_per_s(cache.dim, len(cache.labels))
    return {"rescore_over_read": (rows / rescore_s) / (rows / read_s), "rescore_rows_per_s": rows / rescore_s,
            "rescore_part_seconds": breakdown, "matmul_bound_rows_per_s": bound,
            "rescore_over_matmul_bound": (rows / rescore_s) / bound,
            "read_rows_per_s": rows / read_s, "rescore_rows": rows, "rescore_classes": len(cache.labels)}
