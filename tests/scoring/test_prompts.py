import pytest

from das_core.scoring.prompts import (
    DEFAULT_NOISE_PHRASES,
    check_template,
    label_text,
    numbered_lines,
    odd_text_reason,
    read_lines,
)


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


def test_lines_as_people_write_them():
    text = "\ufeffdog_bark\r\n# a whole-line comment\r\n\r\ncar horn # honk\r\n  siren\t# wailing\r\nC#\r\n#1 hit\r\n"
    assert read_lines(text) == ["dog_bark", "car horn", "siren", "C#"]
    assert numbered_lines(text) == [(1, "dog_bark"), (4, "car horn"), (5, "siren"), (6, "C#")]
    assert read_lines("old mac\rline ends\r") == ["old mac", "line ends"]
    assert read_lines("") == [] and read_lines("\ufeff# only a comment\n") == []


@pytest.mark.parametrize("text, reason", [
    ("dog\tbark", "tab"),
    ("dog\x00bark", "control character"),
    ("dog\u200bbark", "control character"),
    ("x" * 101, "101 characters"),
    ('"dog bark"', "punctuation"),
    ("dog bark,", "punctuation"),
    ("-siren", "punctuation"),
])
def test_odd_labels_are_named(text, reason):
    assert reason in odd_text_reason(text)


@pytest.mark.parametrize("text", ["dog_bark", "Bus (vehicle)", "rock 'n' roll", "C#", "Male_speech_and_man_speaking"])
def test_ordinary_labels_are_not_flagged(text):
    assert odd_text_reason(text) is None


def test_labels_file_is_read_with_warnings(tmp_path, caplog):
    from das_core.errors import Refused as UsageError
    from das_core.scoring.prompts import read_lines_from

    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffdog_bark\r\ncar horn # honk\r\n\r\nsiren,\r\n".encode())
    with caplog.at_level("WARNING", logger="das"):
        assert read_lines_from(str(path), "labels") == ["dog_bark", "car horn", "siren,"]
    assert "line 4" in caplog.text and "'siren,'" in caplog.text and "punctuation" in caplog.text
    assert "line 1" not in caplog.text and "line 2" not in caplog.text
    path.write_bytes("dog_bark\ncar horn\n".encode("utf-16"))         # Notepad's "Unicode"
    assert read_lines_from(str(path), "labels") == ["dog_bark", "car horn"]
    path.write_bytes(b"dog\xff\xfe bark\n")
    with pytest.raises(UsageError, match="not UTF-8 text"):
        read_lines_from(str(path), "labels")
    with pytest.raises(UsageError, match="is a folder"):
        read_lines_from(str(tmp_path), "labels")
    with pytest.raises(UsageError, match="does not exist"):
        read_lines_from(str(tmp_path / "missing.txt"), "noise phrases")
