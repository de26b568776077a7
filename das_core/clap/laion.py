"""The LAION-CLAP backend: laion-clap's own ``CLAP`` module, loaded offline-safely from a ``.pt`` checkpoint.

* **Same numbers as laion-clap.** The network is laion-clap's own ``CLAP``
  module, built from its own model configs (``build_model``); the weights
  load strictly (``load_clap``), except for RoBERTa's ``position_ids`` buffer,
  which checkpoints may or may not carry.
* **No network, no hang.** Importing ``laion_clap`` loads three Hugging Face
  tokenizers at import time, which blocks for minutes offline or (with
  transformers 5) silently yields a 5-token RoBERTa tokenizer. das never
  imports the ``laion_clap`` package: ``laion()`` loads laion-clap's
  ``clap_module`` sub-package directly, within ``das_core.clap.offline.hf_offline``
  (``HF_HUB_OFFLINE=1`` unless the user has set it, for that block only:
  importing das changes no global state), and ``build_model`` builds a
  RoBERTa text tower from the configuration its checkpoint implies (never
  downloading ``roberta-base`` weights).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import os
import sys
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from das_core.clap import checkpoint as ckpt
from das_core.clap.formats import Architecture, detect, is_hf_folder, load_state_dict, roberta_config
from das_core.clap.offline import hf_offline
from das_core.clap.tokenizer import ROBERTA_VOCAB_SIZE
from das_core.errors import CheckpointError, EncoderError

ROBERTA_BASE_CONFIG = {
    "vocab_size": ROBERTA_VOCAB_SIZE, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-5,
    "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu",
}


@functools.cache
def laion() -> object:
    """laion-clap's ``clap_module`` package, loaded without running ``laion_clap/__init__``."""
    with hf_offline():
        return _load_clap_module()


def _load_clap_module() -> object:
    if "clap_module" in sys.modules:        # laion_clap itself imports it under this top-level name
        return sys.modules["clap_module"]
    spec = importlib.util.find_spec("laion_clap")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderError("laion-clap is not installed (pip install laion-clap==1.1.7)")
    path = os.path.join(spec.submodule_search_locations[0], "clap_module")
    mspec = importlib.util.spec_from_file_location("clap_module", os.path.join(path, "__init__.py"),
                                                   submodule_search_locations=[path])
    module = importlib.util.module_from_spec(mspec)
    sys.modules["clap_module"] = module
    try:
        mspec.loader.exec_module(module)
    except BaseException:
        del sys.modules["clap_module"]
        raise
    return module


_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def _roberta_from_config(config: dict):
    """Within this block, laion-clap's ``RobertaModel.from_pretrained`` builds from ``config``, offline."""
    from transformers import RobertaConfig, RobertaModel

    class ConfiguredRoberta:
        """Stands in for ``RobertaModel`` where laion-clap builds its text tower."""

        @staticmethod
        def from_pretrained(*_args, **_kwargs):
            """A RoBERTa of ``config`` with fresh weights (the checkpoint's replace them), whatever is asked."""
            return RobertaModel(RobertaConfig(**config))

    module = laion().model
    original = module.RobertaModel
    module.RobertaModel = ConfiguredRoberta
    try:
        yield
    finally:
        module.RobertaModel = original


def build_model(arch: Architecture, roberta_config: dict | None = None):
    """An (untrained) laion-clap ``CLAP`` module of the given architecture."""
    import torch

    cm = laion()
    cfg = copy.deepcopy(cm.factory._MODEL_CONFIGS[arch.audio])
    cfg["text_cfg"]["model_type"] = arch.text
    cfg["enable_fusion"] = arch.enable_fusion
    cfg["fusion_type"] = arch.fusion_type or "None"
    with _BUILD_LOCK, _roberta_from_config(roberta_config or ROBERTA_BASE_CONFIG), torch.device("cpu"):
        model = cm.model.CLAP(**cfg)
    return model.eval()


def htk_mel_filters(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int):
    """Triangular HTK-scale mel filters without normalisation (torchaudio's ``melscale_fbanks`` defaults)."""
    import torch

    def hz_to_mel(f):
        """HTK's mel scale."""
        return 2595.0 * np.log10(1.0 + f / 700.0)

    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_pts = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2)
    f_pts = 700.0 * (10 ** (m_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0)


@dataclass
class LoadedClap:
    """A LAION checkpoint loaded by ``load_clap``: the ``CLAP`` module (eval mode, CPU), its architecture, the
    local file it came from, its fingerprint, and what ``before_build`` returned."""

    model: object
    arch: Architecture
    local_path: str
    encoder_id: str
    tokenizer: object = None          # what before_build returned: the RoBERTa tokenizer, or None


@contextlib.contextmanager
def quiet_meshgrid():
    """laion-clap's HTSAT calls ``torch.meshgrid`` without ``indexing=`` (when built and when run): a torch
    warning that no user of das can act on, silenced for the block only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)
        yield


def load_clap(uri: str, before_build=None) -> LoadedClap:
    """Resolve, read, recognise and load a checkpoint into laion-clap's ``CLAP`` (eval mode, CPU).

    ``before_build(arch)`` runs once the architecture is known and before the
    (slow) model construction; its result (the tokenizer) is returned as ``tokenizer``. The
    encoder uses it to refuse a missing tokenizer early.
    """
    local = ckpt.resolve(uri)
    if is_hf_folder(local):
        raise CheckpointError(f"{uri} is a Hugging Face ClapModel folder, not a LAION-CLAP .pt: load it "
                              f"with ClapEncoder.from_checkpoint")
    state = load_state_dict(local)
    arch = detect(state)
    tokenizer = before_build(arch) if before_build else None
    with quiet_meshgrid():
        model = build_model(arch, roberta_config(state) if arch.text == "roberta" else None)
    _load_weights(model, state, local)
    return LoadedClap(model, arch, local, ckpt.fingerprint(local), tokenizer)


_POSITION_IDS = "text_branch.embeddings.position_ids"


def _load_weights(model, state: dict, source: str) -> None:
    """Load ``state`` strictly, except for RoBERTa's ``position_ids`` buffer, which may or may not be saved."""
    own = model.state_dict()
    state = dict(state)
    if _POSITION_IDS in state and _POSITION_IDS not in own:
        del state[_POSITION_IDS]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != _POSITION_IDS]
    if missing or unexpected:
        def show(keys):
            """At most 8 of ``keys``, sorted."""
            return ", ".join(sorted(keys)[:8]) + (" ..." if len(keys) > 8 else "")
        raise CheckpointError(f"{source} does not fit the detected architecture: "
                              f"missing {len(missing)} key(s) [{show(missing)}], "
                              f"unexpected {len(unexpected)} key(s) [{show(unexpected)}]")
