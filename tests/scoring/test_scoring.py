import numpy as np
import pytest
from test_cache import TableEncoder, unit_rows

from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import ARGMAX_TOP_K, label_files, label_windows, max_by_file, segment_max, top_k


def test_top_k_orders_and_breaks_ties_by_index():
    s = np.array([[0.1, 0.5, 0.5, 0.2], [0.9, 0.0, 0.3, 0.3]])
    idx, val = top_k(s, 3)
    assert idx.tolist() == [[1, 2, 3], [0, 2, 3]]
    np.testing.assert_array_equal(val, [[0.5, 0.5, 0.2], [0.9, 0.3, 0.3]])
    assert top_k(s, 10)[0].shape == (2, 4)


def test_top_k_paths_agree_and_a_straddling_tie_keeps_the_lower_index():
    s = np.array([[0.2, 0.7, 0.7, 0.7, 0.1]], dtype=np.float32)
    assert top_k(s, 2)[0].tolist() == [[1, 2]]                        # 3 tied for 2 places: lowest indices
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 60)).astype(np.float32)
    for k in (1, 5, ARGMAX_TOP_K, ARGMAX_TOP_K + 1, 60):             # argmax passes and argpartition agree
        idx, val = top_k(x, k)
        ref = np.argsort(-x, axis=1, kind="stable")[:, :k]
        assert np.array_equal(idx, ref) and np.array_equal(val, np.take_along_axis(x, ref, axis=1))
    x[0, 3] = np.nan                                                  # not finite: the general path
    assert top_k(x, 3)[0].shape == (400, 3)


def test_segment_max_equals_reduceat_for_short_and_long_runs():
    x = np.random.default_rng(4).standard_normal((300, 7)).astype(np.float32)
    x[5, 2], x[17, 4], x[18, 4], x[40:43, 1] = np.nan, -np.inf, -np.inf, -np.inf     # a padded slot never wins
    uneven = np.sort(np.r_[0, np.random.default_rng(5).choice(np.arange(1, 300), 140, replace=False)])
    for starts in (np.arange(0, 300, 10), np.arange(300), np.array([0, 1, 299]), np.arange(0, 300, 2), uneven):
        assert np.array_equal(segment_max(x, starts), np.maximum.reduceat(x, starts, axis=0), equal_nan=True)
    assert segment_max(x, np.zeros(0, dtype=np.int64)).shape == (0, 7)


def test_max_by_file_takes_the_max_over_each_files_windows():
    scores = np.array([[0.1, 0.9], [0.5, 0.2], [0.3, 0.3], [0.7, 0.0]], dtype=np.float32)
    pooled = max_by_file(scores, np.array([0, 0, 2, 2]), 3)
    np.testing.assert_array_equal(pooled[0], scores[1::-1].max(axis=0))
    np.testing.assert_array_equal(pooled[0], np.array([0.5, 0.9], np.float32))
    assert np.isnan(pooled[1]).all()                           # a file without windows (decode error)
    np.testing.assert_array_equal(pooled[2], np.array([0.7, 0.3], np.float32))
    # windows in any order give the same rows; no window at all gives NaN everywhere
    np.testing.assert_array_equal(max_by_file(scores[::-1], np.array([2, 2, 0, 0]), 3), pooled)
    assert np.isnan(max_by_file(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), 2)).all()
    assert pooled.dtype == np.float32


def test_window_labels_have_das_and_plain_side_by_side():
    cache = DriftCache.build(TableEncoder(), ["a", "b", "c"], ["p", "q"], lam=0.5)
    z = unit_rows(6, 16, seed=2)
    lab = label_windows(z, cache, k=2)
    das, plain = cache.scores(z), cache.clean_scores(z)
    assert lab.label == [cache.labels[i] for i in das.argmax(1)]
    np.testing.assert_array_equal(lab.score, das.max(1))
    assert lab.zs_label == [cache.labels[i] for i in plain.argmax(1)]
    np.testing.assert_array_equal(lab.zs_score, plain.max(1))
    assert all(len(t) == 2 and t[0] == lbl for t, lbl in zip(lab.top_k_labels, lab.label))


def test_file_labels_pool_max_over_windows():
    cache = DriftCache.build(TableEncoder(), ["a", "b", "c"], ["p"], lam=0.2)
    z = unit_rows(7, 16, seed=4)
    owner = np.array([2, 0, 0, 1, 2, 2, 1])
    lab = label_files(z, owner, 3, cache, k=3)
    das = cache.scores(z)
    for f in range(3):
        pooled = das[owner == f].max(0)
        assert lab.label[f] == cache.labels[int(pooled.argmax())]
        np.testing.assert_array_equal(lab.top_k_scores[f], np.sort(pooled)[::-1])
    with pytest.raises(ValueError, match="at least one window"):
        label_files(z, owner, 4, cache, k=1)
