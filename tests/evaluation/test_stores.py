"""das_core.evaluation.stores: which noise each window carries, and its background key."""

from __future__ import annotations

import pytest

from das_core.errors import ManifestError
from das_core.evaluation.prompts import UNKNOWN_SCENE
from das_core.evaluation.stores import background_keys, noise_uri
from das_core.output.manifest import NoiseSource


def test_noise_uri_reads_the_noise_source_column():
    assert noise_uri(str(NoiseSource.mixed("s3://b/noise@x.wav", 2.5))) == "s3://b/noise@x.wav"
    assert noise_uri(None) is None                          # clean: no noise asked for
    assert noise_uri("skipped: zero power") is None         # a mix skipped for a silent clip
    with pytest.raises(ManifestError):
        noise_uri("not a source")


def test_background_keys_follow_the_scene_of_the_recording_mixed_in():
    scene_of = {"/n/a.wav": "park", "/n/b.wav": None}
    assert background_keys(["/n/a.wav", None, "/n/b.wav", "/n/unlisted.wav"], scene_of) == [
        "park", None, UNKNOWN_SCENE, UNKNOWN_SCENE]
