"""Prompt templates, label text normalisation and the default noise phrases."""

from __future__ import annotations

import logging
import os
import re
import string

from das_core.errors import Refused, StorageError
from das_core.io import storage
from das_core.io.s3 import is_s3

log = logging.getLogger("das")

# METHOD.md §2: the DAS paper's templates, as far as they can be read.
CLEAN_TEMPLATE = "sound of {label}"
NOISY_TEMPLATE = "{label} with {noise}"
# LAION's own zero-shot prompt, used as a second plain baseline.
LAION_TEMPLATE = "This is a sound of {label}."
# Acevedo et al.'s text anchor for prototypes (no final full stop in their code).
ACEVEDO_TEMPLATE = "This is a sound of {label}"

# METHOD.md §5, chosen here: phrases matched to urban acoustic scenes.
DEFAULT_NOISE_PHRASES: tuple[str, ...] = (
    "traffic noise",
    "street noise",
    "people talking in the background",
    "crowd noise",
    "wind noise",
    "engine hum",
    "city ambience",
    "background music",
)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z][a-z])")


def label_text(label: str) -> str:
    """Human-readable text for a dataset label.

    ``dog_bark`` -> ``dog bark``; FSD50K's ``Accelerating_and_revving_and_vroom``
    -> ``accelerating and revving and vroom``; ``children_playing`` ->
    ``children playing``; ``Male_speech_and_man_speaking`` -> ``male speech and
    man speaking``. CamelCase words are split, underscores and hyphens become
    spaces, whitespace is collapsed and the text is lower-cased unless it is
    an acronym (all capitals, kept as is).
    """
    text = label.replace("_", " ").replace("-", " ")
    text = _CAMEL.sub(" ", text)
    words = text.split()
    return " ".join(w if (len(w) > 1 and w.isupper()) else w.lower() for w in words)


def template_fields(template: str) -> set[str]:
    """The names of the ``{fields}`` in a ``str.format`` template."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template(template: str, required: set[str], what: str) -> None:
    """Refuse a template that misses a required field or names an unknown one."""
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ValueError(f"{what} {template!r} is not a valid format string: {exc}") from None
    missing = required - fields
    if missing:
        names = ", ".join("{" + m + "}" for m in sorted(missing))
        raise ValueError(f"{what} {template!r} must contain {names}")
    unknown = fields - required
    if unknown:
        names = ", ".join("{" + u + "}" for u in sorted(unknown))
        raise ValueError(f"{what} {template!r} has unknown field(s) {names}; allowed: "
                         + ", ".join("{" + r + "}" for r in sorted(required)))


# A comment starts a line or follows whitespace, so that labels such as "C#" or "#1 hit" keep their '#'.
_COMMENT = re.compile(r"(?:^|\s)#.*$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\ufeff]")
MAX_LABEL_CHARS = 100
# "Bus (vehicle)", "C#", "C++" are labels; a leading dash or a trailing comma is a slip in the file.
_ODD_FIRST = set(string.punctuation) - set("(")
_ODD_LAST = set(string.punctuation) - set(")#+'")


def numbered_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, content)`` of the lines that hold something, as people write such files.

    A UTF-8 byte-order mark is dropped, CRLF / CR line ends are accepted,
    ``#`` starts a comment (at the start of a line or after whitespace),
    and what is left is stripped; blank lines are skipped.
    """
    out = []
    for number, line in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        content = _COMMENT.sub("", line).strip()
        if content:
            out.append((number, content))
    return out


def read_lines(text: str) -> list[str]:
    """The non-empty lines of a labels or noise-phrases file, comments removed (see ``numbered_lines``)."""
    return [content for _, content in numbered_lines(text)]


def odd_text_reason(text: str) -> str | None:
    """Why a label or phrase looks like a mistake in the file (None if it looks fine)."""
    if "\t" in text:
        return "contains a tab (one label per line; columns are not read)"
    if _CONTROL.search(text):
        return "contains an invisible control character"
    if len(text) > MAX_LABEL_CHARS:
        return f"is {len(text)} characters long"
    if text[0] in _ODD_FIRST or text[-1] in _ODD_LAST:
        return "starts or ends with punctuation"
    return None


def _decode_text(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark); UTF-16 only when its byte-order mark says so."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    return data.decode("utf-8-sig")


def read_lines_from(uri: str, what: str) -> list[str]:
    """The entries of a labels / noise-phrases file (local or s3://), one per line, read as people write them.

    BOM, CRLF, blank lines and ``#`` comments are handled
    (``das_core.scoring.prompts.numbered_lines``); an entry that looks like a mistake
    (tab, control character, stray punctuation, very long) is kept with a
    warning naming its line. A folder, a missing file or one that is not
    text is refused (``Refused``).
    """
    if not is_s3(uri) and os.path.isdir(os.path.expanduser(uri)):
        raise Refused(f"{what} file {uri} is a folder (a text file with one entry per line is expected); "
                         "pass the file itself")
    try:
        data = storage.read_bytes(uri)
    except StorageError:
        raise
    except FileNotFoundError:
        raise Refused(f"{what} file {uri} does not exist (no such file); check the path") from None
    except IsADirectoryError:
        raise Refused(f"{what} file {uri} is a folder; pass the file itself") from None
    try:
        text = _decode_text(data)
    except UnicodeDecodeError as exc:
        raise Refused(f"{what} file {uri} is not UTF-8 text (undecodable byte at offset {exc.start}); "
                         "save it as UTF-8 plain text") from None
    lines = numbered_lines(text)
    for number, content in lines:
        reason = odd_text_reason(content)
        if reason:
            log.warning("%s file %s, line %d: %r %s; check that line", what, uri, number, content, reason)
    return [content for _, content in lines]
