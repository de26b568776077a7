"""das_core.io.checks: locations compared by components, overlapping outputs refused, writes tried."""

from __future__ import annotations

import os

import pytest

from das_core.errors import Refused
from das_core.io.checks import check_output_file, check_output_folder, overlap, refuse_overlap

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it


def test_locations_are_compared_by_components(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "archive").mkdir()
    os.symlink(tmp_path / "archive", tmp_path / "link")
    assert overlap("archive", str(tmp_path / "archive/")) == "the same location as"
    assert overlap("link/out", "archive") == "inside"            # symlinks resolved
    assert overlap(".", "archive") == "contains"
    assert overlap("archive2", "archive") is None                # components, not a string prefix
    assert overlap("s3://b/archive/out", "s3://b/archive/") == "inside"
    assert overlap("s3a://b/archive", "s3://b/archive") == "the same location as"
    assert overlap("s3://b/archive2", "s3://b/archive") is None
    assert overlap("s3://c/archive", "s3://b/archive") is None
    assert overlap("s3://b", "s3://b/archive") == "contains"
    assert overlap(str(tmp_path / "b" / "archive"), "s3://b/archive") is None
    with pytest.raises(Refused, match="--out archive/out is inside --input archive"):
        refuse_overlap("archive/out", "--out", "archive", "--input")
    refuse_overlap("out", "--out", "archive", "--input")


def test_output_checks_try_a_write_and_leave_nothing(tmp_path):
    check_output_folder(str(tmp_path / "new" / "deeper"))
    check_output_file(str(tmp_path / "other" / "c.npz"))
    check_output_folder(str(tmp_path))
    assert list(tmp_path.iterdir()) == []                   # the folders and the probe file are gone again
    with pytest.raises(Refused, match=r"--out /proc/das-x: cannot create /proc/das-x \(no such file"):
        check_output_folder("/proc/das-x")
