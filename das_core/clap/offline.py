"""Offline Hugging Face settings, applied only while das itself loads models, tokenizers or hub files.

Importing any das_core module changes no environment variable and no
``huggingface_hub`` constant (a notebook's later downloads keep working).
``hf_offline()`` sets them for the duration of a ``with`` block and then puts
back exactly what was there. A value the user set (``HF_HUB_OFFLINE=0`` to
allow downloads) is kept as it is.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
_TRUE = ("1", "ON", "YES", "TRUE")
# Re-entrant: a load may nest another (the encoder loads a tokenizer inside a model load). Held for the
# whole block, so two threads never interleave their save / restore of the process-wide environment.
_LOCK = threading.RLock()


def offline_requested() -> bool:
    """Whether Hugging Face calls must stay local: ``HF_HUB_OFFLINE`` unless the user set it otherwise."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or _DEFAULTS["HF_HUB_OFFLINE"]
    return value.upper() in _TRUE


@contextlib.contextmanager
def hf_offline() -> Iterator[bool]:
    """Within this block Hugging Face never touches the network unless the user asked for it.

    Yields whether the block is offline. ``huggingface_hub`` reads its
    environment once, at import, into ``huggingface_hub.constants``: it is
    imported first (with the user's environment) and its constants are set
    and restored alongside the variables.
    """
    from huggingface_hub import constants

    with _LOCK:
        saved_env = {key: os.environ.get(key) for key in _DEFAULTS}
        saved_constants = {name: getattr(constants, name) for name in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")}
        offline = offline_requested()
        try:
            for key, value in _DEFAULTS.items():
                if key not in os.environ and not (key == "HF_HUB_OFFLINE" and "TRANSFORMERS_OFFLINE" in os.environ):
                    os.environ[key] = value
            constants.HF_HUB_OFFLINE = offline
            constants.HF_HUB_DISABLE_TELEMETRY = saved_constants["HF_HUB_DISABLE_TELEMETRY"] or \
                os.environ["HF_HUB_DISABLE_TELEMETRY"].upper() in _TRUE
            yield offline
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            for name, value in saved_constants.items():
                setattr(constants, name, value)
