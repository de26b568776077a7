"""Prompt templates, label text normalisation and the default noise phrases."""

from __future__ import annotations

import re
import string

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


def read_lines(text: str) -> list[str]:
    """Non-empty, stripped lines; lines starting with '#' are comments."""
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
