"""The label run's plan and ledger without Ray (``label.plan``, ``label.ledger``): settings, chunk counts, budget."""

from __future__ import annotations

import json

import pytest
from conftest import sine, write_audio

from das_core.errors import RunFailed, RunRefused
from das_core.label.config import LabelConfig
from das_core.label.ledger import LabelRun, UnitTracker
from das_core.label.plan import plan_run
from das_core.label.units import read_unit_table
from das_core.output.manifest import RunManifest
from das_core.output.record import ended_by


def stats(unit: str, chunk: int, *, last: bool, ok: int = 0, error: int = 0, windows: int = 0) -> dict:
    return {"unit": unit, "chunk": chunk, "last": last, "windows": windows, "files_ok": ok, "files_error": error,
            "segments": windows, "errors_by_kind": json.dumps({"corrupt": error} if error else {}),
            "pieces": False, "skipped": "{}", "node": "n1", "seconds": 0.1, "decoded_on": "n2"}


@pytest.fixture
def archive(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(4):
        write_audio(tmp_path / "in" / f"clip{i}.wav", sine(440 + 100 * i, 1.0, 16000), 16000)
    return str(tmp_path / "in")


def test_plan_builds_each_stage_settings(archive, small_cache, tiny_ckpt, tmp_path):
    c = LabelConfig(input=archive, cache=small_cache, checkpoint=tiny_ckpt, out=str(tmp_path / "out"), top_k=2,
                    files_per_unit=2, batch_size=8, num_gpus=0, snr_db=None, probabilities=True)
    p = plan_run(c)
    assert len(p.units) == 2 and p.todo_files == 4 and p.row_groups_to_do() is None
    assert p.decode_settings().chunk_windows == c.windows_per_chunk == 32
    encode = p.encode_settings()
    assert (encode.max_batch_size, encode.num_gpus_per_actor, c.actor_count) == (8, 0.0, 1)
    write = p.write_settings()
    assert write.top_k == 2 and write.seed is None and write.logit_scale == p.checkpoint_info["logit_scale"]


def test_run_counts_chunks_commits_whole_units_and_stops_at_the_error_budget(archive, small_cache, tiny_ckpt,
                                                                             tmp_path):
    out = str(tmp_path / "out")
    c = LabelConfig(input=archive, cache=small_cache, checkpoint=tiny_ckpt, out=out, files_per_unit=2,
                    max_error_fraction=0.25, min_errors_to_fail=1, report=False)
    run = LabelRun(plan_run(c))
    assert run.start()
    assert len(read_unit_table(out)) == 2 and RunManifest.read(out).to_dict()["status"] == "running"
    assert run.observe(stats("u00000000", 1, last=True, ok=1, windows=1)) is None       # chunk 0 still out
    assert run.observe(stats("u00000000", 0, last=False, ok=1, windows=1)) == ("u00000000", [])
    assert run.observe(stats("u00000000", 0, last=False, ok=1, windows=1)) is None      # a retried chunk
    assert run.aborted is None and run.counts.files == 2
    run.observe(stats("u00000001", 0, last=True, error=2))        # 2 of 4 files failed: over a quarter
    assert run.aborted and "stopping early" in run.aborted
    run.check_whole()                                              # stopped early: open units are allowed
    manifest = run.finish()
    assert manifest["status"] == "failed" and manifest["counts"]["error"] == 2
    assert isinstance(run.failure, RunFailed) and RunManifest.read(out).to_dict()["status"] == "failed"


def test_pipeline_that_leaves_a_unit_open_is_an_error(archive, small_cache, tiny_ckpt, tmp_path):
    c = LabelConfig(input=archive, cache=small_cache, checkpoint=tiny_ckpt, out=str(tmp_path / "out"))
    run = LabelRun(plan_run(c))
    run.observe(stats("u00000000", 0, last=False, ok=1, windows=1))
    with pytest.raises(RuntimeError, match="1 unit"):
        run.check_whole()


def test_unit_tracker_ignores_repeated_chunks():
    t = UnitTracker()

    def stats(chunk: int, last: bool = False, pieces: bool = False) -> dict:
        return {"unit": "u1", "chunk": chunk, "last": last, "pieces": pieces}

    assert t.add(stats(0, pieces=True)) is None
    assert t.is_repeat(stats(0)) and t.add(stats(0, pieces=True)) is None
    assert t.add(stats(2, last=True)) is None
    assert t.add(stats(1, pieces=True)) == ("u1", [0, 1])
    assert t.is_repeat(stats(1)) and t.add(stats(2, last=True)) is None and t.open_units == 0


@pytest.mark.parametrize("inp, out, how", [
    ("s3://b/archive/", "s3://b/archive", "the same location as"),
    ("s3://b/archive", "s3://b/archive/labels/", "inside"),
    ("s3://b/archive/2024", "s3://b/archive", "contains"),
    ("archive", "archive/../archive/labels", "inside"),
])
def test_an_out_that_overlaps_the_input_is_refused_at_construction(inp, out, how, tmp_path, monkeypatch):
    from das_core.errors import Refused

    monkeypatch.chdir(tmp_path)
    with pytest.raises(Refused, match=f"--out .* is {how} --input"):
        LabelConfig(input=inp, cache="c.npz", checkpoint="x.pt", out=out)
    with pytest.raises(Refused, match="is inside --noise"):
        LabelConfig(input="in", cache="c.npz", checkpoint="x.pt", out="noise/out", snr_db=0, noise="noise/")
    ok = LabelConfig(input="s3://b/archive", cache="c.npz", checkpoint="630k-audioset-best", out="s3://b/archive2")
    assert ok.out == "s3://b/archive2" and ok.cache == str(tmp_path / "c.npz")
    assert ok.checkpoint == "630k-audioset-best"                 # a published name is not a path


@pytest.mark.parametrize("errors, files, fraction, minimum, fails", [
    (2, 18, 0.1, 5, False),        # two bad files never fail a small archive by default
    (5, 18, 0.1, 5, True),
    (4, 4, 1.0, 1, False),         # a fraction of 1 never fails
    (1, 20, 0.0, 1, True),         # strict: any error
    (9, 100, 0.1, 5, False),
    (11, 100, 0.1, 5, True),
    (0, 0, 0.0, 0, False),
])
def test_error_budget_needs_the_fraction_and_the_minimum(errors, files, fraction, minimum, fails, tmp_path):
    c = LabelConfig(input="in", cache="c", checkpoint="k", out=str(tmp_path), max_error_fraction=fraction,
                    min_errors_to_fail=minimum)
    assert c.over_error_budget(errors, files) is fails


def test_early_stop_judges_known_files_not_a_guess(archive, small_cache, tiny_ckpt, tmp_path):
    """Plain files are known from the plan; the early stop fires only once the verdict cannot change."""
    c = LabelConfig(input=archive, cache=small_cache, checkpoint=tiny_ckpt, out=str(tmp_path / "out"),
                    files_per_unit=2, max_error_fraction=0.5, min_errors_to_fail=1, report=False)
    run = LabelRun(plan_run(c))
    run.observe(stats("u00000000", 0, last=True, error=2))       # 2 of 4 known: not more than half yet
    assert run.aborted is None and run.known_files() == 4 and run.not_done() == {"files": 2, "shards": 0}
    run.observe(stats("u00000001", 0, last=True, ok=1, error=1))
    assert "3 of the 4 files known so far" in run.aborted            # 3 of 4: over half whatever comes
    manifest = run.finish()
    assert manifest["status"] == "failed" and run.not_done() == {"files": 0, "shards": 0}


def test_abandoned_run_is_recorded_failed_or_interrupted_and_the_next_run_is_told_what_to_do(
        archive, small_cache, tiny_ckpt, tmp_path):
    out = str(tmp_path / "out")
    c = LabelConfig(input=archive, cache=small_cache, checkpoint=tiny_ckpt, out=out, report=False)
    run = LabelRun(plan_run(c), run_id="r1")
    assert run.start()
    run.abandon(KeyboardInterrupt())
    m = RunManifest.read(out)
    assert m.status == "interrupted" and m.runs[-1]["reason"] == "interrupted (Ctrl-C)" and m.runs[-1]["run_id"] == "r1"
    with pytest.raises(RunRefused, match="holds an interrupted run .*pass --resume to continue it"):
        plan_run(c)
    run = LabelRun(plan_run(LabelConfig(input=archive, cache=small_cache, checkpoint=tiny_ckpt, out=out,
                                        resume=True, report=False)))
    assert run.start()
    run.abandon(RuntimeError("boom"))
    m = RunManifest.read(out)
    assert m.status == "failed" and "RuntimeError: boom" in m.runs[-1]["reason"] and len(m.runs) == 2
    with pytest.raises(RunRefused, match="holds a failed run .*RuntimeError: boom.*--resume"):
        plan_run(c)


def test_ended_by_names_signals():
    assert ended_by(KeyboardInterrupt("signal SIGTERM")) == ("interrupted", "interrupted (signal SIGTERM)")
    assert ended_by(SystemExit(15))[0] == "interrupted"
    assert ended_by(RunFailed("too many"))[0] == "failed"
