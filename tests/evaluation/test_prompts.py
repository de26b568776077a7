"""das_core.evaluation.prompts: the baseline prompts, saved in the drift cache's own format."""

from __future__ import annotations

import numpy as np

from das_core.evaluation.datasets import NoiseSet
from das_core.evaluation.prompts import (
    UNKNOWN_SCENE,
    UNKNOWN_SCENE_TEXT,
    anchor_prompts,
    cache_uri_for,
    laion_prompts,
    load_prompt_bank,
    prompt_bank,
    saved_caches,
    scene_keys,
    wanted_prompts,
)
from das_core.scoring.baselines import background_prompts
from das_core.scoring.cache import DriftCache


def _unit_rows(n, d, seed=0):
    rows = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_prompts_of_each_baseline():
    assert laion_prompts(["dog_bark"]) == ["This is a sound of dog bark."]
    assert anchor_prompts(["dog_bark"]) == ["This is a sound of dog bark"]
    noise = NoiseSet("/n", ("/n/a.wav", "/n/b.wav", "/n/c.wav"), ("park", None, "park"), "tau")
    assert scene_keys(noise) == sorted(["park", UNKNOWN_SCENE])
    wanted = wanted_prompts(["dog_bark"], noise)
    assert len(wanted) == len(set(wanted))
    assert set(background_prompts("park")) <= set(wanted) and set(background_prompts(UNKNOWN_SCENE_TEXT)) <= set(wanted)
    assert not any(UNKNOWN_SCENE in w for w in wanted)


def test_prompt_bank_round_trips_through_the_drift_cache_format(tmp_path):
    prompts = dict(zip(["b prompt", "a prompt", "c prompt"], _unit_rows(3, 8)))
    uri = str(tmp_path / "text" / "prompts.npz")
    prompt_bank(prompts, "sha256:model").save(uri)
    loaded = DriftCache.load(uri)                        # a drift cache: digests checked, no pickle
    assert loaded.labels == ("a prompt", "b prompt", "c prompt") and loaded.encoder_id == "sha256:model"
    back = load_prompt_bank(uri, "sha256:model")
    assert set(back) == set(prompts)
    for text, row in prompts.items():
        np.testing.assert_array_equal(back[text], row)
    assert load_prompt_bank(uri, "sha256:other") == {}   # another checkpoint's text is encoded again
    assert load_prompt_bank(str(tmp_path / "absent.npz"), "sha256:model") == {}
    data = open(uri, "rb").read()
    open(uri, "wb").write(data[: len(data) // 2])       # a damaged file is ignored, not fatal
    assert load_prompt_bank(uri, "sha256:model") == {}
    assert saved_caches(str(tmp_path)) == []            # the bank is not mistaken for the DAS cache


def test_saved_caches_finds_the_das_cache_by_name(tmp_path):
    cache = prompt_bank(dict(zip(["x", "y"], _unit_rows(2, 4))), "sha256:m")
    uri = cache_uri_for(str(tmp_path), cache.fingerprint)
    cache.save(uri)
    (found,) = saved_caches(str(tmp_path))
    assert found[0] == uri and found[1].fingerprint == cache.fingerprint
