"""The everyday mistakes of issue 20, tried through the real ``das`` command as a new user would.

Each test runs ``das`` in a subprocess, in a working folder of its own, with relative paths where a person
would type them, and checks what a person sees: the exit status, one line naming the cause, no traceback,
bounded time, and that no file of the user's was lost and no row doubled.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import write_clips

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Result:
    rc: int
    out: str            # stdout + stderr
    wall: float

    def error_line(self, prog: str) -> str:
        """The one ``prog: error: ...`` line (and no traceback)."""
        assert "Traceback" not in self.out, self.out
        lines = [ln for ln in self.out.splitlines() if ln.startswith(f"{prog}: error: ")]
        assert len(lines) == 1, self.out
        return lines[0]


def das(args: list[str], cwd, env: dict[str, str] | None = None, timeout: float = 180) -> Result:
    """Run ``python -m jobs.cli ARGS`` in ``cwd`` (relative paths are relative to it)."""
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONPATH"] = REPO
    run_env.pop("RAY_ADDRESS", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *map(str, args)], cwd=cwd, env=run_env,
                          capture_output=True, text=True, timeout=timeout)
    return Result(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start)


def snapshot(folder) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path: what a user keeps there."""
    root = Path(folder)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def seed_user_files(folder) -> dict[str, str]:
    """Files a user keeps in a folder, some under names das itself uses; returns their snapshot."""
    root = Path(folder)
    for rel, data in {"report/field_report.mp3": b"ID3 the user's field recording",
                      "files/interview_tape1.oga": b"OggS the user's interview",
                      "segments/seg1.wav": b"RIFF the user's segment",
                      "_work/notes.txt": b"the user's notes", "notes.txt": b"more notes"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return snapshot(root)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A user's working folder with an archive of five clips and one broken file under ``archive/``."""
    write_clips(tmp_path / "archive", {"a.wav": (1.0, 16000, 440.0), "b.wav": (12.0, 22050, 880.0),
                                       "sub dir/c é.wav": (2.5, 44100, 330.0), "d.flac": (0.5, 8000, 220.0),
                                       "e.wav": (3.0, 48000, 660.0)},
                broken={"broken.wav": b"RIFF\x00\x00\x00\x00WAVEfmt not a wav"})
    return tmp_path
