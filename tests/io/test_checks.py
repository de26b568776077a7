"""das_core.io.checks: locations compared by components, overlapping outputs refused."""

from __future__ import annotations

import os

import pytest

from das_core.errors import Refused
from das_core.io.checks import overlap, refuse_overlap

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
