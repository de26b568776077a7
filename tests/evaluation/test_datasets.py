"""Readers for the published dataset layouts, on tiny datasets generated in each layout."""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter

import numpy as np
import pytest
import soundfile as sf

from das_core.errors import LayoutError
from das_core.evaluation import datasets as dsm
from das_core.evaluation.datasets import (
    read_dataset,
    read_esc50,
    read_fsd50k,
    read_noise,
    read_urbansound8k,
)
from das_core.evaluation.subsets import noise_subset, stratified_order, stratified_subset

RATE = 16_000

# (classID, class) pairs as in UrbanSound8K; the ids are deliberately not 0..K-1.
US8K_CLASSES = ((3, "dog_bark"), (0, "air_conditioner"), (8, "siren"))
ESC50_CLASSES = ((0, "dog"), (1, "rooster"), (2, "pig"))
FSD50K_VOCAB = ("Bark", "Car_passing_by", "Male_speech_and_man_speaking")
TAU_SCENES = ("street_traffic", "metro_station")


def tone(index: int, seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """A class-specific tone (with a little noise) so that classes differ in their audio."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    x = 0.3 * np.sin(2 * np.pi * (300.0 * (index + 1)) * t) + 0.02 * rng.standard_normal(len(t))
    return x.astype(np.float32)


def _write_csv(path, header, rows, delimiter=","):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        if header is not None:
            w.writerow(header)
        w.writerows(rows)


def make_urbansound8k(root, folds=(1, 2, 3), per_class=1, seconds=1.0, long_clip=False, short_clip=False,
                      broken_clip=False) -> list[str]:
    """UrbanSound8K layout; returns the clip ids. Optionally one 12 s clip, one 0.3 s clip and one broken file."""
    rows, ids = [], []
    for fold in folds:
        for ci, (class_id, name) in enumerate(US8K_CLASSES):
            for k in range(per_class):
                fs_id = 1000 + 10 * fold + ci
                fname = f"{fs_id}-{class_id}-0-{k}.wav"
                dur = seconds
                if long_clip and fold == folds[0] and ci == 0 and k == 0:
                    dur = 12.0
                if short_clip and fold == folds[-1] and ci == 1 and k == 0:
                    dur = 0.3
                path = os.path.join(root, "audio", f"fold{fold}", fname)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                sf.write(path, tone(ci, dur, seed=len(rows)), RATE)
                rows.append([fname, fs_id, 0.0, dur, 1, fold, class_id, name])
                ids.append(fname)
    if broken_clip:
        fold = folds[-1]
        fname = f"9999-{US8K_CLASSES[2][0]}-0-0.wav"
        with open(os.path.join(root, "audio", f"fold{fold}", fname), "wb") as f:
            f.write(b"RIFF\x10\x00\x00\x00WAVE this file was cut off")
        rows.append([fname, 9999, 0.0, 1.0, 1, fold, US8K_CLASSES[2][0], US8K_CLASSES[2][1]])
        ids.append(fname)
    _write_csv(os.path.join(root, "metadata", "UrbanSound8K.csv"), dsm.US8K_COLUMNS, rows)
    return ids


def make_esc50(root, folds=(1, 2, 3), per_class=1, seconds=1.0) -> list[str]:
    rows, ids = [], []
    for fold in folds:
        for target, name in ESC50_CLASSES:
            for k in range(per_class):
                fname = f"{fold}-{100 + target}{k}-A-{target}.wav"
                path = os.path.join(root, "audio", fname)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                sf.write(path, tone(target, seconds, seed=len(rows)), RATE)
                rows.append([fname, fold, target, name, "False", f"{100 + target}{k}", "A"])
                ids.append(fname)
    _write_csv(os.path.join(root, "meta", "esc50.csv"), dsm.ESC50_COLUMNS, rows)
    return ids


FSD50K_CLIP_LABELS = (
    ("Bark",), ("Bark", "Male_speech_and_man_speaking"), ("Car_passing_by",), ("Car_passing_by", "Bark"),
    ("Male_speech_and_man_speaking",), ("Male_speech_and_man_speaking",), ("Car_passing_by",), ("Bark",),
    ("Car_passing_by", "Male_speech_and_man_speaking"), ("Bark",), ("Male_speech_and_man_speaking", "Bark"),
    ("Car_passing_by",),
)


def make_fsd50k(root, n=12, vocab_header=False, long_clip=False) -> list[str]:
    """FSD50K eval layout (vocabulary.csv without a header row, as published); returns fnames."""
    mids = {name: f"/m/0{i}x" for i, name in enumerate(FSD50K_VOCAB)}
    _write_csv(os.path.join(root, "FSD50K.ground_truth", "vocabulary.csv"),
               ["index", "label", "mid"] if vocab_header else None,
               [[i, name, mids[name]] for i, name in enumerate(FSD50K_VOCAB)])
    rows, ids = [], []
    for i in range(n):
        labels = FSD50K_CLIP_LABELS[i % len(FSD50K_CLIP_LABELS)]
        fname = str(30000 + 7 * i)
        dur = 12.0 if (long_clip and i == 0) else 1.0 + 0.25 * (i % 3)
        x = sum(tone(FSD50K_VOCAB.index(lb), dur, seed=i) for lb in labels) / len(labels)
        path = os.path.join(root, "FSD50K.eval_audio", f"{fname}.wav")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, x, RATE)
        rows.append([fname, ",".join(labels), ",".join(mids[lb] for lb in labels)])
        ids.append(fname)
    _write_csv(os.path.join(root, "FSD50K.ground_truth", "eval.csv"), ["fname", "labels", "mids"], rows)
    return ids


def make_tau(root, per_scene=2, seconds=2.0) -> list[str]:
    """TAU Urban Acoustic Scenes 2019 layout (tab-separated meta.csv); returns the audio paths."""
    rows, paths = [], []
    rng = np.random.default_rng(7)
    for si, scene in enumerate(TAU_SCENES):
        for k in range(per_scene):
            rel = f"audio/{scene}-barcelona-{k}-{si}-a.wav"
            path = os.path.join(root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            colour = np.cumsum(rng.standard_normal(int(seconds * RATE))) if si else rng.standard_normal(
                int(seconds * RATE))
            x = 0.2 * colour / np.max(np.abs(colour))
            sf.write(path, x.astype(np.float32), RATE)
            rows.append([rel, scene, f"barcelona-{k}", "a"])
            paths.append(path)
    _write_csv(os.path.join(root, "meta.csv"), ["filename", "scene_label", "identifier", "source_label"], rows,
               delimiter="\t")
    return paths


# ------------------------------------------------------------ UrbanSound8K
def test_urbansound8k_layout(tmp_path):
    ids = make_urbansound8k(tmp_path, folds=(1, 2), per_class=2)
    ds = read_urbansound8k(str(tmp_path))
    assert ds.name == "urbansound8k" and not ds.multi_label
    assert ds.label_names == ("air_conditioner", "dog_bark", "siren")        # ordered by classID 0, 3, 8
    assert [c.clip_id for c in ds.clips] == ids
    assert ds.folds == (1, 2)
    first = ds.clips[0]
    assert first.uri == os.path.join(str(tmp_path), "audio", "fold1", first.clip_id) and os.path.isfile(first.uri)
    assert first.labels == ("dog_bark",) and first.fold == 1
    np.testing.assert_array_equal(ds.targets()[:6], [1, 1, 0, 0, 2, 2])
    assert ds.label_matrix().sum(axis=1).tolist() == [1] * len(ids)
    assert read_dataset("urbansound8k", str(tmp_path)) == ds


def test_urbansound8k_errors_name_file_and_cause(tmp_path, caplog):
    with pytest.raises(LayoutError, match=r"metadata/UrbanSound8K.csv does not exist"):
        read_urbansound8k(str(tmp_path))
    make_urbansound8k(tmp_path, folds=(1,))
    meta = tmp_path / "metadata" / "UrbanSound8K.csv"
    text = meta.read_text()
    meta.write_text(text.replace("classID", "class_id"))
    with pytest.raises(LayoutError, match=r"UrbanSound8K.csv: missing column\(s\) classID"):
        read_urbansound8k(str(tmp_path))
    lines = text.splitlines()
    meta.write_text("\n".join(lines[:2] + [lines[2].replace(",1,0,", ",x,0,")]) + "\n")
    with pytest.raises(LayoutError, match=r"line 3: column fold is 'x', expected an integer"):
        read_urbansound8k(str(tmp_path))
    # one classID with two names
    meta.write_text("\n".join(lines[:2] + [lines[2].replace("air_conditioner", "dog_bark")]) + "\n")
    with pytest.raises(LayoutError, match=r"line 3: class 'dog_bark' has classID 0 here but 3 earlier"):
        read_urbansound8k(str(tmp_path))
    meta.write_text(text)
    # a missing file is kept (the label job reports it); no file at all is a layout error
    os.remove(os.path.join(tmp_path, "audio", "fold1", lines[1].split(",")[0]))
    with caplog.at_level(logging.WARNING, logger="das.datasets"):
        ds = read_urbansound8k(str(tmp_path))
    assert len(ds.clips) == 3 and "1 of 3 listed audio files are missing" in caplog.text
    for f in os.listdir(tmp_path / "audio" / "fold1"):
        os.remove(tmp_path / "audio" / "fold1" / f)
    with pytest.raises(LayoutError, match=r"none of the 3 files listed"):
        read_urbansound8k(str(tmp_path))
    os.rmdir(tmp_path / "audio" / "fold1")
    os.rmdir(tmp_path / "audio")
    with pytest.raises(LayoutError, match=r"audio folder .*audio does not exist"):
        read_urbansound8k(str(tmp_path))
    assert read_urbansound8k(str(tmp_path), check_audio=False).clips


def test_duplicate_clip_is_refused(tmp_path):
    make_urbansound8k(tmp_path, folds=(1,))
    meta = tmp_path / "metadata" / "UrbanSound8K.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(LayoutError, match=r"slice_file_name .* appears 2 times"):
        read_urbansound8k(str(tmp_path))


# ------------------------------------------------------------------ ESC-50
def test_esc50_layout(tmp_path):
    ids = make_esc50(tmp_path, folds=(1, 2, 3, 4, 5))
    ds = read_esc50(str(tmp_path))
    assert ds.label_names == ("dog", "rooster", "pig") and not ds.multi_label
    assert [c.clip_id for c in ds.clips] == ids and ds.folds == (1, 2, 3, 4, 5)
    assert all(os.path.isfile(c.uri) and c.uri.startswith(os.path.join(str(tmp_path), "audio")) for c in ds.clips)
    assert ds.targets().tolist() == [0, 1, 2] * 5
    (tmp_path / "meta" / "esc50.csv").write_text("filename,fold,category\n")
    with pytest.raises(LayoutError, match=r"esc50.csv: missing column\(s\) target, esc10, src_file, take"):
        read_esc50(str(tmp_path))


# ------------------------------------------------------------------ FSD50K
@pytest.mark.parametrize("header", [False, True])
def test_fsd50k_layout(tmp_path, header):
    ids = make_fsd50k(tmp_path, n=6, vocab_header=header)
    ds = read_fsd50k(str(tmp_path))
    assert ds.multi_label and ds.label_names == FSD50K_VOCAB
    assert [c.clip_id for c in ds.clips] == ids and all(c.fold is None for c in ds.clips)
    assert ds.clips[1].labels == ("Bark", "Male_speech_and_man_speaking")
    assert ds.clips[0].uri == os.path.join(str(tmp_path), "FSD50K.eval_audio", f"{ids[0]}.wav")
    y = ds.label_matrix()
    assert y.shape == (6, 3) and y[1].tolist() == [True, False, True] and y.sum() == 8
    with pytest.raises(ValueError, match="multi-label"):
        ds.targets()


def test_fsd50k_errors(tmp_path):
    make_fsd50k(tmp_path, n=3)
    ev = tmp_path / "FSD50K.ground_truth" / "eval.csv"
    text = ev.read_text()
    ev.write_text(text.replace("Car_passing_by", "Car_passing"))
    with pytest.raises(LayoutError, match=r"eval.csv, line 4: label 'Car_passing' is not in .*vocabulary.csv"):
        read_fsd50k(str(tmp_path))
    ev.write_text(text.replace("fname", "name"))
    with pytest.raises(LayoutError, match=r"eval.csv: missing column\(s\) fname"):
        read_fsd50k(str(tmp_path))
    ev.write_text(text)
    (tmp_path / "FSD50K.ground_truth" / "vocabulary.csv").write_text("zero,Bark\n1\n")
    with pytest.raises(LayoutError, match=r"vocabulary.csv, row 1: expected 'index,label,mid'"):
        read_fsd50k(str(tmp_path))
    os.remove(tmp_path / "FSD50K.ground_truth" / "vocabulary.csv")
    with pytest.raises(LayoutError, match=r"FSD50K.ground_truth/vocabulary.csv does not exist"):
        read_fsd50k(str(tmp_path))


def test_wrong_dataset_for_root_names_the_expected_file(tmp_path):
    make_esc50(tmp_path)
    with pytest.raises(LayoutError, match=r"is not a UrbanSound8K root \(expected metadata/UrbanSound8K.csv\)"):
        read_dataset("urbansound8k", str(tmp_path))
    with pytest.raises(LayoutError, match="unknown dataset"):
        read_dataset("audioset", str(tmp_path))


# ------------------------------------------------------------------- noise
def test_tau_noise_layout(tmp_path):
    paths = make_tau(tmp_path)
    noise = read_noise(str(tmp_path))
    assert noise.layout == "tau" and noise.uris == tuple(sorted(paths))
    assert Counter(noise.scenes) == {"street_traffic": 2, "metro_station": 2}
    assert noise.scene_of()[os.path.join(str(tmp_path), "audio", "metro_station-barcelona-0-1-a.wav")] == \
        "metro_station"
    os.remove(paths[0])
    noise = read_noise(str(tmp_path))
    assert len(noise.uris) == 3 and noise.missing == (paths[0],)
    (tmp_path / "meta.csv").write_text("filename,scene_label\naudio/x.wav,park\n")     # commas, not tabs
    with pytest.raises(LayoutError, match=r"meta.csv: missing column\(s\) filename, scene_label .*tab-separated"):
        read_noise(str(tmp_path))


def test_plain_noise_folder_has_unknown_scenes(tmp_path):
    for i in range(3):
        sf.write(tmp_path / f"n{i}.flac", tone(i, 0.5, seed=i), RATE)
    (tmp_path / "notes.txt").write_text("not audio")
    noise = read_noise(str(tmp_path))
    assert noise.layout == "folder" and len(noise.uris) == 3 and noise.scenes == (None, None, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError, match="holds no meta.csv and no audio files"):
        read_noise(str(empty))
    with pytest.raises(LayoutError, match="does not exist"):
        read_noise(str(tmp_path / "nowhere"))


def test_s3_root(tmp_path, bucket):
    import boto3

    make_urbansound8k(tmp_path, folds=(1, 2))
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    for dirpath, _, names in os.walk(tmp_path):
        for name in names:
            full = os.path.join(dirpath, name)
            s3.upload_file(full, bucket, "US8K/" + os.path.relpath(full, tmp_path))
    ds = read_urbansound8k(f"s3://{bucket}/US8K/")
    local = read_urbansound8k(str(tmp_path))
    assert ds.root == f"s3://{bucket}/US8K"
    assert [c.uri for c in ds.clips] == [f"s3://{bucket}/US8K/audio/fold{c.fold}/{c.clip_id}" for c in local.clips]
    assert ds.label_names == local.label_names and [c.labels for c in ds.clips] == [c.labels for c in local.clips]
    with pytest.raises(LayoutError, match=rf"s3://{bucket}/nothing/meta/esc50.csv does not exist"):
        read_esc50(f"s3://{bucket}/nothing")


# ----------------------------------------------------------------- subsets
def test_stratified_subset_is_deterministic_and_spread(tmp_path):
    make_urbansound8k(tmp_path, folds=(1, 2, 3, 4), per_class=3)
    ds = read_urbansound8k(str(tmp_path))
    small = stratified_subset(ds, 6)
    assert small == stratified_subset(ds, 6)                         # deterministic
    assert Counter(c.labels[0] for c in small.clips) == {name: 2 for _, name in US8K_CLASSES}
    assert len({c.fold for c in small.clips}) >= 3                    # spread over folds
    assert [c.clip_id for c in small.clips] == [c.clip_id for c in ds.clips if c in small.clips]  # order kept
    # a prefix of the order: growing the limit keeps the clips already chosen
    assert set(small.clips) <= set(stratified_subset(ds, 9).clips)
    assert stratified_subset(ds, 10_000) is ds
    order = stratified_order(["a", "b", "c", "d"], ["x", "x", "y", "y"], [1, 2, 1, 2])
    assert sorted(order) == [0, 1, 2, 3]
    assert {order[0], order[1]} in ({0, 2}, {0, 3}, {1, 2}, {1, 3})   # first two: one of each label


def test_fsd50k_subset_covers_rare_labels(tmp_path):
    make_fsd50k(tmp_path)
    ds = read_fsd50k(str(tmp_path))
    small = stratified_subset(ds, 3, group_of=[0] * len(ds.clips))
    assert ds.label_matrix().sum(axis=0).min() > 0
    assert small.label_matrix().any(axis=0).all()                     # every label represented in 3 clips


def test_noise_subset_spreads_over_scenes(tmp_path):
    make_tau(tmp_path, per_scene=3)
    noise = read_noise(str(tmp_path))
    sub = noise_subset(noise, 2)
    assert sorted(sub.scenes) == ["metro_station", "street_traffic"]
    assert sub == noise_subset(noise, 2) and sub.uris == tuple(sorted(sub.uris))
