"""write_chunk's rows against the scorer applied file by file: whole files pooled, a failed file's windows
dropped, a spanning file's maxima kept for finish_unit."""

from __future__ import annotations

import numpy as np

from das_core.label.decode import ChunkMeta
from das_core.label.sink import WriteSettings, write_chunk
from das_core.output.format import FILES_DIR, PIECES_DIR, SEGMENTS_DIR
from das_core.output.store import OutputStore
from das_core.output.tables import mean_embedding
from das_core.scoring.cache import DriftCache
from das_core.scoring.scorer import label_windows


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _cache(k: int = 40, d: int = 16) -> DriftCache:
    rng = np.random.default_rng(11)
    return DriftCache(tuple(f"c{i}" for i in range(k)), tuple(f"c {i}" for i in range(k)), ("rain",),
                      "sound of {label}", "{label} with {noise}", 0.1, "enc", _unit(rng.standard_normal((k, d))),
                      _unit(rng.standard_normal((k, d))), np.ones(k, np.float32))


def _entry(name: str, status: str = "ok", closes: bool = True, piece: int = 0, n: int = 0) -> dict:
    return {"file_id": name, "path": f"/a/{name}.wav", "piece": piece, "closes": closes, "status": status,
            "error": None if status == "ok" else f"/a/{name}.wav: corrupt: bad header",
            "error_kind": None if status == "ok" else "corrupt", "n_emitted": n, "duration_s": 10.0 * n,
            "sample_rate": 44100, "channels": 2, "decoder": "libsndfile"}


def test_chunk_rows_equal_the_scorer_file_by_file(tmp_path):
    cache = _cache()
    # z: 3 windows, bad: fails after 2 windows, a: 1, long: a piece that does not close, m: 2
    files = [_entry("z", n=3), _entry("bad", status="error", n=2), _entry("a", n=1),
             _entry("long", closes=False, n=2), _entry("m", n=2)]
    owner = [0, 0, 0, 1, 1, 2, 3, 3, 4, 4]
    windows = [[f, sum(1 for o in owner[:i] if o == f), 0.0, 10.0, None] for i, f in enumerate(owner)]
    stored = _unit(np.random.default_rng(12).standard_normal((len(owner), cache.dim))).astype(np.float16)
    store = OutputStore(str(tmp_path / "out"))
    stats = write_chunk(store, "u00000000", 0, False, ChunkMeta(windows, files), stored, cache,
                        WriteSettings(top_k=3))
    assert stats["pieces"] and stats["files_ok"] == 3 and stats["files_error"] == 1
    part = WriteSettings(top_k=3).staged("u00000000", 0)
    assert store.read_part(PIECES_DIR, part).column("file_id").to_pylist() == ["long"]

    segments = store.read_part(SEGMENTS_DIR, part).to_pylist()
    assert sorted({s["file_id"] for s in segments}) == ["a", "long", "m", "z"]      # bad's windows are dropped
    rows = {f["file_id"]: f for f in store.read_part(FILES_DIR, part).to_pylist()}
    assert rows["bad"]["status"] == "error" and rows["bad"]["label"] is None and "long" not in rows
    scores = (cache.scores(stored.astype(np.float32)), cache.clean_scores(stored.astype(np.float32)))
    for name in ("z", "a", "m"):
        mine = np.flatnonzero(np.array(owner) == files.index(next(f for f in files if f["file_id"] == name)))
        pooled = label_windows(None, cache, 3, scores=(scores[0][mine].max(axis=0, keepdims=True),
                                                       scores[1][mine].max(axis=0, keepdims=True)))
        row = rows[name]
        assert row["n_segments"] == len(mine)
        assert row["top_k_labels"] == pooled.top_k_labels[0] and row["label"] == pooled.label[0]
        assert row["top_k_scores"] == pooled.top_k_scores[0].tolist() and row["zs_label"] == pooled.zs_label[0]
        expected = mean_embedding(stored[mine]).astype(np.float16)
        np.testing.assert_array_equal(np.array(row["embedding"], dtype=np.float16), expected)
