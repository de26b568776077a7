import numpy as np
import pytest

from das_core.scoring.metrics import accuracy, average_precision, mean_average_precision, per_class_accuracy


def test_accuracy():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]])
    assert accuracy([0, 1, 1, 0], scores) == 0.75


def test_average_precision_hand_worked():
    # ranking by score: + - + - +  -> precision at the positives 1/1, 2/3, 3/5
    score = [0.9, 0.8, 0.7, 0.6, 0.5]
    positive = [1, 0, 1, 0, 1]
    assert average_precision(positive, score) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    # a tie between a positive and a negative counts as one threshold: precision 1/2 at recall 1
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))


def test_average_precision_agrees_with_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(60) < 0.3
        s = np.round(rng.random(60), 1)      # coarse scores: many ties
        if y.any():
            assert average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_map_excludes_classes_without_positives():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.1, 0.7, 0.5]])
    res = mean_average_precision(y, s)
    ap0 = average_precision(y[:, 0], s[:, 0])   # ranks 1,3 positive: (1 + 2/3)/2
    assert ap0 == pytest.approx((1 + 2 / 3) / 2)
    assert res.n_excluded == 1 and np.isnan(res.per_class[2])
    assert res.value == pytest.approx((ap0 + 1.0) / 2)
    assert float(res) == res.value


def test_per_class_accuracy():
    out = per_class_accuracy([0, 0, 1], np.array([[1, 0, 0], [0, 1, 0], [0, 1, 0]]), 3)
    assert out[0] == 0.5 and out[1] == 1.0 and np.isnan(out[2])
