"""Settings described once: each field of a settings object carries its default, its type and its meaning.

The jobs build their command-line options from these descriptions (``jobs.common.add_settings``): an
option is ``--<field-name>`` with the field's type, default and help, so that a default or a sentence is
never written twice. Fields without a description (tuning knobs, derived values) are not options.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, field
from typing import Any


def setting(default: Any = MISSING, *, help: str, metavar: str | None = None, choices: tuple | None = None,
            group: str | None = None, repeat: bool = False, flag: str | None = None) -> Any:
    """A dataclass field described for the command line. ``repeat``: a list option given once per value;
    ``flag``: the option's name when it is not ``--<field-name>``."""
    meta = {"help": help, "metavar": metavar, "choices": choices, "group": group, "repeat": repeat, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(metadata=meta) if default is MISSING else field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Described:
    """One described field of a settings class, as the command line needs it (``described`` makes them)."""

    name: str                    # the field's name
    flag: str                    # the option: --name-with-dashes unless the field says otherwise
    kind: type                   # str, int, float or bool (a repeated option: its items' type)
    required: bool
    default: Any
    help: str
    metavar: str | None
    choices: tuple | None
    group: str | None
    repeat: bool


def described(settings_class: type) -> list[Described]:
    """The fields of the dataclass ``settings_class`` made with ``setting`` (those with a help text), in field
    order; a field with neither default nor default factory is required (its ``default`` is None)."""
    hints = typing.get_type_hints(settings_class)
    out = []
    for member in dataclasses.fields(settings_class):
        meta = member.metadata
        if "help" not in meta:
            continue
        kind = _base(hints[member.name])
        required = member.default is MISSING and member.default_factory is MISSING
        default = member.default if member.default is not MISSING else (None if required else member.default_factory())
        flag = meta["flag"] or "--" + member.name.replace("_", "-")
        out.append(Described(member.name, flag, kind, required, default, meta["help"], meta["metavar"],
                             meta["choices"], meta["group"], meta["repeat"]))
    return out


def _base(hint: Any) -> type:
    """``str`` for ``str | None``, ``int`` for ``list[int]`` / ``tuple[int, ...]``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) in (list, tuple):
        hint = typing.get_args(hint)[0]
    return hint
