"""The public API: the README's notebook example runs as written (with test-made files), and agrees with das label."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import sine, write_audio

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def readme_example() -> str:
    text = open(README).read()
    block = text.split("<!-- notebook-example: run by tests/test_api.py -->", 1)[1]
    return re.search(r"```python\n(.*?)```", block, re.S).group(1)


def test_import_is_cheap_and_names_resolve():
    import subprocess
    import sys

    code = "import sys, das_core; assert 'torch' not in sys.modules; print(sorted(das_core.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import das_core

    for name in das_core.__all__:
        assert getattr(das_core, name) is not None, name
    assert "DriftCache" in out and "label_embeddings" in out
    with pytest.raises(AttributeError):
        das_core.no_such_name  # noqa: B018


def test_readme_notebook_example_runs(tiny_ckpt, encoder, tmp_path, capsys):
    from das_core import DriftCache

    clip = write_audio(tmp_path / "dog.wav", sine(440, 14.0, 22050, channels=2), 22050)
    cache = str(tmp_path / "cache.npz")
    DriftCache.build(encoder.embed_text, ["dog_bark", "siren", "rain"], ["traffic noise"],
                     encoder_id=encoder.encoder_id).save(cache)
    code = (readme_example().replace('"630k-audioset-best"', repr(tiny_ckpt)).replace('"cache.npz"', repr(cache))
            .replace('"dog.wav"', repr(clip)))
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)
    printed = capsys.readouterr().out
    result, embedded = namespace["result"], namespace["clip"]
    assert len(result.window_labels) == 2 == len(embedded.starts_s)          # 14 s: two windows
    assert result.file_label in ("dog_bark", "siren", "rain") and result.file_label in printed
    assert result.file_top_k[0][1] == pytest.approx(max(s[0] for s in result.windows.top_k_scores))
    np.testing.assert_allclose(np.linalg.norm(embedded.file_embedding), 1.0, atol=1e-6)


def test_embed_array_equals_embed_file(encoder, tmp_path):
    from das_core import embed_array, embed_file

    x = sine(300, 12.5, 16000, channels=2)
    path = write_audio(tmp_path / "x.wav", x, 16000, subtype="FLOAT")
    a, b = embed_array(encoder, x, 16000), embed_file(encoder, path)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    np.testing.assert_array_equal(a.ends_s, b.ends_s)
    with pytest.raises(ValueError):
        embed_array(encoder, np.zeros(0), 16000)
