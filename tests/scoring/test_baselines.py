import numpy as np
import pytest

from das_core.scoring.baselines import acevedo_scores, background_profile, background_prompts, tgap_prototypes


def test_background_prompts():
    assert background_prompts("street_traffic") == [
        "This is a sound of street traffic",
        "Street traffic sounds in the background",
        "This is a sound of street traffic in the background",
    ]


def test_acevedo_hand_worked():
    # two classes in 2-D; the background leans towards class 0
    P = np.array([[1.0, 0.0], [0.0, 1.0]])
    bg = np.array([[0.8, 0.6], [0.6, 0.8], [1.0, 0.0]])
    b = background_profile(P, bg)
    np.testing.assert_allclose(b, [(0.8 + 0.6 + 1.0) / 3, (0.6 + 0.8 + 0.0) / 3], atol=1e-6)
    z = np.array([[0.6, 0.55]])
    # plain prototype score picks class 0; subtracting tau * b flips it to class 1
    s = acevedo_scores(z, P, b, tau=0.5)
    np.testing.assert_allclose(s, [[0.6 - 0.4, 0.55 - 0.7 / 3]], atol=1e-6)
    assert s.argmax() == 1
    assert acevedo_scores(z, P, b, tau=0.0).argmax() == 0
    per_row = acevedo_scores(np.vstack([z, z]), P, np.vstack([b, np.zeros(2)]), tau=0.5)
    np.testing.assert_allclose(per_row[1], z[0] @ P.T, atol=1e-6)


def test_tgap_uses_nearest_pool_items_without_labels():
    anchors = np.array([[1.0, 0.0], [0.0, 1.0]])
    pool = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.7, 0.7]])
    protos = tgap_prototypes(anchors, pool, n=2)
    want0 = pool[[0, 1]].mean(0)
    want1 = pool[[2, 3]].mean(0)
    np.testing.assert_allclose(protos[0], want0 / np.linalg.norm(want0), atol=1e-6)
    np.testing.assert_allclose(protos[1], want1 / np.linalg.norm(want1), atol=1e-6)
    assert tgap_prototypes(anchors, pool, n=100).shape == (2, 2)
    with pytest.raises(ValueError):
        tgap_prototypes(anchors, np.zeros((0, 2)))
