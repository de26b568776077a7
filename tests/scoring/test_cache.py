import hashlib
import warnings

import numpy as np
import pytest

from das_core.errors import CacheError, CacheMismatchError
from das_core.scoring.cache import DriftCache
from das_core.scoring.prompts import DEFAULT_NOISE_PHRASES

LABELS = ["dog_bark", "siren", "engine_idling", "jackhammer"]
PHRASES = ["traffic noise", "wind noise", "crowd noise"]


class TableEncoder:
    """A text encoder with hand-set outputs, to pin down cache maths (the real encoder is tested too)."""

    def __init__(self, dim=16, overrides=None):
        self.dim = dim
        self.calls = []
        self.overrides = overrides or {}

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = []
        for t in texts:
            if t in self.overrides:
                v = np.asarray(self.overrides[t], dtype=np.float64)
            else:
                seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
                v = np.random.default_rng(seed).standard_normal(self.dim)
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


def unit_rows(n, d, seed=0):
    z = np.random.default_rng(seed).standard_normal((n, d))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)


def test_build_encodes_all_prompts_once():
    enc = TableEncoder()
    cache = DriftCache.build(enc, LABELS, PHRASES, encoder_id="sha256:x")
    assert len(enc.calls) == 1
    assert len(enc.calls[0]) == len(LABELS) * (1 + len(PHRASES)) == cache.n_text_encodings
    assert enc.calls[0][0] == "sound of dog bark"
    assert "dog bark with traffic noise" in enc.calls[0]
    assert cache.clean.shape == cache.drift_direction.shape == cache.weights.shape == (4, 16)
    np.testing.assert_allclose(np.linalg.norm(cache.drift_direction, axis=1), 1.0, atol=1e-6)


def test_drift_is_mean_difference_direction():
    enc = TableEncoder(dim=4, overrides={
        "sound of a": [1, 0, 0, 0], "a with p": [0.6, 0.8, 0, 0], "a with q": [0.6, 0, 0.8, 0],
    })
    cache = DriftCache.build(enc, ["a"], ["p", "q"])
    d = np.array([-0.4, 0.4, 0.4, 0.0])
    np.testing.assert_allclose(cache.drift_direction[0], d / np.linalg.norm(d), atol=1e-6)
    np.testing.assert_allclose(cache.drift_norm[0], np.linalg.norm(d), atol=1e-6)


def test_lam_zero_is_plain_zero_shot_and_folding_is_exact():
    cache = DriftCache.build(TableEncoder(), LABELS, PHRASES, lam=0.3)
    z = unit_rows(50, 16)
    a1, a2 = cache.clean_scores(z), cache.drift_scores(z)
    np.testing.assert_allclose(cache.scores(z), a1 + 0.3 * a2, atol=2e-7)
    np.testing.assert_array_equal(cache.with_lam(0.0).scores(z), a1)
    np.testing.assert_allclose(cache.with_lam(1.0).scores(z), a1 + a2, atol=2e-7)


def test_scores_do_not_depend_on_the_batch():
    cache = DriftCache.build(TableEncoder(), LABELS, PHRASES)
    z = unit_rows(257, 16, seed=3)
    together = cache.scores(z)
    for i in (0, 100, 256):
        np.testing.assert_array_equal(cache.scores(z[i]), together[i:i + 1])
        np.testing.assert_array_equal(cache.scores(z[i:i + 7])[0], together[i])


def test_float32_blocks_are_batch_invariant_at_real_sizes():
    from das_core.scoring.cache import PROJECT_ROWS, project_rows

    rng = np.random.default_rng(7)
    z = rng.standard_normal((3 * PROJECT_ROWS + 11, 512)).astype(np.float32)
    w = rng.standard_normal((527, 512)).astype(np.float32)
    together = project_rows(z, w)
    for start, n in ((0, 1), (5, 2 * PROJECT_ROWS + 7), (PROJECT_ROWS - 3, 7), (PROJECT_ROWS + 9, PROJECT_ROWS),
                     (2 * PROJECT_ROWS, PROJECT_ROWS + 11)):
        assert start + n <= len(z)
        np.testing.assert_array_equal(project_rows(z[start:start + n], w), together[start:start + n])
    np.testing.assert_allclose(together, (z.astype(np.float64) @ w.astype(np.float64).T), rtol=0, atol=2e-4)


def test_zero_drift_class_warns_and_stays_finite():
    enc = TableEncoder(dim=4, overrides={"sound of calm": [0, 0, 0, 1], "calm with p": [0, 0, 0, 1],
                                         "calm with q": [0, 0, 0, 1]})
    with pytest.warns(RuntimeWarning, match="no drift direction.*calm"):
        cache = DriftCache.build(enc, ["calm", "busy"], ["p", "q"])
    assert cache.zero_drift_labels == ("calm",)
    np.testing.assert_array_equal(cache.drift_direction[0], 0.0)
    s = cache.scores(unit_rows(5, 4))
    assert np.isfinite(s).all()


@pytest.mark.parametrize("labels, phrases, kw, msg", [
    ([], PHRASES, {}, "no labels"),
    (["a", "a"], PHRASES, {}, "duplicate label"),
    (["dog_bark", "dog bark"], PHRASES, {}, "both read 'dog bark'"),
    (LABELS, [], {}, "noise phrases"),
    (LABELS, PHRASES, {"clean_template": "a sound"}, r"must contain \{label\}"),
    (LABELS, PHRASES, {"noisy_template": "{label} loud"}, r"must contain \{noise\}"),
    (LABELS, PHRASES, {"lam": -1.0}, "lam"),
])
def test_build_refuses_bad_inputs(labels, phrases, kw, msg):
    with pytest.raises(ValueError, match=msg):
        DriftCache.build(TableEncoder(), labels, phrases, **kw)


def test_build_refuses_non_unit_encoder_output():
    with pytest.raises(ValueError, match="unit-norm"):
        DriftCache.build(lambda texts: np.ones((len(texts), 4)), ["a"], ["p"])


def test_fingerprint_covers_what_scores_depend_on():
    base = DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:a")
    same = DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:a")
    assert base.fingerprint == same.fingerprint
    variants = [
        DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:b"),
        DriftCache.build(TableEncoder(), LABELS[:3], PHRASES, encoder_id="sha256:a"),
        DriftCache.build(TableEncoder(), LABELS, PHRASES[:2], encoder_id="sha256:a"),
        DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:a", clean_template="a {label}"),
        DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:a", noisy_template="{label}, {noise}"),
        base.with_lam(0.2),
    ]
    assert len({v.fingerprint for v in variants} | {base.fingerprint}) == len(variants) + 1


def test_check_encoder_refuses_other_checkpoint():
    cache = DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:a", encoder_name="a.pt")
    cache.check_encoder("sha256:a")
    with pytest.raises(CacheMismatchError, match="rebuild it with `das build-cache --checkpoint b.pt"):
        cache.check_encoder("sha256:b", "b.pt")


def assert_same_cache(a, b):
    assert a.fingerprint == b.fingerprint and a.labels == b.labels and a.lam == b.lam
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.clean, b.clean)


def test_save_load_round_trip_local(tmp_path):
    cache = DriftCache.build(TableEncoder(), LABELS, list(DEFAULT_NOISE_PHRASES), lam=0.2, encoder_id="sha256:a")
    path = tmp_path / "sub" / "cache.npz"
    cache.save(str(path))
    assert_same_cache(cache, DriftCache.load(str(path)))
    z = unit_rows(3, 16)
    np.testing.assert_array_equal(DriftCache.load(str(path)).scores(z), cache.scores(z))


def test_save_load_round_trip_s3(bucket):
    cache = DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:a")
    uri = f"s3://{bucket}/caches/urban.npz"
    cache.save(uri)
    assert_same_cache(cache, DriftCache.load(uri))


def test_foreign_and_damaged_files_are_refused(tmp_path):
    good = DriftCache.build(TableEncoder(), LABELS, PHRASES).to_bytes()
    with pytest.raises(CacheError, match="not a DAS drift cache"):
        DriftCache.from_bytes(b"hello, I am a text file", "notes.txt")
    buf = __import__("io").BytesIO()
    np.savez(buf, weights=np.zeros((2, 2)))
    with pytest.raises(CacheError, match="not a DAS drift cache"):
        DriftCache.from_bytes(buf.getvalue(), "other.npz")
    with pytest.raises(CacheError, match="not a DAS drift cache|damaged"):
        DriftCache.from_bytes(good[: len(good) // 2], "cut.npz")
    # flip bytes inside the stored arrays: the digest no longer matches
    import io
    import zipfile
    src = zipfile.ZipFile(io.BytesIO(good))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = bytearray(src.read(item))
            if item.filename == "clean.npy":
                data[-8:] = b"\x00" * 8
            dst.writestr(item, bytes(data))
    with pytest.raises(CacheError, match="damaged"):
        DriftCache.from_bytes(out.getvalue(), "tampered.npz")
    with pytest.raises(CacheError, match="does not exist"):
        DriftCache.load(str(tmp_path / "missing.npz"))


def test_build_with_real_encoder(encoder):
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return encoder.embed_text(texts)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = DriftCache.build(counting, LABELS, PHRASES, encoder_id=encoder.encoder_id)
    assert calls == [len(LABELS) * (1 + len(PHRASES))]
    assert cache.dim == 512
    z = encoder.embed_audio(np.zeros((1, 480000), dtype=np.float32))
    assert cache.scores(z).shape == (1, 4)


def test_one_template_ensemble_is_todays_cache_exactly():
    today = DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:x")
    ensemble = DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:x",
                                clean_templates=["sound of {label}"])
    assert ensemble.to_bytes() == today.to_bytes() and ensemble.fingerprint == today.fingerprint
    for name in ("clean", "drift_direction", "drift_norm", "weights"):
        assert np.array_equal(getattr(ensemble, name), getattr(today, name)), name


def test_two_template_ensemble_averages_unit_embeddings_and_keeps_the_drift_definition():
    enc = TableEncoder()
    templates = ["sound of {label}", "a recording of {label}"]
    cache = DriftCache.build(enc, LABELS, PHRASES, encoder_id="sha256:x", clean_templates=templates)
    single = DriftCache.build(TableEncoder(), LABELS, PHRASES, encoder_id="sha256:x")
    assert len(enc.calls) == 1 and len(enc.calls[0]) == cache.n_text_encodings == len(LABELS) * (2 + len(PHRASES))
    np.testing.assert_allclose(np.linalg.norm(cache.clean, axis=1), 1.0, atol=1e-6)
    assert not np.allclose(cache.clean, single.clean)
    assert cache.fingerprint != single.fingerprint
    for i, lb in enumerate(["dog bark", "siren", "engine idling", "jackhammer"]):
        e = enc([t.format(label=lb) for t in templates]).astype(np.float64)
        c = e.mean(axis=0) / np.linalg.norm(e.mean(axis=0))
        np.testing.assert_allclose(cache.clean[i], c, atol=1e-6)
        drift = (enc([f"{lb} with {p}" for p in PHRASES]).astype(np.float64) - c).mean(axis=0)
        np.testing.assert_allclose(cache.drift_direction[i], drift / np.linalg.norm(drift), atol=1e-5)
    loaded = DriftCache.from_bytes(cache.to_bytes())
    assert loaded.clean_templates == tuple(templates) and loaded.fingerprint == cache.fingerprint
    assert loaded.metadata()["clean_templates"] == templates


@pytest.mark.parametrize("templates, message", [
    ([], "no clean template"),
    (["sound of {label}", "sound of {label}"], "duplicates"),
    (["sound of {label}", "a noise"], "must contain {label}"),
])
def test_bad_ensembles_are_refused(templates, message):
    with pytest.raises(ValueError, match=message):
        DriftCache.build(TableEncoder(), LABELS, PHRASES, clean_templates=templates)
