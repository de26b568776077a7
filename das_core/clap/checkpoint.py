"""Finding, fingerprinting, reading and recognising CLAP checkpoints of both backends.

Two formats, told apart by what is there:

* **laion**: a LAION-CLAP ``.pt`` file (``{"state_dict": ...}`` or a bare state dict);
* **hf**: a folder holding a saved ``transformers`` ``ClapModel``
  (``config.json`` with ``model_type`` ``"clap"``, weights, tokenizer and
  feature-extractor files).

``resolve`` turns what a user passes as ``--checkpoint`` into a local file or folder:

* a local path (file or folder);
* an ``s3://`` object or folder prefix, downloaded once into
  ``$DAS_CACHE_DIR/checkpoints`` (default ``~/.cache/das``), keyed by the
  ETag and size of each object;
* one of LAION's published names (``630k-audioset-best``, ...), downloaded
  once from its public address, or a Hugging Face hub id
  (``laion/clap-htsat-unfused``) through the hub's own cache. Without network
  (``HF_HUB_OFFLINE`` defaults to 1 inside das) these fail within seconds and
  say how to pass a local file or folder instead.

``fingerprint`` is the sha256 of the file's bytes, or for a folder of the
names and bytes of every file that determines the embeddings (config, weights,
tokenizer, feature extractor): it identifies the model in drift caches and
outputs, so that mismatched artefacts are refused.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import math
import os
import pickle
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass

import numpy as np

from das_core.clap.offline import hf_offline
from das_core.errors import CheckpointError
from das_core.io import storage
from das_core.io.s3 import is_s3

LAION_BASE_URL = "https://huggingface.co/lukewys/laion_clap/resolve/main/"
PUBLISHED = {
    "630k-best": "630k-best.pt",
    "630k-audioset-best": "630k-audioset-best.pt",
    "630k-fusion-best": "630k-fusion-best.pt",
    "630k-audioset-fusion-best": "630k-audioset-fusion-best.pt",
    "music_audioset": "music_audioset_epoch_15_esc_90.14.pt",
    "music_speech": "music_speech_epoch_15_esc_89.25.pt",
    "music_speech_audioset": "music_speech_audioset_epoch_15_esc_89.98.pt",
}
DOWNLOAD_TIMEOUT_S = 10.0
# The "name" recorded in checkpoints made by das_core.clap.random_weights (in config.json for HF folders).
RANDOM_WEIGHTS_NAME = "das-random-weights"
HF_RANDOM_WEIGHTS_KEY = "das_weights"
# The files of a saved ClapModel that determine its embeddings: fingerprinted, fetched from s3 and the hub.
HF_MODEL_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "*.safetensors",
                  "model.safetensors.index.json", "pytorch_model*.bin", "pytorch_model.bin.index.json",
                  "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                  "added_tokens.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get("DAS_CACHE_DIR") or "~/.cache/das")


def published_url(name: str) -> str | None:
    """The public address of a LAION checkpoint given by name (with or without ``.pt``)."""
    filename = PUBLISHED.get(name) or (name if name in PUBLISHED.values() else None)
    return LAION_BASE_URL + filename if filename else None


def resolve(uri: str) -> str:
    """A local file or folder holding the checkpoint ``uri`` names (see module docstring)."""
    local = not is_s3(uri) and os.path.exists(os.path.expanduser(uri))
    url = published_url(uri) if not (is_s3(uri) or local) else None
    if url:
        return _download_published(uri, url)
    if is_s3(uri):
        return _download_s3(uri)
    path = os.path.abspath(os.path.expanduser(uri))
    if os.path.isdir(path):
        read_hf_config(path)            # refuse a folder that is not a saved ClapModel here, with the reason
        return path
    if not os.path.isfile(path):
        if _HUB_ID.match(uri):
            return _download_hub(uri)
        names = ", ".join(PUBLISHED)
        raise CheckpointError(f"checkpoint {uri} does not exist (not a file, a folder, an s3:// object or prefix, "
                              f"a Hugging Face hub id, or a published name: {names})")
    return path


def is_hf_folder(local_path: str) -> bool:
    """Whether ``local_path`` (as ``resolve`` returns it) is a Hugging Face ``ClapModel`` folder."""
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


def _download_hub(repo_id: str) -> str:
    """The hub's snapshot folder of ``repo_id`` (its files that matter), local-only unless ``HF_HUB_OFFLINE=0``."""
    from huggingface_hub import snapshot_download

    with hf_offline() as offline:
        try:
            folder = snapshot_download(repo_id, allow_patterns=list(HF_MODEL_FILES), local_files_only=offline,
                                       etag_timeout=DOWNLOAD_TIMEOUT_S)
        except Exception as exc:        # the hub raises many kinds (offline, HTTP, timeouts, missing repo)
            why = "offline (HF_HUB_OFFLINE=1, das's default) and not in the Hugging Face cache" if offline else \
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            raise CheckpointError(
                f"checkpoint {repo_id!r} is no local file or folder, and as a Hugging Face hub id it could not be "
                f"fetched ({why}). Pass a local folder instead: on a "
                f"machine with network run `hf download {repo_id} --local-dir /models/"
                f"{repo_id.split('/')[-1]}`, copy that folder here (or to s3://) and use --checkpoint "
                f"/models/{repo_id.split('/')[-1]}; or set HF_HUB_OFFLINE=0 where the hub is reachable.") from None
    read_hf_config(folder)
    return folder


def _download_published(name: str, url: str) -> str:
    target = os.path.join(cache_dir(), "checkpoints", "laion", url.rsplit("/", 1)[1])
    if os.path.isfile(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=os.path.dirname(target))
    os.fchmod(fd, storage.default_file_mode())      # a shared cache: readable as the umask allows
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            shutil.copyfileobj(resp, out, length=8 * 2**20)
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CheckpointError(
            f"could not download checkpoint {name!r} from {url} ({reason}). Without network access, "
            f"fetch that file on another machine and pass its local path, e.g. "
            f"--checkpoint /models/{url.rsplit('/', 1)[1]} (or an s3:// URI).") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _etag(info: dict) -> str:
    return str(info.get("ETag") or info.get("etag") or "").strip('"')


def _download_s3(uri: str) -> str:
    fs, path = storage.filesystem(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {uri} does not exist") from None
    if info.get("type") == "directory":
        return _download_s3_folder(uri, fs, path.rstrip("/"))
    key = hashlib.sha256(f"{uri}|{_etag(info)}|{info.get('size')}".encode()).hexdigest()[:24]
    target = os.path.join(cache_dir(), "checkpoints", "s3", key, os.path.basename(path))
    if os.path.isfile(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=os.path.dirname(target))
    os.fchmod(fd, storage.default_file_mode())
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _download_s3_folder(uri: str, fs, path: str) -> str:
    """An s3 ``ClapModel`` folder, fetched once: the cache key covers every fetched object's ETag and size."""
    import fnmatch

    listing = fs.find(path, detail=True)
    wanted = {p: i for p, i in sorted(listing.items())
              if "/" not in p[len(path) + 1:] and any(fnmatch.fnmatch(p.rsplit("/", 1)[1], pat)
                                                     for pat in HF_MODEL_FILES)}
    names = {p.rsplit("/", 1)[1] for p in wanted}
    if "config.json" not in names:
        raise CheckpointError(f"checkpoint {uri} is an s3 prefix without config.json: neither a .pt object nor "
                              f"a saved Hugging Face ClapModel folder")
    objects = "|".join(f"{p}:{_etag(i)}:{i.get('size')}" for p, i in wanted.items())
    key = hashlib.sha256(f"{uri.rstrip('/')}|{objects}".encode()).hexdigest()[:24]
    target = os.path.join(cache_dir(), "checkpoints", "s3", key, os.path.basename(path) or "model")
    if os.path.isdir(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".download-", dir=os.path.dirname(target))
    try:
        for p in wanted:
            fs.get_file(p, os.path.join(tmp, p.rsplit("/", 1)[1]))
        os.replace(tmp, target)         # atomic: a folder in the cache is always complete
    except OSError:
        if not os.path.isdir(target):   # another process may have won the race with the same files
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    read_hf_config(target)
    return target


def hf_model_files(folder: str) -> list[str]:
    """Names of the files in ``folder`` that determine a ``ClapModel``'s embeddings, sorted."""
    import fnmatch

    return sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name))
                  and any(fnmatch.fnmatch(name, pat) for pat in HF_MODEL_FILES))


def fingerprint(local_path: str) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's model files (names and bytes); memoised per file."""
    if os.path.isdir(local_path):
        # the digests of each file, named, in order: any change of weights, config, tokenizer or feature
        # extractor changes the fingerprint, and so does a file renamed or added
        listing = [f"{name}\t{fingerprint(os.path.join(local_path, name))}" for name in hf_model_files(local_path)]
        return "sha256:" + hashlib.sha256("\n".join(["das-hf-clap-folder", *listing]).encode()).hexdigest()
    st = os.stat(local_path)
    key = f"{os.path.realpath(local_path)}|{st.st_size}|{st.st_mtime_ns}"
    memo = os.path.join(cache_dir(), "fingerprints", hashlib.sha1(key.encode()).hexdigest() + ".json")
    try:
        with open(memo) as f:
            saved = json.load(f)
        if saved.get("key") == key:
            return saved["fingerprint"]
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    with open(local_path, "rb") as f:
        for chunk in iter(lambda: f.read(16 * 2**20), b""):
            h.update(chunk)
    value = "sha256:" + h.hexdigest()
    try:
        storage.write_bytes_atomic(memo, json.dumps({"key": key, "fingerprint": value}).encode())
    except OSError:
        pass
    return value


def display_name(uri: str) -> str:
    return os.path.basename(uri.rstrip("/")) or uri


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


def describe(local_path: str, without_torch: bool = False) -> dict:
    """Provenance for manifests: backend, architecture and whether the weights are das's random test weights.

    Memory-maps the file (reads only config.json of a folder), so it is cheap even for large checkpoints.
    ``without_torch`` (the dry run): a torch zip checkpoint is read by ``TensorShapes`` instead, without
    importing torch (about 0.5 GiB of memory); ``logit_scale`` is then exp computed in float64, rounded to float32.
    """
    if is_hf_folder(local_path):
        config = read_hf_config(local_path)
        return {"backend": "hf", "architecture": hf_architecture(config).describe(),
                "weights": "random" if config.get(HF_RANDOM_WEIGHTS_KEY) == "random" else "trained",
                "logit_scale": _hf_logit_scale(local_path)}
    if without_torch:
        shapes = TensorShapes.read(local_path)
        if shapes is not None:
            return shapes.describe()
    import torch

    try:
        obj = torch.load(local_path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:            # legacy (non-zip) format cannot be memory-mapped
        obj = torch.load(local_path, map_location="cpu", weights_only=True)
    name = obj.get("name") if isinstance(obj, dict) else None
    state = load_state_dict(local_path) if not (isinstance(obj, dict) and "state_dict" in obj) else {
        (k[len("module."):] if k.startswith("module.") else k): v for k, v in obj["state_dict"].items()}
    scale = state.get("logit_scale_a")
    return {"backend": "laion", "architecture": detect(state).describe(),
            "weights": "random" if name == RANDOM_WEIGHTS_NAME else "trained",
            "logit_scale": float(scale.float().exp()) if scale is not None else None}


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
        dtype = _STORAGE_DTYPES[tensor.storage[0]]
        if dtype == "bf16":
            return None
        size = np.dtype(dtype).itemsize
        with zipfile.ZipFile(self.path) as z, z.open(f"{self.prefix}data/{tensor.storage[1]}") as f:
            f.seek(tensor.offset * size)
            return float(np.frombuffer(f.read(size), dtype=dtype)[0])

    def describe(self) -> dict:
        """``describe``'s answer, from the shapes (``detect`` reads only keys and shapes)."""
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


def _hf_logit_scale(folder: str) -> float | None:
    """``exp(logit_scale_a)`` read from the folder's safetensors weights without loading the model."""
    from safetensors import safe_open

    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                if "logit_scale_a" in f.keys():
                    return math.exp(float(f.get_tensor("logit_scale_a").float()))
    return None


@dataclass(frozen=True)
class Architecture:
    audio: str                  # laion-clap amodel name: HTSAT-tiny | HTSAT-base | HTSAT-large (or HTSAT(...) for hf)
    text: str                   # laion-clap tmodel name: roberta | transformer
    fusion_type: str | None     # None, or laion-clap's fusion type (aff_2d for LAION's fusion checkpoints)
    backend: str = "laion"      # laion: laion-clap's CLAP module; hf: transformers' ClapModel

    @property
    def enable_fusion(self) -> bool:
        return self.fusion_type is not None

    def describe(self) -> str:
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
