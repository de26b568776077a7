"""Finding, fingerprinting, reading and recognising LAION-CLAP checkpoints.

``resolve`` turns what a user passes as ``--checkpoint`` into a local file:

* a local path;
* an ``s3://`` object, downloaded once into ``$DAS_CACHE_DIR/checkpoints``
  (default ``~/.cache/das``), keyed by the object's ETag and size;
* one of LAION's published names (``630k-audioset-best``, ...), downloaded
  once from its public address; without network this fails within seconds
  and says how to pass a local file instead.

``fingerprint`` is the sha256 of the file's bytes: it identifies the model in
drift caches and outputs, so that mismatched artefacts are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

from das_core import storage

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
# The "name" recorded in checkpoints made by das_core.random_checkpoint.
RANDOM_WEIGHTS_NAME = "das-random-weights"


class CheckpointError(Exception):
    """A checkpoint that cannot be found, fetched, read or recognised."""


def cache_dir() -> str:
    return os.path.expanduser(os.environ.get("DAS_CACHE_DIR") or "~/.cache/das")


def published_url(name: str) -> str | None:
    """The public address of a LAION checkpoint given by name (with or without ``.pt``)."""
    filename = PUBLISHED.get(name) or (name if name in PUBLISHED.values() else None)
    return LAION_BASE_URL + filename if filename else None


def resolve(uri: str) -> str:
    """A local path holding the checkpoint ``uri`` names (see module docstring)."""
    url = published_url(uri) if not (storage.is_s3(uri) or os.path.exists(uri)) else None
    if url:
        return _download_published(uri, url)
    if storage.is_s3(uri):
        return _download_s3(uri)
    path = os.path.abspath(os.path.expanduser(uri))
    if not os.path.isfile(path):
        names = ", ".join(PUBLISHED)
        raise CheckpointError(f"checkpoint {uri} does not exist (not a file, an s3:// object, "
                              f"or a published name: {names})")
    return path


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


def _download_s3(uri: str) -> str:
    fs, path = storage.filesystem(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {uri} does not exist") from None
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    key = hashlib.sha256(f"{uri}|{etag}|{info.get('size')}".encode()).hexdigest()[:24]
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


def fingerprint(local_path: str) -> str:
    """``sha256:<hex>`` of the file's bytes, memoised by (path, size, mtime)."""
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
    import pickle
    import zipfile

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


def describe(local_path: str) -> dict:
    """Provenance for manifests: architecture and whether the weights are das's random test weights.

    Memory-maps the file, so it is cheap even for large checkpoints.
    """
    import torch

    try:
        obj = torch.load(local_path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:            # legacy (non-zip) format cannot be memory-mapped
        obj = torch.load(local_path, map_location="cpu", weights_only=True)
    name = obj.get("name") if isinstance(obj, dict) else None
    state = load_state_dict(local_path) if not (isinstance(obj, dict) and "state_dict" in obj) else {
        (k[len("module."):] if k.startswith("module.") else k): v for k, v in obj["state_dict"].items()}
    return {"architecture": detect(state).describe(),
            "weights": "random" if name == RANDOM_WEIGHTS_NAME else "trained"}


@dataclass(frozen=True)
class Architecture:
    audio: str                  # laion-clap amodel name: HTSAT-tiny | HTSAT-base | HTSAT-large
    text: str                   # laion-clap tmodel name: roberta | transformer
    fusion_type: str | None     # None, or laion-clap's fusion type (aff_2d for LAION's fusion checkpoints)

    @property
    def enable_fusion(self) -> bool:
        return self.fusion_type is not None

    def describe(self) -> str:
        return f"{self.audio} audio tower, {self.text} text tower" + (
            f", fusion ({self.fusion_type})" if self.fusion_type else "")


_HTSAT_WIDTH = {96: "HTSAT-tiny", 128: "HTSAT-base", 256: "HTSAT-large"}


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
