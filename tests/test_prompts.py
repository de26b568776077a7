import pytest

from das_core.prompts import DEFAULT_NOISE_PHRASES, check_template, label_text, read_lines


@pytest.mark.parametrize("raw, text", [
    ("dog_bark", "dog bark"),
    ("children_playing", "children playing"),
    ("Accelerating_and_revving_and_vroom", "accelerating and revving and vroom"),
    ("Male_speech_and_man_speaking", "male speech and man speaking"),
    ("Chirp_and_tweet", "chirp and tweet"),
    ("jackhammer", "jackhammer"),
    ("car-horn", "car horn"),
    ("  street   music ", "street music"),
    ("DogBark", "dog bark"),
    ("TV_noise", "TV noise"),
])
def test_label_text(raw, text):
    assert label_text(raw) == text


def test_templates_are_checked():
    check_template("sound of {label}", {"label"}, "clean template")
    with pytest.raises(ValueError, match=r"must contain \{label\}"):
        check_template("sound of a thing", {"label"}, "clean template")
    with pytest.raises(ValueError, match=r"must contain \{noise\}"):
        check_template("{label} outdoors", {"label", "noise"}, "noisy template")
    with pytest.raises(ValueError, match="unknown field"):
        check_template("{label} {colour}", {"label"}, "clean template")
    with pytest.raises(ValueError, match="not a valid format"):
        check_template("{label", {"label"}, "clean template")


def test_default_noise_phrases_and_lines():
    assert len(DEFAULT_NOISE_PHRASES) == 8 and len(set(DEFAULT_NOISE_PHRASES)) == 8
    assert read_lines("a\n\n  # comment\n b \n") == ["a", "b"]
