"""Checkpoints with random weights and the real LAION-CLAP architecture, in LAION's format.

The only source of weights for the tests, the benchmark and the offline
demo: the network code, the file format and the loading path are exactly
those of a published checkpoint, only the numbers are random. Labels made
with such weights are meaningless, and outputs made with them say so.
"""

from __future__ import annotations

import os

from das_core.checkpoint import RANDOM_WEIGHTS_NAME, Architecture
from das_core.encoder import ROBERTA_BASE_CONFIG, build_model


def write_random_checkpoint(path: str, *, audio: str = "HTSAT-tiny", text: str = "transformer",
                            fusion: bool = False, seed: int = 0, include_position_ids: bool = True) -> str:
    """Write ``{"state_dict": {"module.<key>": tensor}}`` as LAION's training code saves it.

    ``text="roberta"`` builds a roberta-base-shaped tower from its configuration
    (no download); ``include_position_ids`` adds the ``position_ids`` buffer
    that checkpoints saved with transformers < 4.31 carry. ``fusion`` gives
    LAION's ``aff_2d`` fusion layers.
    """
    import torch

    arch = Architecture(audio, text, "aff_2d" if fusion else None)
    torch.manual_seed(seed)
    model = build_model(arch, ROBERTA_BASE_CONFIG if text == "roberta" else None)
    state = {f"module.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    if text == "roberta" and include_position_ids:
        state["module.text_branch.embeddings.position_ids"] = torch.arange(
            ROBERTA_BASE_CONFIG["max_position_embeddings"]).unsqueeze(0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"epoch": 0, "name": RANDOM_WEIGHTS_NAME, "state_dict": state}, tmp)
    os.replace(tmp, path)
    return path
