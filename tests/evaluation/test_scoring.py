"""das_core.evaluation.scoring: λ chosen on the tuning split, TGAP cross-fitting, per-window backgrounds (no audio)."""

from __future__ import annotations

import numpy as np
import pytest

from das_core.errors import EvaluationError
from das_core.evaluation import Condition, ConditionData, SideInformation, StoreData, scoring
from das_core.evaluation.datasets import Clip, Dataset
from das_core.evaluation.scoring import cross_fit_tgap
from das_core.scoring.baselines import tgap_prototypes
from das_core.scoring.cache import DriftCache

LAM_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def _one(records, method, snr_db, metric, split="test"):
    found = [r for r in records if (r["method"], r["snr_db"], r["metric"], r["split"]) == (method, snr_db, metric,
                                                                                              split)]
    assert len(found) == 1, (method, snr_db, metric, split, found)
    return found[0]


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _synthetic(test_rows):
    """Two classes in 4-D: C = e0, e1, drift directions e2, e3. Tuning clips are right only at lam = 0.3."""
    cache = DriftCache(("a", "b"), ("a", "b"), ("noise",), "sound of {label}", "{label} with {noise}", 0.1, "x",
                       np.eye(4, dtype=np.float32)[:2], np.eye(4, dtype=np.float32)[2:], np.ones(2, np.float32))
    tune_rows = [([0.6, 0.5, 0, 0.45], "b"),    # right iff 0.5 + 0.45 lam > 0.6, i.e. lam > 0.22
                 ([0.6, 0.5, 0, 0.25], "a")]    # right iff 0.5 + 0.25 lam < 0.6, i.e. lam < 0.4
    rows = [(v, lab, 1) for v, lab in tune_rows] + [(v, lab, 2) for v, lab in test_rows]
    clips = tuple(Clip(f"c{i}", f"/x/c{i}.wav", (lab,), f) for i, (_, lab, f) in enumerate(rows))
    dataset = Dataset("urbansound8k", "/x", ("a", "b"), clips, multi_label=False)
    emb = np.stack([_unit(v) for v, _, _ in rows])
    n = len(rows)
    conditions = []
    for snr in (None, 0.0):
        keys = [None] * n if snr is None else ["street"] * n
        store = StoreData(np.ones(n, bool), {}, emb, np.arange(n), [None] * n)
        conditions.append(ConditionData(Condition(snr), store, keys))
    side = SideInformation(cache.clean, cache.clean, {"street": _unit([0, 0, 1, 1])[None]},
                           {"street": _unit([1, 1, 1, 1])[None]})
    is_tune = np.array([f == 1 for _, _, f in rows])
    return dataset, conditions, cache, side, is_tune, [f for _, _, f in rows]


def test_lam_is_chosen_on_the_tuning_split_never_on_test():
    # test clips of class b are right only for lam > 2/3: the best lam on test would be 1.0
    test_rows = [([0.6, 0.5, 0, 0.15], "b"), ([0.6, 0.5, 0, 0.15], "b")]
    dataset, conditions, cache, side, is_tune, groups = _synthetic(test_rows)
    result = scoring.evaluate(dataset, conditions, cache, side, is_tune, groups, LAM_GRID, 0.5)
    assert result.lam == 0.3
    assert result.objective[0.3] == 1.0 and all(v == 0.5 for lam, v in result.objective.items() if lam != 0.3)
    for snr in (None, 0.0):
        das = _one(result.records, "das", snr, "accuracy")
        assert das["lam"] == 0.3 and das["value"] == 0.0       # what lam = 0.3 gives on test, not test's best (1.0)
    assert {r["lam"] for r in result.records if r["method"] == "das" and r["split"] == "test"} == {0.3}
    # the test split's own optimum really differs
    z = conditions[0].store.embeddings[~is_tune]
    assert (cache.with_lam(1.0).scores(z).argmax(axis=1) == 1).all()
    assert (cache.with_lam(0.3).scores(z).argmax(axis=1) == 0).all()
    # changing the test clips, even so that another lam is best on them, never moves the chosen lam
    other = scoring.evaluate(*_synthetic([([0.6, 0.5, 0, 0.15], "a"), ([0.6, 0.5, 0, 0.9], "a")])[:4], is_tune,
                                groups, LAM_GRID, 0.5)
    assert other.lam == 0.3 and other.sweep == result.sweep


def test_choose_lam_ties_go_to_the_smaller_lam():
    lam, objective = scoring.choose_lam({0.0: {"clean": 0.5, "snr0": 0.7}, 0.1: {"clean": 0.7, "snr0": 0.5},
                                         0.2: {"clean": 0.6, "snr0": 0.55}})
    assert lam == 0.0 and objective == {0.0: 0.6, 0.1: 0.6, 0.2: 0.575}


@pytest.mark.parametrize("per_group", ["folds", "leave_one_out"])
def test_cross_fit_tgap_equals_prototypes_from_the_pool_outside_each_group(per_group):
    rng = np.random.default_rng(0)
    anchors = np.stack([_unit(v) for v in rng.standard_normal((4, 8))])
    pool = np.stack([_unit(v) for v in rng.standard_normal((30, 8))])
    groups = [i % 3 for i in range(30)] if per_group == "folds" else [f"clip{i // 2}" for i in range(30)]
    grouped = cross_fit_tgap(anchors, pool, groups, n=5)
    for g in set(groups):
        outside = pool[[i for i, h in enumerate(groups) if h != g]]
        np.testing.assert_allclose(grouped.for_group(g), tgap_prototypes(anchors, outside, n=5), atol=1e-6)
    with pytest.raises(ValueError, match="outside group"):
        cross_fit_tgap(anchors, pool, [0] * 30, n=5)


def test_acevedo_scores_use_each_windows_own_background():
    anchors = np.eye(3, dtype=np.float32)[:2]
    z = np.stack([_unit([1, 1, 0]), _unit([1, 1, 0]), _unit([1, 1, 0])])
    background = {"park": np.array([[1.0, 0.0, 0.0]], np.float32), "street": np.array([[0.0, 1.0, 0.0]], np.float32)}
    scores = scoring.acevedo_window_scores(z, ["park", "street", None], scoring.GroupedPrototypes(anchors),
                                              [0, 0, 0], background, tau=0.5)
    base = z @ anchors.T
    np.testing.assert_allclose(scores[0], base[0] - 0.5 * np.array([1.0, 0.0]), atol=1e-6)
    np.testing.assert_allclose(scores[1], base[1] - 0.5 * np.array([0.0, 1.0]), atol=1e-6)
    np.testing.assert_allclose(scores[2], base[2], atol=1e-6)  # no background (clean): b = 0


def test_an_empty_split_fails_with_the_condition_named():
    dataset, conditions, cache, side, is_tune, groups = _synthetic([([0.6, 0.5, 0, 0.15], "b")])
    conditions[1].store.ok[~is_tune] = False          # no decodable test clip at 0 dB
    with pytest.raises(EvaluationError, match="test split, 0 dB: no decodable clip"):
        scoring.evaluate(dataset, conditions, cache, side, is_tune, groups, LAM_GRID, 0.5)


def test_every_method_is_scored_and_pooled_per_clip():
    dataset, conditions, cache, side, is_tune, groups = _synthetic([([0.6, 0.5, 0, 0.15], "b")])
    baselines, das = scoring.method_scores(conditions[1], len(dataset.clips), cache, side, groups, LAM_GRID, 0.5)
    assert set(baselines) | {"das"} == set(scoring.METHODS) and set(das) == set(LAM_GRID)
    z = conditions[1].store.embeddings
    np.testing.assert_array_equal(baselines["zs_das_template"], cache.clean_scores(z))     # one window per clip
    np.testing.assert_array_equal(das[0.3], cache.with_lam(0.3).scores(z))
