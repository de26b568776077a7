"""das_core.evaluation.protocol: conditions, λ grid, tuning splits, EvaluateConfig and plan (no Ray, no model)."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from das_core.errors import ConfigError, Refused
from das_core.evaluation import (
    Condition,
    EvaluateConfig,
    parse_conditions,
    parse_lam_grid,
    parse_tune_split,
    plan,
)
from das_core.evaluation.protocol import ranges

from .test_datasets import make_esc50, make_tau, make_urbansound8k


def test_conditions_are_parsed_in_order_and_named_for_folders():
    conds = parse_conditions("clean, 20, 0dB,-5")
    assert conds == (Condition(None), Condition(20.0), Condition(0.0), Condition(-5.0))
    assert [c.name for c in conds] == ["clean", "snr20", "snr0", "snr-5"]
    assert [c.title for c in conds] == ["clean", "20 dB", "0 dB", "-5 dB"]
    for text, message in (("clean,loud", "'loud' is neither 'clean' nor a number"), ("0,0", "0 dB is listed twice"),
                          ("200", "outside -60..120 dB"), (" , ", "lists no condition")):
        with pytest.raises(ConfigError, match=message):
            parse_conditions(text)


def test_lam_grid_is_sorted_without_repeats():
    assert parse_lam_grid("0.5,0,0.1,0.5") == (0.0, 0.1, 0.5)
    for text, message in (("0,-1", "finite and >= 0"), ("a", "'a' is not a number"), ("", "lists no value"),
                          ("inf", "finite and >= 0")):
        with pytest.raises(ConfigError, match=message):
            parse_lam_grid(text)


def test_tune_split_specs():
    assert parse_tune_split("folds:1-3,5").folds == frozenset({1, 2, 3, 5})
    assert parse_tune_split("hash:50").percent == 50.0
    for spec, message in (("half", "expected folds:A-B"), ("folds:3-1", "fold numbers"), ("folds:", "names no fold"),
                          ("hash:x", "a percentage"), ("hash:100", "strictly between 0 and 100")):
        with pytest.raises(ConfigError, match=message):
            parse_tune_split(spec)
    assert ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7, 8" and ranges([]) == "none"


def test_config_refuses_bad_settings_with_the_librarys_error():
    base = dict(dataset="esc50", root="r", noise_root="n", checkpoint="c", out="o")
    assert EvaluateConfig(**base).lam_grid == parse_lam_grid("0,0.05,0.1,0.2,0.3,0.5,1.0")
    cases = [({"dataset": "audioset"}, "--dataset 'audioset'"), ({"tau": float("nan")}, "--tau must be a finite"),
             ({"limit": 0}, "--limit must be at least 1"), ({"noise_limit": 0}, "--noise-limit must be at least 1"),
             ({"batch_size": 0}, "--batch-size and --actors"), ({"num_gpus": -1}, "--num-gpus at least 0"),
             ({"max_error_fraction": 1.5}, "between 0 and 1"), ({"lam_grid": (0.1, -1.0)}, "finite and >= 0"),
             ({"conditions": ()}, "at least one condition"), ({"tune_split": "half"}, "expected folds:A-B")]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            EvaluateConfig(**base | change)
    assert issubclass(ConfigError, Refused)


def test_the_command_line_reads_its_defaults_off_the_config():
    from jobs.evaluate import build_parser, config_from_args

    args = build_parser().parse_args(["--dataset", "esc50", "--root", "r", "--noise-root", "n", "--checkpoint", "c",
                                      "--out", "o"])
    assert config_from_args(args) == EvaluateConfig("esc50", "r", "n", "c", "o")
    args = build_parser().parse_args(["--dataset", "esc50", "--root", "r", "--noise-root", "n", "--checkpoint", "c",
                                      "--out", "o", "--snrs", "clean,0", "--lam-grid", "0.2,0", "--seed", "3"])
    c = config_from_args(args)
    assert c.conditions == (Condition(None), Condition(0.0)) and c.lam_grid == (0.0, 0.2) and c.seed == 3
    assert dataclasses.replace(c, tau=0.25).tau == 0.25


def _config(dataset, root, noise, ckpt, out, **extra) -> EvaluateConfig:
    return EvaluateConfig(dataset, str(root), str(noise), ckpt, str(out), **extra)


def test_esc50_plan_uses_its_folds(tmp_path, tiny_ckpt):
    """ESC-50 runs through the same code as UrbanSound8K (single-label, folds); its own defaults are checked here."""
    make_esc50(str(tmp_path / "ESC-50"), folds=(1, 2, 3, 4, 5))
    make_tau(str(tmp_path / "TAU"), per_scene=1)
    args = ("esc50", tmp_path / "ESC-50", tmp_path / "TAU", tiny_ckpt, tmp_path / "out")
    p = plan(_config(*args))
    assert p.split.spec == "folds:1-2"
    assert p.split.describe(p.dataset, True) == "folds 1, 2" and p.split.describe(p.dataset, False) == "folds 3-5"
    assert int(p.is_tune.sum()) == 6 and int((~p.is_tune).sum()) == 9
    assert p.groups == [c.fold for c in p.dataset.clips]       # TGAP pools: the other folds
    assert [cd.title for cd in p.config.conditions] == [
        "clean", "20 dB", "10 dB", "5 dB", "0 dB", "-5 dB"]
    phrases = tmp_path / "phrases.txt"
    phrases.write_text("rain\nwind noise\n")
    assert plan(_config(*args, noise_phrases=str(phrases))).phrases == ("rain", "wind noise")
    phrases.write_text("rain\nrain\n")
    with pytest.raises(ConfigError, match="esc50 labels / noise phrases: noise phrases contain duplicates"):
        plan(_config(*args, noise_phrases=str(phrases)))
    small = plan(_config(*args, limit=6))
    assert len(small.dataset.clips) == 6 and small.is_tune.any() and not small.is_tune.all()
    with pytest.raises(ConfigError, match="the test split is empty"):
        plan(_config(*args, tune_split="folds:1-5"))
    with pytest.raises(ConfigError, match=r"fold\(s\) 7 do not exist in esc50 \(folds: 1-5\)"):
        plan(_config(*args, tune_split="folds:7"))


def test_default_split_is_chosen_from_the_folds_present(tmp_path, tiny_ckpt, caplog):
    """A copy holding some folds: the default folds:1-5 would refuse; the lower half of those present tunes."""
    root = str(tmp_path / "UrbanSound8K")
    make_urbansound8k(root, folds=(2, 3, 4, 7))
    make_tau(str(tmp_path / "TAU"), per_scene=1)
    args = ("urbansound8k", root, tmp_path / "TAU", tiny_ckpt, tmp_path / "out")
    with caplog.at_level("INFO", logger="das"):
        p = plan(_config(*args))
    assert p.split.spec == "folds:2,3"
    assert p.split.describe(p.dataset, True) == "folds 2, 3" and p.split.describe(p.dataset, False) == "folds 4, 7"
    assert "chosen from the folds present (2-4, 7)" in p.split.note and "folds:1-5" in p.split.note
    assert "needs absent fold(s) 1, 5" in p.split.note and "chosen from the folds present" in caplog.text
    assert p.is_tune.tolist() == [c.fold in (2, 3) for c in p.dataset.clips]
    # three folds: one tunes, two test; an explicit split is still taken as given
    shutil.rmtree(root)
    make_urbansound8k(root, folds=(1, 2, 3))
    p = plan(_config(*args))
    assert p.split.spec == "folds:1" and p.split.describe(p.dataset, False) == "folds 2, 3"
    p = plan(_config(*args, tune_split="folds:1-2"))
    assert p.split.spec == "folds:1-2" and p.split.note == ""
    # all ten folds: the published default, no note
    shutil.rmtree(root)
    make_urbansound8k(root, folds=tuple(range(1, 11)))
    p = plan(_config(*args))
    assert p.split.spec == "folds:1-5" and p.split.note == ""
