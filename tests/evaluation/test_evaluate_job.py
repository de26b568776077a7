"""``das evaluate`` end to end on tiny generated datasets, checked against independent computations."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TEST_BATCH_SIZE

from das_core.errors import Refused
from das_core.evaluation import BASELINES, METHODS, plan
from das_core.evaluation.stores import StoreJob, store_jobs, store_state
from das_core.scoring.baselines import acevedo_scores, background_profile, background_prompts, tgap_prototypes
from das_core.scoring.cache import DriftCache
from jobs import evaluate as ev

from .test_datasets import US8K_CLASSES, make_esc50, make_fsd50k, make_tau, make_urbansound8k

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it

LAM_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
CONDITIONS = (None, 0.0)


# ------------------------------------------------------------------ helpers
def _records(out) -> list[dict]:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _one(records, method, snr_db, metric, split="test"):
    found = [r for r in records if (r["method"], r["snr_db"], r["metric"], r["split"]) == (method, snr_db, metric,
                                                                                              split)]
    assert len(found) == 1, (method, snr_db, metric, split, found)
    return found[0]


def _snapshot(folder) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its sha1 and modification time."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (hashlib.sha1(f.read()).digest(), os.stat(path).st_mtime_ns)
    return out


def _stored_windows(store: str):
    """(file_id, segment, embedding, noise_source) of a label-job store, read with pyarrow alone."""
    t = pq.read_table(os.path.join(store, "segments")).to_pydict()
    emb = np.array(t["embedding"], dtype=np.float32)
    return t["file_id"], t["segment"], emb, t["noise_source"]


def _max_by_file(file_ids, scores) -> dict[str, np.ndarray]:
    pooled: dict[str, np.ndarray] = {}
    for fid, row in zip(file_ids, scores):
        pooled[fid] = row if fid not in pooled else np.maximum(pooled[fid], row)
    return pooled


def _saved_cache(out) -> DriftCache:
    (path,) = glob.glob(os.path.join(out, "text", "das-cache-*.npz"))
    return DriftCache.load(path)


def _saved_prompts(out) -> dict[str, np.ndarray]:
    """The baseline prompts, saved in the drift cache's format: labels = prompts, clean rows = their embeddings."""
    bank = DriftCache.load(os.path.join(out, "text", "prompts.npz"))
    assert not bank.noise_phrases and not bank.drift_direction.any()
    return dict(zip(bank.labels, bank.clean))


def _run(args, capsys=None) -> tuple[int, str]:
    rc = ev.main(args)
    text = capsys.readouterr() if capsys is not None else None
    return rc, (text.out + text.err) if text is not None else ""


@pytest.fixture(scope="module")
def one_text_encoder(encoder, tiny_ckpt):
    """The driver's text encoding reuses the session's loaded encoder instead of loading the checkpoint per run.

    Only the driver process is patched: the label job's actors still load the checkpoint themselves.
    """
    from das_core.clap.encoder import ClapEncoder

    real = ClapEncoder.from_checkpoint.__func__
    loads = []

    def from_checkpoint(cls, uri, *args, **kwargs):
        loads.append(uri)
        return encoder if uri == tiny_ckpt else real(cls, uri, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClapEncoder, "from_checkpoint", classmethod(from_checkpoint))
        yield loads


# ------------------------------------------------------------ UrbanSound8K
@pytest.fixture(scope="module")
def us8k(tmp_path_factory, tiny_ckpt, ray_local, one_text_encoder):
    """A 3-fold, 3-class UrbanSound8K with a 12 s clip, a 0.3 s clip and a broken file, evaluated at clean + 0 dB."""
    base = tmp_path_factory.mktemp("us8k")
    root, noise, out = str(base / "UrbanSound8K"), str(base / "TAU"), str(base / "eval")
    make_urbansound8k(root, folds=(1, 2, 3), per_class=1, long_clip=True, short_clip=True, broken_clip=True)
    make_tau(noise, per_scene=2)
    args = ["--dataset", "urbansound8k", "--root", root, "--noise-root", noise, "--checkpoint", tiny_ckpt,
            "--out", out, "--snrs", "clean,0", "--tune-split", "folds:1", "--max-error-fraction", "0.2",
            "--batch-size", str(TEST_BATCH_SIZE)]
    rc = ev.main(args)
    assert rc == 0
    assert one_text_encoder == [tiny_ckpt]          # text: one batched encoding, with the model loaded once
    return {"root": root, "noise": noise, "out": out, "args": args, "ckpt": tiny_ckpt}


def test_all_methods_and_conditions_present(us8k):
    out = us8k["out"]
    for name in ("results.json", "results.csv", "per_class.csv", "report.md", "snr_curves.png", "evaluation.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    records = _records(out)
    summary = json.load(open(os.path.join(out, "evaluation.json")))
    lam = summary["lam"]
    assert lam in LAM_GRID
    for snr in CONDITIONS:
        for method in METHODS:
            for metric in ("accuracy", "accuracy_fold_mean"):
                r = _one(records, method, snr, metric)
                assert 0.0 <= r["value"] <= 1.0 and r["dataset"] == "urbansound8k"
                assert r["lam"] == (lam if method == "das" else None)
        for base in BASELINES:
            diff = _one(records, f"das_minus_{base}", snr, "accuracy")
            assert diff["value"] == pytest.approx(_one(records, "das", snr, "accuracy")["value"]
                                                  - _one(records, base, snr, "accuracy")["value"])
        for grid_lam in LAM_GRID:       # the sweep is reported on the tuning split only
            assert [r for r in records if r["method"] == "das" and r["split"] == "tune" and r["snr_db"] == snr
                    and r["lam"] == grid_lam]
    # DAS on the test split: only the chosen lam
    assert {r["lam"] for r in records if r["method"] == "das" and r["split"] == "test"} == {lam}
    assert {r["split"] for r in records} == {"test", "tune"}
    # results.csv holds the same records
    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records)
    for row, r in zip(rows, records):
        assert row["method"] == r["method"] and float(row["value"]) == r["value"]
        assert row["snr_db"] == ("" if r["snr_db"] is None else str(r["snr_db"]))
        assert row["lam"] == ("" if r["lam"] is None else str(r["lam"]))
    with open(os.path.join(out, "per_class.csv")) as f:
        per_class = list(csv.DictReader(f))
    assert len(per_class) == len(METHODS) * len(CONDITIONS) * len(US8K_CLASSES)
    assert {r["class"] for r in per_class} == {name for _, name in US8K_CLASSES}
    # counts: 10 clips (one broken) x 2 conditions + 4 noise recordings; the 12 s clip has two windows
    assert summary["counts"]["encodings"] == 10 * 2 + 4
    assert summary["counts"]["windows"] == (9 + 1) * 2 + 4
    assert summary["decode_errors"] == {"clean": 1, "snr0": 1, "noise": 0}


def _table(report: str, heading: str) -> dict[str, list[str]]:
    section = report.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    table = {}
    for ln in rows[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        table[cells[0]] = dict(zip(header[1:], cells[1:]))
    return table


def test_report_table_equals_results_json(us8k):
    out = us8k["out"]
    records = _records(out)
    report = open(os.path.join(out, "report.md")).read()
    titles = {None: "clean", 0.0: "0 dB"}
    for heading, metric in (("## Accuracy (%) on the test split\n", "accuracy"),
                            ("## Accuracy (%) on the test split, mean over folds", "accuracy_fold_mean")):
        table = _table(report, heading)
        assert set(table) == set(METHODS)
        for method in METHODS:
            for snr, title in titles.items():
                assert table[method][title] == f"{100 * _one(records, method, snr, metric)['value']:.2f}"
    diffs = _table(report, "## DAS minus baseline")
    assert set(diffs) == {f"das_minus_{b}" for b in BASELINES}
    for name, row in diffs.items():
        for snr, title in titles.items():
            assert row[title] == f"{100 * _one(records, name, snr, 'accuracy')['value']:+.2f}"
    lam = json.load(open(os.path.join(out, "evaluation.json")))["lam"]
    assert f"λ = **{lam:g}**" in report
    sweep = _table(report, "## λ sweep on the tuning split")
    assert [k for k in sweep if "(chosen)" in k] == [f"{lam:g} (chosen)"]
    assert "10 clips x 2 conditions + 4 noise recordings = 24" in report
    # the broken clip is reported for both conditions, with its cause
    failed = report.split("## Clips and recordings that could not be decoded", 1)[1]
    assert failed.count("`9999-8-0-0.wav`") == 2 and "not_audio" in failed
    for method in BASELINES[2:]:
        assert f"- `{method}`: " in report.split("## What the Acevedo variants need", 1)[1]


def _zs_text_rows(emb64, sources, scene_of, prompts, anchors) -> list[np.ndarray]:
    """Acevedo ZS-text per window, from scratch: b = mean over the scene's background prompts of their anchor sims."""
    rows = []
    for z, src in zip(emb64, sources):
        b = np.zeros(len(anchors))
        if src is not None:
            scene = scene_of[src.rsplit("@", 1)[0]]
            bg = np.stack([prompts[p] for p in background_prompts(scene)]).astype(np.float64)
            b = (bg @ anchors.T).mean(axis=0)
        rows.append((z @ anchors.T - 0.5 * b).astype(np.float32))
    return rows


def _tgap_audio_rows(emb, fids, sources, fold, scene_of, noise, anchors) -> list[np.ndarray]:
    """Acevedo TGAP-audio per window, from scratch: the pool outside the clip's fold, the scene's recordings."""
    rows = []
    for z, fid, src in zip(emb.astype(np.float64), fids, sources):
        pool = np.stack([e for e, f in zip(emb, fids) if fold[f] != fold[fid]])
        protos = tgap_prototypes(anchors, pool).astype(np.float64)
        b = np.zeros(len(anchors))
        if src is not None:
            scene = scene_of[src.rsplit("@", 1)[0]]
            b = background_profile(protos, np.stack([e for u, e in noise.items() if scene_of[u] == scene]))
        rows.append(acevedo_scores(z[None], protos, b, tau=0.5)[0])
    return rows


def test_metrics_agree_with_independent_computation(us8k):
    """Recompute from the stored Parquet embeddings with pyarrow and plain numpy, metadata read with csv."""
    out, root, noise_root = us8k["out"], us8k["root"], us8k["noise"]
    records = _records(out)
    with open(os.path.join(root, "metadata", "UrbanSound8K.csv")) as f:
        meta = {r["slice_file_name"]: r for r in csv.DictReader(f)}
    names = [name for _, name in sorted(US8K_CLASSES)]
    truth = {fid: names.index(r["class"]) for fid, r in meta.items()}
    fold = {fid: int(r["fold"]) for fid, r in meta.items()}
    with open(os.path.join(noise_root, "meta.csv")) as f:
        scene_of = {os.path.join(noise_root, r["filename"]): r["scene_label"]
                    for r in csv.DictReader(f, delimiter="\t")}
    cache = _saved_cache(out)
    prompts = _saved_prompts(out)
    lam = json.load(open(os.path.join(out, "evaluation.json")))["lam"]
    anchors = np.stack([prompts[f"This is a sound of {n.replace('_', ' ')}"] for n in names]).astype(np.float64)
    noise_ids, _, noise_emb, _ = _stored_windows(os.path.join(out, "store", "noise"))

    def accuracy(pooled, folds):
        hits = [np.argmax(pooled[f]) == truth[f] for f in pooled if fold[f] in folds]
        return np.mean(hits), len(hits)

    for snr, name in ((None, "clean"), (0.0, "snr0")):
        fids, _, emb, sources = _stored_windows(os.path.join(out, "store", name))
        assert "9999-8-0-0.wav" not in fids                  # the broken clip has no window ...
        assert sum(f == "1010-3-0-0.wav" for f in fids) == 2     # ... the 12 s clip two
        emb64 = emb.astype(np.float64)
        # float64 products rounded to float32, as the scorer stores scores
        zs = _max_by_file(fids, (emb64 @ cache.clean.astype(np.float64).T).astype(np.float32))
        das_matrix = cache.clean.astype(np.float64) + lam * cache.drift_direction.astype(np.float64)
        das = _max_by_file(fids, (emb64 @ das_matrix.T).astype(np.float32))
        acc, n = accuracy(zs, {2, 3})
        assert n == 6                                          # 7 test clips, one broken
        assert _one(records, "zs_das_template", snr, "accuracy")["value"] == pytest.approx(acc, abs=1e-9)
        assert _one(records, "das", snr, "accuracy")["value"] == pytest.approx(accuracy(das, {2, 3})[0], abs=1e-9)
        fold_mean = np.mean([accuracy(zs, {f})[0] for f in (2, 3)])
        assert _one(records, "zs_das_template", snr, "accuracy_fold_mean")["value"] == pytest.approx(fold_mean)

        # Acevedo ZS-text: background prompts of the scene of the noise actually mixed into each window
        assert snr is not None or all(src is None for src in sources)      # clean: no background
        acc_text = accuracy(_max_by_file(fids, _zs_text_rows(emb64, sources, scene_of, prompts, anchors)), {2, 3})[0]
        assert _one(records, "acevedo_zs_text", snr, "accuracy")["value"] == pytest.approx(acc_text)

        # Acevedo TGAP-audio: prototypes from the other folds' windows, profile from that scene's noise recordings
        noise = {u: e for u, e in zip(noise_ids, noise_emb)}
        rows = _tgap_audio_rows(emb, fids, sources, fold, scene_of, noise, anchors)
        acc_tgap = accuracy(_max_by_file(fids, rows), {2, 3})[0]
        assert _one(records, "acevedo_tgap_audio", snr, "accuracy")["value"] == pytest.approx(acc_tgap)


def test_rerun_encodes_nothing_and_gives_identical_results(us8k, monkeypatch, capsys, tmp_path):
    out = us8k["out"]
    before = _snapshot(os.path.join(out, "store")) | {
        "text/" + k: v for k, v in _snapshot(os.path.join(out, "text")).items()}
    results = {n: open(os.path.join(out, n), "rb").read() for n in ("results.json", "results.csv", "per_class.csv",
                                                                    "report.md")}

    def no_model(*_a, **_k):
        raise AssertionError("a rerun must not load the model")

    def no_label(*_a, **_k):
        raise AssertionError("a rerun must not run the label job")

    monkeypatch.setattr("das_core.clap.encoder.ClapEncoder.from_checkpoint", no_model)
    monkeypatch.setattr("jobs.label.run", no_label)
    rc, printed = _run(us8k["args"], capsys)
    assert rc == 0, printed
    assert "(0 windows encoded by this run)" in printed
    after = _snapshot(os.path.join(out, "store")) | {
        "text/" + k: v for k, v in _snapshot(os.path.join(out, "text")).items()}
    assert after == before                                   # no new part, nothing rewritten
    for name, data in results.items():
        assert open(os.path.join(out, name), "rb").read() == data, name

    # a copy of OUT, a new lam grid, another tau and a --limit: still nothing to encode
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    args = [a if a != out else copy for a in us8k["args"]] + ["--lam-grid", "0,0.15,2", "--tau", "0.25",
                                                               "--limit", "6"]
    rc, printed = _run(args, capsys)
    assert rc == 0, printed
    assert "(0 windows encoded by this run)" in printed
    records = _records(copy)
    assert {r["lam"] for r in records if r["split"] == "tune"} == {0.0, 0.15, 2.0}
    summary = json.load(open(os.path.join(copy, "evaluation.json")))
    assert summary["counts"]["clips"] == 6 and summary["tau"] == 0.25 and summary["lam"] in (0.0, 0.15, 2.0)
    assert _snapshot(os.path.join(copy, "store")).keys() == _snapshot(os.path.join(out, "store")).keys()

    # settings that change the embeddings are refused, naming the store, before anything is encoded
    rc, printed = _run(us8k["args"] + ["--seed", "1"], capsys)
    assert rc == 2
    assert re.search(r"store/snr0 was encoded with other settings \(seed: stored 0, now 1\)", printed)
    rc, printed = _run([a if a != "urbansound8k" else "esc50" for a in us8k["args"]], capsys)
    assert rc == 2 and "holds an evaluation of urbansound8k" in printed


def test_only_complete_stores_are_skipped(us8k, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(us8k["out"], copy)
    args = [a if a != us8k["out"] else copy for a in us8k["args"]]
    p = plan(ev.config_from_args(ev.build_parser().parse_args(args)))
    jobs = {job.name: job for job in store_jobs(p)}
    assert set(jobs) == {"noise", "clean", "snr0"}
    assert {name: store_state(job, p.checkpoint_id)[0] for name, job in jobs.items()} == {
        "noise": "complete", "clean": "complete", "snr0": "complete"}
    # an interrupted run (manifest still "running") is resumed, not skipped
    path = os.path.join(copy, "store", "clean", "_manifest.json")
    manifest = json.load(open(path))
    json.dump(manifest | {"status": "running"}, open(path, "w"))
    state, read_back = store_state(jobs["clean"], p.checkpoint_id)
    assert state == "partial" and read_back.status == "running"
    # so is a complete store that lacks clips (a larger --limit)
    grown = StoreJob(**{**jobs["snr0"].__dict__, "ids": jobs["snr0"].ids + ["new-clip.wav"]})
    assert store_state(grown, p.checkpoint_id)[0] == "partial"
    # a store made with another checkpoint is refused
    with pytest.raises(Refused, match="checkpoint_fingerprint: stored 'sha256:"):
        store_state(jobs["snr0"], "sha256:other")
    # a folder holding results without a manifest was not written by das
    os.remove(os.path.join(copy, "store", "snr0", "_manifest.json"))
    with pytest.raises(Refused, match="holds results but no _manifest.json"):
        store_state(jobs["snr0"], p.checkpoint_id)


def test_snr_plot_is_a_png(us8k):
    import matplotlib.image as mpimg

    img = mpimg.imread(os.path.join(us8k["out"], "snr_curves.png"))
    assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 700
    assert img[..., :3].std() > 0.05                         # not a blank canvas


# ------------------------------------------------------------------ FSD50K
def test_fsd50k_end_to_end(tmp_path, tiny_ckpt, ray_local, one_text_encoder, capsys):
    root, noise, out = str(tmp_path / "FSD50K"), str(tmp_path / "noise"), str(tmp_path / "eval")
    fnames = make_fsd50k(root, long_clip=True)
    os.makedirs(noise)
    make_tau(str(tmp_path / "tau"), per_scene=1)
    for path in glob.glob(str(tmp_path / "tau" / "audio" / "*.wav")):   # a plain folder: scene unknown
        shutil.copy(path, noise)
    rc, printed = _run(["--dataset", "fsd50k", "--root", root, "--noise-root", noise, "--checkpoint", tiny_ckpt,
                        "--out", out, "--snrs", "0", "--batch-size", str(TEST_BATCH_SIZE)], capsys)
    assert rc == 0, printed
    records = _records(out)
    for method in METHODS:
        assert 0.0 <= _one(records, method, 0.0, "mAP")["value"] <= 1.0
    assert not [r for r in records if r["metric"] == "accuracy"]

    # independent: the hash split, window max-pooling and macro AP with scikit-learn
    from sklearn.metrics import average_precision_score

    tune = {f for f in fnames if int.from_bytes(hashlib.sha1(f.encode()).digest()[:8], "big") / 2**64 < 0.5}
    test = [f for f in fnames if f not in tune]
    assert tune and test
    with open(os.path.join(root, "FSD50K.ground_truth", "eval.csv")) as f:
        labels = {r["fname"]: r["labels"].split(",") for r in csv.DictReader(f)}
    vocab = ["Bark", "Car_passing_by", "Male_speech_and_man_speaking"]
    cache = _saved_cache(out)
    fids, _, emb, sources = _stored_windows(os.path.join(out, "store", "snr0"))
    assert fids.count(fnames[0]) == 2 and all(s is not None for s in sources)
    pooled = _max_by_file(fids, (emb.astype(np.float64) @ cache.clean.astype(np.float64).T).astype(np.float32))
    y = np.array([[lb in labels[f] for lb in vocab] for f in test])
    scores = np.stack([pooled[f] for f in test])
    kept = [c for c in range(3) if y[:, c].any()]
    expected = np.mean([average_precision_score(y[:, c], scores[:, c]) for c in kept])
    assert _one(records, "zs_das_template", 0.0, "mAP")["value"] == pytest.approx(expected, abs=1e-6)
    report = open(os.path.join(out, "report.md")).read()
    assert "## Macro mAP (%) on the test split" in report and "(folder)" in report
    assert "mean over folds" not in report


# ---------------------------------------------------------------------- S3
def _upload(folder, bucket, prefix) -> str:
    import boto3

    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    for dirpath, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(dirpath, name)
            s3.upload_file(full, bucket, f"{prefix}/{os.path.relpath(full, folder)}")
    return f"s3://{bucket}/{prefix}"


def test_out_on_s3_is_scored_from_its_stores(us8k, bucket, monkeypatch, capsys):
    """An OUT folder copied to S3 is recognised, scored from the stores there, and gives identical results."""
    from das_core.io import storage

    out = _upload(us8k["out"], bucket, "results/us8k")
    monkeypatch.setattr("das_core.clap.encoder.ClapEncoder.from_checkpoint",
                        lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.setattr("jobs.label.run", lambda *a, **k: pytest.fail("label job run"))
    rc, printed = _run([a if a != us8k["out"] else out for a in us8k["args"]], capsys)
    assert rc == 0, printed
    assert "(0 windows encoded by this run)" in printed
    assert json.loads(storage.read_bytes(f"{out}/results.json")) == _records(us8k["out"])
    assert storage.read_bytes(f"{out}/snr_curves.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert storage.read_bytes(f"{out}/report.md") == open(os.path.join(us8k["out"], "report.md"), "rb").read()


def test_one_fold_is_refused_with_a_clear_line(tmp_path, capsys):
    root = str(tmp_path / "UrbanSound8K")
    make_urbansound8k(root, folds=(4,))
    make_tau(str(tmp_path / "TAU"), per_scene=1)
    rc, printed = _run(["--dataset", "urbansound8k", "--root", root, "--noise-root", str(tmp_path / "TAU"),
                        "--checkpoint", "nowhere.pt", "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "Traceback" not in printed
    assert re.search(r"das evaluate: error: .*UrbanSound8K holds only fold 4 of urbansound8k \(evaluation needs at "
                     r"least 2 folds", printed), printed


# -------------------------------------------------------- refusals and CLI
def test_bad_input_is_refused_with_the_file_and_the_cause(tmp_path, capsys):
    root = str(tmp_path / "ESC-50")
    make_esc50(root)
    make_tau(str(tmp_path / "TAU"))
    base = ["--root", root, "--noise-root", str(tmp_path / "TAU"), "--checkpoint", "nowhere.pt", "--out",
            str(tmp_path / "out")]
    cases = [
        (["--dataset", "urbansound8k"], r"metadata/UrbanSound8K.csv does not exist"),
        (["--dataset", "esc50", "--snrs", "clean,loud"], r"--snrs: 'loud' is neither 'clean' nor a number"),
        (["--dataset", "esc50", "--lam-grid", "0,-1"], r"--lam-grid: lam must be finite and >= 0"),
        (["--dataset", "esc50", "--tune-split", "folds:7"], r"fold\(s\) 7 do not exist in esc50 \(folds: 1-3\)"),
        (["--dataset", "esc50", "--tune-split", "half"], r"expected folds:A-B"),
        (["--dataset", "esc50", "--tune-split", "folds:1-3"], r"the test split is empty"),
        (["--dataset", "esc50", "--limit", "0"], r"--limit must be at least 1"),
        (["--dataset", "esc50", "--noise-phrases", str(tmp_path / "missing.txt")],
         r"noise phrases file .*missing.txt does not exist"),
        (["--dataset", "esc50"], r"checkpoint nowhere.pt does not exist"),
    ]
    for extra, message in cases:
        rc, printed = _run(base + extra, capsys)
        assert rc == 2, (extra, printed)
        assert re.search(message, printed), (extra, printed)
    fsd = str(tmp_path / "FSD50K")
    make_fsd50k(fsd, n=4)
    rc, printed = _run(["--dataset", "fsd50k", "--tune-split", "folds:1"] + base[2:] + ["--root", fsd], capsys)
    assert rc == 2 and "fsd50k has no folds; use hash:P" in printed


def test_help_from_das_and_python_m(capsys):
    from jobs.cli import main as das

    with pytest.raises(SystemExit) as exc:
        das(["evaluate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--dataset", "--root", "--noise-root", "--snrs", "--seed", "--lam-grid", "--tune-split",
                   "--noise-phrases", "--tau", "--limit", "--num-gpus", "--batch-size", "--tokenizer-dir"):
        assert option in text
    assert "usage: das evaluate" in text and "hash:50" in text
    done = subprocess.run([sys.executable, "-m", "jobs.evaluate", "--help"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
    assert done.returncode == 0 and "usage: python -m jobs.evaluate" in done.stdout
