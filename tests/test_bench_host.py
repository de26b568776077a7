"""bench.write's host_windows_per_core runs (in its child process, one BLAS thread) and reports a number."""

import numpy as np
import pytest

from das_core.scoring.cache import DriftCache

pytestmark = pytest.mark.integration    # a subprocess


def test_host_windows_per_core_is_measured():
    from bench.write import bench_host

    rng = np.random.default_rng(0)
    k, d = 7, 16

    def unit(x: np.ndarray) -> np.ndarray:
        """Rows scaled to unit length, float32."""
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    cache = DriftCache(tuple(f"c{i}" for i in range(k)), tuple(f"c {i}" for i in range(k)), ("rain",),
                       "sound of {label}", "{label} with {noise}", 0.1, "enc", unit(rng.standard_normal((k, d))),
                       unit(rng.standard_normal((k, d))), np.ones(k, np.float32))
    figures = bench_host(cache, repeats=1, chunks=2)
    assert figures["host_classes"] == k
    assert figures["host_windows_per_core"] > 0 and figures["host_windows_per_s_wall"] > 0
