"""``das label`` packs its output as it goes (``--pack-rows``): ranges, the tail, and an interrupted run that
resumes into the same packs, byte for byte."""

from __future__ import annotations

import os

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import BROKEN_WAV, label_run, read_output, write_clips

from das_core.label.local import LocalStages
from das_core.output.format import FILES_DIR, PIECES_DIR, SEGMENTS_DIR, parse_pack_name
from das_core.output.manifest import RunManifest

PACK_ROWS = 5
CLIPS = {f"c{i:02d}.wav": (2.0 + 10.0 * (i % 3), 16000, 300.0 + 40 * i) for i in range(9)}   # 1, 2 or 3 windows
pytestmark = pytest.mark.integration          # real label runs
SMALL = {"files_per_unit": 1, "pack_rows": PACK_ROWS, "local": True}


def folder_bytes(out: str, folder: str) -> dict[str, bytes]:
    """Every file of ``out/folder`` by name, with its bytes."""
    path = os.path.join(out, folder)
    names = sorted(os.listdir(path)) if os.path.isdir(path) else []
    return {name: open(os.path.join(path, name), "rb").read() for name in names}


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("pack-audio")
    write_clips(root, CLIPS, broken={"c04x.wav": BROKEN_WAV})     # a unit of one failed file: 0 segment rows
    return str(root)


@pytest.fixture(scope="module")
def packed(audio, small_cache, tiny_ckpt, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("packed") / "out")
    label_run(audio, small_cache, tiny_ckpt, out, **SMALL)
    return out


def test_a_finished_run_holds_only_packs_of_at_least_pack_rows_but_its_tail(packed):
    segments = folder_bytes(packed, SEGMENTS_DIR)
    files = folder_bytes(packed, FILES_DIR)
    assert not folder_bytes(packed, PIECES_DIR)
    assert files and all(parse_pack_name(n) for n in files) and set(segments) <= set(files)
    ranges = sorted(parse_pack_name(n) for n in files)
    assert ranges[0][0] == "u00000000" and ranges[-1][1] == "u00000009"
    assert all(int(b[0][1:]) == int(a[1][1:]) + 1 for a, b in zip(ranges, ranges[1:]))    # contiguous, no overlap
    rows = {n: pq.read_metadata(os.path.join(packed, SEGMENTS_DIR, n)).num_rows for n in segments}
    last = max(files)
    assert all(rows.get(n, 0) >= PACK_ROWS for n in files if n != last)
    seg, fil = read_output(packed)
    manifest = RunManifest.read(packed)
    assert fil.num_rows == manifest.counts["files"] == len(CLIPS) + 1 and seg.num_rows == sum(rows.values())
    assert manifest.format_version == 3
    assert pc.sum(pc.equal(fil.column("status"), "error")).as_py() == 1


def test_an_interrupted_run_resumes_into_the_same_packs_byte_for_byte(packed, audio, small_cache, tiny_ckpt,
                                                                       tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    real = LocalStages.chunk_stats

    def stopping(self):
        for n, stats in enumerate(real(self)):
            if n == 7:
                raise KeyboardInterrupt
            yield stats

    monkeypatch.setattr(LocalStages, "chunk_stats", stopping)
    with pytest.raises(KeyboardInterrupt):
        label_run(audio, small_cache, tiny_ckpt, out, **SMALL)
    monkeypatch.undo()
    first = folder_bytes(out, FILES_DIR)
    assert any(parse_pack_name(n) for n in first) and not all(parse_pack_name(n) for n in first)  # packed, staged
    assert RunManifest.read(out).status == "interrupted"
    label_run(audio, small_cache, tiny_ckpt, out, resume=True, **SMALL)
    for folder in (SEGMENTS_DIR, FILES_DIR):
        assert folder_bytes(out, folder) == folder_bytes(packed, folder)


def test_a_resume_with_every_unit_committed_packs_what_is_left_unpacked(packed, audio, small_cache, tiny_ckpt,
                                                                       tmp_path, capsys):
    out = str(tmp_path / "staged")
    label_run(audio, small_cache, tiny_ckpt, out, files_per_unit=1, pack_rows=0, local=True)
    assert not any(parse_pack_name(n) for n in folder_bytes(out, FILES_DIR))
    capsys.readouterr()
    label_run(audio, small_cache, tiny_ckpt, out, resume=True, **SMALL)
    assert "nothing to do: all 10 unit(s)" in capsys.readouterr().out
    for folder in (SEGMENTS_DIR, FILES_DIR):
        assert folder_bytes(out, folder) == folder_bytes(packed, folder)
    label_run(audio, small_cache, tiny_ckpt, out, resume=True, **SMALL)
    assert "packed" not in capsys.readouterr().out


def test_compact_packs_a_run_written_without_packs_into_the_same_files_and_refuses_what_it_must(
        packed, audio, small_cache, tiny_ckpt, tmp_path, capsys):
    from jobs.cli import main

    out = str(tmp_path / "staged")
    label_run(audio, small_cache, tiny_ckpt, out, files_per_unit=1, pack_rows=0, local=True)   # the format-2 layout
    assert not any(parse_pack_name(n) for n in folder_bytes(out, FILES_DIR))
    before = read_output(out)
    assert main(["compact", out, "--pack-rows", str(PACK_ROWS)]) == 0
    assert "into" in capsys.readouterr().out
    for folder in (SEGMENTS_DIR, FILES_DIR):
        assert folder_bytes(out, folder) == folder_bytes(packed, folder)      # what packing as it goes writes
    after = read_output(out)
    assert after[0].equals(before[0]) and after[1].equals(before[1])
    assert main(["compact", out]) == 0 and "nothing to pack" in capsys.readouterr().out
    assert main(["compact", str(tmp_path)]) == 2                                # not a das output
    assert "not a das label output" in capsys.readouterr().err
    from das_core.output.lease import Lease

    with Lease(out, "das label"):                                               # a run writing OUT
        assert main(["compact", out]) == 2
    assert "das label" in capsys.readouterr().err
