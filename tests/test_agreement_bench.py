"""``python -m bench.agreement`` runs at tiny size, so that it cannot rot."""

from __future__ import annotations

import soundfile as sf
from conftest import sine


def test_agreement_bench_prints_a_line_per_recording_and_a_summary(tmp_path, tiny_ckpt, capsys):
    from bench.agreement import main

    sf.write(str(tmp_path / "a.wav"), sine(440, 12.0, 44100, channels=2, amp=0.3), 44100, subtype="PCM_16")
    sf.write(str(tmp_path / "b.flac"), sine(1000, 3.0, 16000, amp=0.3), 16000)
    main([str(tmp_path), "--checkpoint", tiny_ckpt, "--source", "test tones"])
    out = capsys.readouterr().out
    assert "recordings: test tones" in out
    lines = [ln for ln in out.splitlines() if "julius vs soxr HQ SNR" in ln]
    assert [ln.split(":")[0] for ln in lines] == ["a.wav", "b.flac"]
    assert "a.wav: 44100 Hz" in lines[0] and "2 windows" in lines[0]
    summary = next(ln for ln in out.splitlines() if ln.startswith("summary:"))
    assert "2 recordings, 3 windows" in summary
    cos_min = float(summary.split("cosine min ")[1].split()[0].rstrip(";"))
    assert 0.99 < cos_min <= 1.0 + 1e-6
