"""The two checkpoint formats, read and recognised: LAION ``.pt`` state dicts and Hugging Face ``ClapModel`` folders.

* **laion**: a LAION-CLAP ``.pt`` file (``{"state_dict": ...}`` or a bare
  state dict). ``load_state_dict`` reads it with ``weights_only=True`` (a
  checkpoint cannot run code); ``TensorShapes`` reads its keys and shapes
  without importing torch; ``detect`` recognises the audio tower, the text
  tower and fusion from keys and shapes; ``roberta_config`` gives the
  configuration its RoBERTa text tower implies.
* **hf**: a folder holding a saved ``transformers`` ``ClapModel``
  (``config.json`` with ``model_type`` ``"clap"``, weights, tokenizer and
  feature-extractor files): ``read_hf_config``, ``hf_model_files`` (the files
  that determine its embeddings), ``hf_architecture``.

Both describe themselves as an ``Architecture``.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from das_core.errors import CheckpointError

# The "name" recorded in checkpoints made by das_core.clap.random_weights (in config.json for HF folders).
RANDOM_WEIGHTS_NAME = "das-random-weights"
HF_RANDOM_WEIGHTS_KEY = "das_weights"
# The files of a saved ClapModel that determine its embeddings: fingerprinted, fetched from s3 and the hub.
HF_MODEL_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "*.safetensors",
                  "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
                  "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                  "added_tokens.json")


def is_hf_folder(local_path: str) -> bool:
    """Whether ``local_path`` (as ``checkpoint.resolve`` returns it) is a Hugging Face ``ClapModel`` folder."""
    return os.path.isdir(local_path)


def read_hf_config(folder: str) -> dict:
    """The ``config.json`` of a saved ``ClapModel``; anything else is refused with what was found."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"folder {folder} holds no config.json: a Hugging Face CLAP checkpoint is a folder "
                              f"saved by ClapModel.save_pretrained (config.json, model.safetensors, tokenizer "
                              f"and feature-extractor files)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("model_type") != "clap":
        kind = config.get("model_type") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{path} describes a {kind!r} model, not a CLAP model (model_type 'clap')")
    return config


def hf_model_files(folder: str) -> list[str]:
    """Names of the files in ``folder`` that determine a ``ClapModel``'s embeddings, sorted."""
    import fnmatch

    return sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name))
                  and any(fnmatch.fnmatch(name, pat) for pat in HF_MODEL_FILES))


def load_state_dict(local_path: str) -> dict:
    """The model tensors of a LAION checkpoint (``{"state_dict": {"module.x": ...}}``) or a bare state dict.

    Loaded with ``weights_only=True``: a checkpoint cannot run code.
    """
    import torch

    with open(local_path, "rb") as f:
        head = f.read(2)
    if not (zipfile.is_zipfile(local_path) or head[:1] == b"\x80"):
        raise CheckpointError(f"{local_path} is not a readable PyTorch checkpoint (neither a torch zip archive "
                              f"nor a pickle)")
    try:
        # memory-mapped: the tensors are read from the file as the model copies them, never held twice
        obj = torch.load(local_path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(local_path))
    except pickle.UnpicklingError as exc:
        first_line = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{local_path} holds objects other than tensors and plain values; "
                              f"das refuses to unpickle code from a checkpoint ({first_line})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{local_path} is not a readable PyTorch checkpoint ({exc})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{local_path} holds no state dict (found {type(obj).__name__})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


class _Tensor:
    """A tensor of a torch zip checkpoint as ``TensorShapes`` reads it: its shape, and where its values are."""

    def __init__(self, storage: tuple[str, str], offset: int, size: tuple[int, ...]):
        self.storage, self.offset, self.shape = storage, offset, tuple(size)


# torch storage classes -> numpy dtype of their values (what a scalar such as logit_scale_a is read as)
_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
                   "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "?", "BFloat16Storage": "bf16"}


class _ShapeUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's ``data.pkl`` into dicts of ``_Tensor``: only the names a state dict uses are
    known, every other global is refused, so nothing but these stand-ins can be built (no code runs)."""

    def find_class(self, module: str, name: str):
        """The stand-in for a global a plain state dict names; ``UnpicklingError`` for any other."""
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, *_: _Tensor(storage, offset, size)
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *_: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a plain state dict")

    def persistent_load(self, pid):
        """A tensor storage reference, kept as ``(storage type, key)``: where its values are in the archive."""
        _, storage_type, key, *_ = pid                # ("storage", type, key, location, numel)
        return storage_type, str(key)


@dataclass
class TensorShapes:
    """A torch zip checkpoint read without torch: its top-level object, tensors as ``_Tensor`` (shapes only)."""

    path: str
    prefix: str                 # the archive's folder: <prefix>data.pkl, <prefix>data/<storage key>
    obj: object

    @classmethod
    def read(cls, path: str) -> TensorShapes | None:
        """None where it cannot be read so (not a zip, or globals other than a state dict's): use torch."""
        try:
            with zipfile.ZipFile(path) as z:
                pkl = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if pkl is None:
                    return None
                obj = _ShapeUnpickler(io.BytesIO(z.read(pkl))).load()
        except (zipfile.BadZipFile, pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError):
            return None
        return cls(path, pkl[: -len("data.pkl")], obj)

    def scalar(self, tensor: _Tensor) -> float | None:
        """The first value of ``tensor``, read from the archive; None for bfloat16 (numpy has no such type)."""
        dtype = _STORAGE_DTYPES[tensor.storage[0]]
        if dtype == "bf16":
            return None
        size = np.dtype(dtype).itemsize
        with zipfile.ZipFile(self.path) as z, z.open(f"{self.prefix}data/{tensor.storage[1]}") as f:
            f.seek(tensor.offset * size)
            return float(np.frombuffer(f.read(size), dtype=dtype)[0])

    def describe(self) -> dict:
        """``checkpoint.describe``'s answer, from the shapes (``detect`` reads only keys and shapes)."""
        obj = self.obj
        name = obj.get("name") if isinstance(obj, dict) else None
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(state, dict) or not state or not all(isinstance(k, str) for k in state):
            raise CheckpointError(f"{self.path} holds no state dict (found {type(obj).__name__})")
        state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
        scale = state.get("logit_scale_a")
        value = self.scalar(scale) if isinstance(scale, _Tensor) else None
        return {"backend": "laion", "architecture": detect(state).describe(),
                "weights": "random" if name == RANDOM_WEIGHTS_NAME else "trained",
                "logit_scale": float(np.float32(math.exp(value))) if value is not None else None}


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint's network is: audio tower, text tower, fusion, and which backend runs it."""

    audio: str                  # laion-clap amodel name: HTSAT-tiny | HTSAT-base | HTSAT-large (or HTSAT(...) for hf)
    text: str                   # laion-clap tmodel name: roberta | transformer
    fusion_type: str | None     # None, or laion-clap's fusion type (aff_2d for LAION's fusion checkpoints)
    backend: str = "laion"      # laion: laion-clap's CLAP module; hf: transformers' ClapModel

    @property
    def enable_fusion(self) -> bool:
        """Whether the audio tower has fusion layers."""
        return self.fusion_type is not None

    def describe(self) -> str:
        """One line for manifests and summaries, e.g. "HTSAT-tiny audio tower, roberta text tower"."""
        return (f"{self.audio} audio tower, {self.text} text tower"
                + (f", fusion ({self.fusion_type})" if self.fusion_type else "")
                + (", Hugging Face ClapModel" if self.backend == "hf" else ""))


_HTSAT_WIDTH = {96: "HTSAT-tiny", 128: "HTSAT-base", 256: "HTSAT-large"}
_HTSAT_DEPTHS = {"HTSAT-tiny": [2, 2, 6, 2], "HTSAT-base": [2, 2, 12, 2], "HTSAT-large": [2, 2, 12, 2]}


def hf_architecture(config: dict) -> Architecture:
    """The architecture a ``ClapModel`` config.json describes (HTSAT sizes named as laion-clap names them)."""
    audio = config.get("audio_config") or {}
    width = int(audio.get("patch_embeds_hidden_size", 96))
    depths = list(audio.get("depths", [2, 2, 6, 2]))
    name = _HTSAT_WIDTH.get(width)
    if name is None or _HTSAT_DEPTHS[name] != depths:
        name = f"HTSAT(width {width}, depths {'-'.join(str(d) for d in depths)})"
    # transformers' fused HTSAT is LAION's aff_2d (its AFF block on the 2-d patch embedding)
    return Architecture(name, "roberta", "aff_2d" if audio.get("enable_fusion") else None, backend="hf")


def detect(state: dict) -> Architecture:
    """Recognise the audio tower, the text tower and fusion from state-dict keys and shapes."""
    keys = set(state)

    def refuse(why: str) -> CheckpointError:
        """The refusal for ``why``, listing the key groups found, so that a user sees what the file holds."""
        prefixes = sorted({".".join(k.split(".")[:2]) for k in keys})
        shown = ", ".join(prefixes[:40]) + (" ..." if len(prefixes) > 40 else "")
        return CheckpointError(f"not a LAION-CLAP checkpoint das can load: {why}. Detected key groups: {shown}")

    patch = state.get("audio_branch.patch_embed.proj.weight")
    if patch is None:
        if any(k.startswith("audio_branch.conv_block1") for k in keys):
            raise refuse("PANN audio towers are not supported (HTSAT only)")
        raise refuse("no HTSAT audio tower (audio_branch.patch_embed.proj.weight)")
    audio = _HTSAT_WIDTH.get(int(patch.shape[0]))
    if audio is None:
        raise refuse(f"HTSAT patch embedding of width {int(patch.shape[0])} matches no known HTSAT size")
    depth3 = len({k.split(".")[4] for k in keys if k.startswith("audio_branch.layers.2.blocks.")})
    expected_depth = 6 if audio == "HTSAT-tiny" else 12
    if depth3 != expected_depth:
        raise refuse(f"{audio} should have {expected_depth} blocks in stage 3, found {depth3}")

    if "text_branch.embeddings.word_embeddings.weight" in keys:
        if "text_branch.embeddings.token_type_embeddings.weight" in keys and \
                int(state["text_branch.embeddings.token_type_embeddings.weight"].shape[0]) != 1:
            raise refuse("BERT text towers are not supported (RoBERTa or transformer)")
        text = "roberta"
    elif "token_embedding.weight" in keys and any(k.startswith("text_branch.resblocks.") for k in keys):
        text = "transformer"
    elif any(k.startswith("text_branch.shared") for k in keys):
        raise refuse("BART text towers are not supported (RoBERTa or transformer)")
    else:
        raise refuse("no RoBERTa (text_branch.embeddings.*) or transformer (text_branch.resblocks.*) text tower")

    fusion = None
    if "audio_branch.patch_embed.mel_conv2d.weight" in keys:
        dim = "2d"
    elif any(k.startswith("audio_branch.mel_conv1d.") for k in keys):
        dim = "1d"
    else:
        dim = None
    if dim:
        prefix = "audio_branch.patch_embed.fusion_model." if dim == "2d" else "audio_branch.fusion_model."
        names = {k[len(prefix):].split(".")[0] for k in keys if k.startswith(prefix)}
        kind = "iaff" if "local_att2" in names else "aff" if "local_att" in names else "daf"
        fusion = f"{kind}_{dim}"
    for required in ("audio_projection.0.weight", "text_projection.0.weight", "logit_scale_a"):
        if required not in keys:
            raise refuse(f"missing {required}")
    return Architecture(audio, text, fusion)


_LAYER = re.compile(r"^text_branch\.encoder\.layer\.(\d+)\.")


def roberta_config(state: dict) -> dict:
    """The RoBERTa configuration implied by a checkpoint's text tower (roberta-base's constants otherwise)."""
    words = state["text_branch.embeddings.word_embeddings.weight"]
    hidden = int(words.shape[1])
    layers = 1 + max(int(m.group(1)) for k in state if (m := _LAYER.match(k)))
    return {
        "vocab_size": int(words.shape[0]),
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "intermediate_size": int(state["text_branch.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        "max_position_embeddings": int(state["text_branch.embeddings.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(state["text_branch.embeddings.token_type_embeddings.weight"].shape[0]),
        "layer_norm_eps": 1e-5,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
    }
