"""das_core.rescoring without Ray: settings, the watermark, earlier runs, refusals before any part is read."""

from __future__ import annotations

import pytest

from das_core.errors import ConfigError, Refused
from das_core.manifest import RunManifest
from das_core.rescoring import RescoreConfig, Watermark, plan_rescore, previous_run


def test_config_refuses_bad_settings_when_made():
    with pytest.raises(ConfigError, match="--top-k"):
        RescoreConfig(embeddings="e", cache="c", out="o", top_k=0)
    with pytest.raises(ConfigError, match="--run-id"):
        RescoreConfig(embeddings="e", cache="c", out="o", run_id="../escape")
    with pytest.raises(ConfigError, match="progress_every_s"):
        RescoreConfig(embeddings="e", cache="c", out="o", progress_every_s=0)
    assert RescoreConfig(embeddings="e", cache="c", out="o", run_id="2026-01-02.nightly_1", top_k=3).top_k == 3


def test_watermark_is_void_when_the_label_output_changed():
    now = Watermark("sha256:a", ("t1", "t2"))
    assert Watermark.from_dict({"checkpoint_fingerprint": "sha256:a", "label_runs_started": ["t1"],
                                "units": []}).void_reason(now) is None
    assert "replaced" in Watermark.from_dict({"checkpoint_fingerprint": "sha256:a", "label_runs_started": ["t0"],
                                              "units": []}).void_reason(now)
    assert "checkpoint" in Watermark.from_dict({"checkpoint_fingerprint": "sha256:b", "label_runs_started": ["t1"],
                                                "units": []}).void_reason(now)
    assert Watermark.from_dict({}).void_reason(now) == "it records no units"
    assert Watermark.from_dict(None).void_reason(now) == "it records no units"


def test_watermark_round_trips_and_describes_the_label_output():
    label = RunManifest(job="label", status="complete", settings={"checkpoint_fingerprint": "sha256:a"},
                        runs=({"started": "t1"}, {"started": "t2"}))
    mark = Watermark.of(label, "sha256:a", {"u00000002", "u00000001"})
    assert mark.to_dict() == {"checkpoint_fingerprint": "sha256:a", "label_runs_started": ["t1", "t2"],
                              "units": ["u00000001", "u00000002"], "n_units": 2}
    assert Watermark.from_dict(mark.to_dict()) == mark
    assert mark.void_reason(Watermark.of(label, "sha256:a")) is None


def _write_run(out, run_id: str, status: str, finished: str, embeddings: str = "/labels") -> None:
    RunManifest(job="rescore", status=status, settings={"embeddings": embeddings}, runs=({"finished": finished},),
                extra={"run_id": run_id}).write(str(out / f"run_id={run_id}"))


def test_previous_run_is_the_last_complete_run_of_the_same_embeddings(tmp_path):
    assert previous_run(str(tmp_path / "nothing"), "/labels", "now") is None
    _write_run(tmp_path, "a", "complete", "2026-01-01T00:00:00+00:00")
    _write_run(tmp_path, "b", "complete", "2026-01-03T00:00:00+00:00")
    _write_run(tmp_path, "c", "failed", "2026-01-04T00:00:00+00:00")
    _write_run(tmp_path, "d", "complete", "2026-01-05T00:00:00+00:00", embeddings="/other")
    (tmp_path / "run_id=e").mkdir()
    (tmp_path / "run_id=e" / "_manifest.json").write_text("{not json")        # skipped with a warning
    (tmp_path / "unrelated").mkdir()
    assert previous_run(str(tmp_path), "/labels", "now").get("run_id") == "b"
    assert previous_run(str(tmp_path), "/labels", "b").get("run_id") == "a"      # never the run itself


def test_not_a_label_output_is_refused_before_anything_is_read(tmp_path, small_cache):
    (tmp_path / "not-labels").mkdir()
    with pytest.raises(Refused, match="_manifest.json"):
        plan_rescore(RescoreConfig(embeddings=str(tmp_path / "not-labels"), cache=small_cache,
                                   out=str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()
