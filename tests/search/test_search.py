"""das search: text and audio queries over a real das label output, on a real local Ray cluster."""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import label_run

from das_core.errors import ConfigError, Refused
from das_core.io import storage
from das_core.output.store import OutputStore, StoreListing
from das_core.output.tables import embeddings_to_numpy
from das_core.scoring.cache import DriftCache
from das_core.scoring.prompts import DEFAULT_NOISE_PHRASES
from das_core.scoring.scorer import probabilities
from das_core.search.config import SearchConfig
from das_core.search.plan import check_embeddings, unit_groups, units_per_task
from das_core.search.queries import FILE, Queries, score_embeddings, text_queries, top_rows
from jobs.search import main, run

integration = pytest.mark.integration     # Ray, S3 (moto) or subprocesses: `make test-fast` skips these

LABELS = ["siren", "dog_bark", "engine_idling"]
# name -> (seconds, rate, frequency, noise): one-window clips and multi-window files, distinct content each
CLIPS = {name: (*spec, 0.05 * (i + 1)) for i, (name, spec) in enumerate({
    "a.wav": (3.0, 16000, 440.0), "b.flac": (25.0, 22050, 880.0), "sub/c.wav": (12.0, 8000, 300.0),
    "d.wav": (5.0, 16000, 1500.0)}.items())}


@pytest.fixture(scope="module")
def cache_uri(make_cache) -> str:
    return make_cache(LABELS)


@pytest.fixture(scope="module")
def labelled(make_label_output, cache_uri) -> str:
    return make_label_output(CLIPS, cache_uri, seed=3, files_per_unit=1, probabilities=True)


@pytest.fixture(scope="module")
def archive(labelled) -> str:
    """The audio ``labelled`` was made from."""
    return os.path.join(os.path.dirname(labelled), "audio")


def brute_force(table, vectors: np.ndarray, top: int) -> list[list[tuple[str, float, float]]]:
    """Every row scored at once in one process: the reference ranking, per query."""
    z = embeddings_to_numpy(table.column("embedding")).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    scores = z @ vectors.T
    ids, starts = table.column("file_id").to_pylist(), table.column("start_s").to_pylist()
    ranked = []
    for j in range(scores.shape[1]):
        order = sorted(range(len(ids)), key=lambda i: -scores[i, j])[:top]
        ranked.append([(ids[i], starts[i], scores[i, j]) for i in order])
    return ranked


@integration
def test_like_finds_its_own_window_first(labelled, tiny_ckpt, archive):
    hits = run(SearchConfig(embeddings=labelled, checkpoint=tiny_ckpt, like=[os.path.join(archive, "a.wav")],
                            top=3))
    first = hits.to_pylist()[0]
    assert first["rank"] == 1 and first["file_id"] == "a.wav" and first["start_s"] == 0.0
    assert abs(first["score"] - 1.0) <= 1e-3
    assert hits.column("rank").to_pylist() == [1, 2, 3]
    assert all(s < first["score"] for s in hits.column("score").to_pylist()[1:])


@integration
def test_like_finds_its_own_file_first(labelled, tiny_ckpt, archive):
    hits = run(SearchConfig(embeddings=labelled, checkpoint=tiny_ckpt, like=[os.path.join(archive, "b.flac")],
                            level=FILE, top=4))
    rows = hits.to_pylist()
    assert rows[0]["file_id"] == "b.flac" and abs(rows[0]["score"] - 1.0) <= 1e-3
    assert rows[0]["start_s"] == 0.0 and rows[0]["end_s"] == pytest.approx(25.0)
    assert sorted(r["file_id"] for r in rows) == sorted(CLIPS)        # a file once, every file ranked


@integration
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_distributed_top_n_equals_brute_force(labelled, tiny_ckpt, encoder, lam):
    texts = ["a siren wailing", "a dog barking at night"]
    queries = text_queries(encoder.embed_text, texts, DEFAULT_NOISE_PHRASES, lam)
    assert len(OutputStore(labelled).listing().committed_units()) == len(CLIPS)   # several units to merge
    hits = run(SearchConfig(embeddings=labelled, checkpoint=tiny_ckpt, texts=texts, top=4, lam=lam))
    expected = brute_force(pq.read_table(os.path.join(labelled, "segments")), queries.weights(), 4)
    for j, text in enumerate(texts):
        got = [h for h in hits.to_pylist() if h["query"] == text]
        assert [(h["file_id"], h["start_s"]) for h in got] == [(f, s) for f, s, _ in expected[j]]
        assert np.allclose([h["score"] for h in got], [s for _, _, s in expected[j]], atol=1e-6)


@integration
def test_units_grouped_per_task_give_the_same_ranking(labelled, tiny_ckpt, monkeypatch):
    import jobs.search

    config = SearchConfig(embeddings=labelled, checkpoint=tiny_ckpt, texts=["a siren", "rain"], top=3)
    one_per_task = run(config)
    monkeypatch.setattr(jobs.search, "units_per_task", lambda n_units, cpus: 3)     # groups of 3 and 1 units
    assert run(config).equals(one_per_task)


@integration
def test_drift_bonus_changes_text_scores(labelled, tiny_ckpt):
    plain = run(SearchConfig(embeddings=labelled, checkpoint=tiny_ckpt, texts=["engine humming"], top=1))
    bonus = run(SearchConfig(embeddings=labelled, checkpoint=tiny_ckpt, texts=["engine humming"], top=1, lam=1.0))
    assert plain.column("score")[0].as_py() != pytest.approx(bonus.column("score")[0].as_py(), abs=1e-6)


@integration
def test_file_embedding_is_the_normalised_mean_of_its_windows(labelled):
    store = OutputStore(labelled)
    segments, files = store.read_segments(), store.read_files()
    seg_emb = embeddings_to_numpy(segments.column("embedding")).astype(np.float64)
    owners = np.array(segments.column("file_id").to_pylist())
    file_emb = embeddings_to_numpy(files.column("embedding"))
    for fid, stored in zip(files.column("file_id").to_pylist(), file_emb):
        mean = seg_emb[owners == fid].sum(axis=0)
        mean /= np.linalg.norm(mean)
        assert (owners == fid).sum() == store.read_files().to_pandas().set_index("file_id").n_segments[fid]
        assert np.abs(stored - mean).max() <= 2e-3          # float16 storage: ~1e-3 relative
        assert np.linalg.norm(stored) == pytest.approx(1.0, abs=2e-3)


@integration
def test_cli_prints_the_table_and_writes_parquet(labelled, tiny_ckpt, tmp_path, capsys):
    out = str(tmp_path / "hits.parquet")
    assert main(["--embeddings", labelled, "--checkpoint", tiny_ckpt, "--text", "a siren", "--text", "rain",
                 "--top", "2", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "query" in printed and "start-end" in printed and "das search: 4 match(es) for 2 queries" in printed
    table = pq.read_table(out)
    assert table.column_names == ["query", "rank", "file_id", "path", "start_s", "end_s", "score"]
    assert table.column("query").to_pylist() == ["a siren", "a siren", "rain", "rain"]
    assert table.column("rank").to_pylist() == [1, 2, 1, 2]


@integration
def test_min_score_drops_weak_matches(labelled, tiny_ckpt, archive):
    hits = run(SearchConfig(embeddings=labelled, checkpoint=tiny_ckpt, like=[os.path.join(archive, "a.wav")],
                            top=10, min_score=0.999))
    assert hits.column("file_id").to_pylist() == ["a.wav"]


@integration
def test_a_rescore_run_folder_is_searched(labelled, tiny_ckpt, cache_uri, archive, tmp_path):
    from jobs.rescore import RescoreConfig
    from jobs.rescore import run as rescore_run

    rescore_run(RescoreConfig(embeddings=labelled, cache=cache_uri, out=str(tmp_path), run_id="r1",
                              progress_every_s=1e9, report=False))
    run_dir = str(tmp_path / "run_id=r1")
    for level in ("segment", FILE):
        config = SearchConfig(checkpoint=tiny_ckpt, like=[os.path.join(archive, "d.wav")], level=level, top=3,
                              embeddings=run_dir)
        hits = run(config)
        assert hits.equals(run(SearchConfig(**{**config.__dict__, "embeddings": labelled})))
        assert hits.column("file_id")[0].as_py() == "d.wav"


@integration
def test_files_without_embeddings_are_refused_at_file_level(labelled, tiny_ckpt, tmp_path, capsys):
    """An output of a das before file embeddings: --level file says so in one line, --level segment works."""
    import shutil

    old = str(tmp_path / "old")
    shutil.copytree(labelled, old)
    files_dir = os.path.join(old, "files")
    for name in os.listdir(files_dir):
        path = os.path.join(files_dir, name)
        pq.write_table(pq.read_table(path).drop_columns(["embedding"]), path)
    argv = ["--embeddings", old, "--checkpoint", tiny_ckpt, "--text", "a siren"]
    assert main([*argv, "--level", "file"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no column embedding" in err[0] and "--level segment" in err[0]
    assert main(argv) == 0


@integration
def test_another_checkpoint_is_refused(labelled, other_ckpt, capsys):
    assert main(["--embeddings", labelled, "--checkpoint", other_ckpt, "--text", "a siren"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "das search: error:" in err[0] and "made with checkpoint" in err[0]


@integration
@pytest.mark.parametrize("argv, words", [
    ([], "no query"),
    (["--text", "x", "--top", "0"], "--top"),
    (["--text", "x", "--lam", "-1"], "--lam"),
])
def test_bad_arguments_are_one_line_exit_2(labelled, tiny_ckpt, capsys, argv, words):
    assert main(["--embeddings", labelled, "--checkpoint", tiny_ckpt, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


@integration
def test_not_a_label_output_is_refused(tmp_path, tiny_ckpt, capsys):
    assert main(["--embeddings", str(tmp_path), "--checkpoint", tiny_ckpt, "--text", "x"]) == 2
    assert "_manifest.json" in capsys.readouterr().err


@integration
def test_s3_output_is_searched_and_written(ray_local, tiny_ckpt, cache_uri, archive, bucket):
    out = f"s3://{bucket}/labels/run1"
    label_run(archive, cache_uri, tiny_ckpt, out, files_per_unit=2)
    assert storage.exists(f"{out}/report/report.md") and storage.exists(f"{out}/report/label_distribution.png")
    hits_uri = f"s3://{bucket}/search/hits.parquet"
    hits = run(SearchConfig(embeddings=out, checkpoint=tiny_ckpt, like=[os.path.join(archive, "d.wav")], top=2,
                            out=hits_uri))
    assert hits.column("file_id")[0].as_py() == "d.wav"
    stored = pq.read_table(io.BytesIO(storage.read_bytes(hits_uri)))
    assert stored.equals(hits)


@integration
def test_probabilities_are_one_softmax_over_the_classes(labelled, cache_uri):
    """das label --probabilities: top_k_probs is the head of one distribution over all classes per row."""
    import json

    cache = DriftCache.load(cache_uri)
    scale = json.load(open(os.path.join(labelled, "_manifest.json")))["checkpoint"]["logit_scale"]
    assert scale > 1
    segments = pq.read_table(os.path.join(labelled, "segments"))
    das = cache.scores(embeddings_to_numpy(segments.column("embedding")))
    full = probabilities(das, scale)
    np.testing.assert_allclose(full.sum(axis=1), 1.0, atol=1e-9)
    stored = np.array(segments.column("top_k_probs").to_pylist(), dtype=np.float64)
    assert stored.shape == (len(segments), len(LABELS))
    assert (stored >= 0).all() and (stored <= 1).all()
    assert (np.diff(stored, axis=1) <= 0).all()                        # best class first
    np.testing.assert_allclose(stored, -np.sort(-full, axis=1), atol=1e-6)
    # files: the same softmax of the file's scores (max over its windows)
    owners = np.array(segments.column("file_id").to_pylist())
    for row in pq.read_table(os.path.join(labelled, "files")).to_pylist():
        pooled = das[owners == row["file_id"]].max(axis=0, keepdims=True)
        expected = -np.sort(-probabilities(pooled, scale)[0])
        probs = np.array(row["top_k_probs"])
        assert (probs >= 0).all() and (probs <= 1).all() and (np.diff(probs) <= 0).all()
        np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_top_rows_is_a_sorted_ranking_per_query():
    rng = np.random.default_rng(1)
    for n, m, top in [(1, 1, 10), (7, 3, 10), (500, 20, 10), (40, 4, 40)]:
        scores = rng.standard_normal((n, m)).astype(np.float32)
        scores[::9] = 0.25                                   # ties, ordered by row
        for threshold in (None, 0.2):
            got = top_rows(scores, top, threshold)
            for j in range(m):
                ranked = sorted(range(n), key=lambda i: (-scores[i, j], i))[:top]
                assert list(got[j]) == [i for i in ranked if threshold is None or scores[i, j] >= threshold]


def test_scores_are_cosines_plus_the_drift_bonus():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((30, 16)) * 3.0                  # not unit norm: renormalised before the product
    q, d = rng.standard_normal((2, 16)), rng.standard_normal((2, 16))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    queries = Queries(("a", "b"), q.astype(np.float32), d.astype(np.float32), lam=0.3)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    np.testing.assert_allclose(score_embeddings(z, queries), unit @ q.T + 0.3 * unit @ d.T, atol=1e-5)


def test_units_per_task_keeps_four_tasks_per_cpu():
    assert [units_per_task(n, 2) for n in (1, 8, 9, 400)] == [1, 1, 2, 50]


def test_unit_groups_hold_each_unit_once_with_its_parts():
    listing = StoreListing({"segments": {f"part-u0000000{i}-c00000.parquet" for i in range(5)},
                            "files": {f"part-u0000000{i}-end.parquet" for i in range(5)}})
    units = listing.committed_units()
    groups = unit_groups(units, listing, "segment", 2)
    assert [g["units"] for g in groups] == [units[0:2], units[2:4], units[4:]]
    assert groups[0]["parts"] == [["part-u00000000-c00000.parquet"], ["part-u00000001-c00000.parquet"]]
    assert unit_groups(units, listing, FILE, 5)[0]["parts"][4] == ["part-u00000004-end.parquet"]
    # a pack is one task whatever its units, read once; staged units beside it still go size to a task
    packed = StoreListing({"segments": {"part-u00000000-u00000002.parquet", "part-u00000003-c00000.parquet"},
                           "files": {"part-u00000000-u00000002.parquet", "part-u00000003-end.parquet",
                                     "part-u00000004-end.parquet"}})
    groups = unit_groups(packed.committed_units(), packed, "segment", 2)
    assert [g["units"] for g in groups] == [units[0:3], units[3:5]]
    assert groups[0]["parts"] == [["part-u00000000-u00000002.parquet"]] * 3


@pytest.mark.parametrize("settings, words", [
    ({}, "no query"),
    ({"texts": [" "]}, "empty"),
    ({"texts": ["x"], "top": 0}, "--top"),
    ({"texts": ["x"], "lam": -1.0}, "--lam"),
    ({"texts": ["x"], "lam": float("nan")}, "--lam"),
    ({"texts": ["x"], "min_score": float("inf")}, "--min-score"),
    ({"texts": ["x"], "level": "window"}, "--level"),
    ({"texts": ["x"], "lam": 0.5, "noise_phrases": ()}, "--noise-phrases"),
])
def test_config_refuses_bad_settings_when_made(settings, words):
    with pytest.raises(ConfigError, match=words):
        SearchConfig(embeddings="e", checkpoint="c", **settings)


def test_a_folder_without_a_manifest_is_refused(tmp_path, tiny_ckpt):
    with pytest.raises(Refused, match="_manifest.json"):
        check_embeddings(SearchConfig(embeddings=str(tmp_path), checkpoint=tiny_ckpt, texts=["x"]))


def test_paths_are_made_absolute_and_matches_never_land_inside_the_output_searched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = SearchConfig(embeddings="labels/", checkpoint="630k-audioset-best", like=["q.wav"], out="hits.parquet")
    assert (c.embeddings, c.like, c.out) == (str(tmp_path / "labels"), [str(tmp_path / "q.wav")],
                                            str(tmp_path / "hits.parquet"))
    assert c.checkpoint == "630k-audioset-best"
    with pytest.raises(ConfigError, match="--out .*segments/part-u00000000-c00000.parquet is inside --embeddings"):
        SearchConfig(embeddings="labels", checkpoint="x", texts=["a"],
                     out="labels/segments/part-u00000000-c00000.parquet")
