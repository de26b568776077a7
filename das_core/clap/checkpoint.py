"""Finding CLAP checkpoints of both backends, fingerprinting them, and their provenance for manifests.

``resolve`` turns what a user passes as ``--checkpoint`` into a local file
(a LAION-CLAP ``.pt``) or folder (a saved Hugging Face ``ClapModel``; the
formats: ``das_core.clap.formats``):

* a local path (file or folder);
* an ``s3://`` object or folder prefix, downloaded once into
  ``$DAS_CACHE_DIR/checkpoints`` (default ``~/.cache/das``), keyed by the
  ETag and size of each object;
* one of LAION's published names (``630k-audioset-best``, ...), downloaded
  once from its public address, or a Hugging Face hub id
  (``laion/clap-htsat-unfused``) through the hub's own cache. Without network
  (``HF_HUB_OFFLINE`` defaults to 1 inside das) these fail within seconds and
  say how to pass a local file or folder instead (``das_core.clap.download``).

``fingerprint`` is the sha256 of the file's bytes, or for a folder of the
names and bytes of every file that determines the embeddings (config, weights,
tokenizer, feature extractor): it identifies the model in drift caches and
outputs, so that mismatched artefacts are refused. ``describe`` is the
provenance a manifest records: backend, architecture, random or trained weights.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re

from das_core.clap.download import cache_dir, download_hub, download_published, download_s3
from das_core.clap.formats import (
    HF_RANDOM_WEIGHTS_KEY,
    RANDOM_WEIGHTS_NAME,
    TensorShapes,
    detect,
    hf_architecture,
    hf_model_files,
    is_hf_folder,
    load_state_dict,
    read_hf_config,
)
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
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def published_url(name: str) -> str | None:
    """The public address of a LAION checkpoint given by name (with or without ``.pt``)."""
    filename = PUBLISHED.get(name) or (name if name in PUBLISHED.values() else None)
    return LAION_BASE_URL + filename if filename else None


def resolve(uri: str) -> str:
    """A local file or folder holding the checkpoint ``uri`` names (see module docstring)."""
    local = not is_s3(uri) and os.path.exists(os.path.expanduser(uri))
    url = published_url(uri) if not (is_s3(uri) or local) else None
    if url:
        return download_published(uri, url)
    if storage.is_s3(uri):
        return download_s3(uri)
    path = os.path.abspath(os.path.expanduser(uri))
    if os.path.isdir(path):
        read_hf_config(path)            # refuse a folder that is not a saved ClapModel here, with the reason
        return path
    if not os.path.isfile(path):
        if _HUB_ID.match(uri):
            return download_hub(uri)
        names = ", ".join(PUBLISHED)
        raise CheckpointError(f"checkpoint {uri} does not exist (not a file, a folder, an s3:// object or prefix, "
                              f"a Hugging Face hub id, or a published name: {names})")
    return path


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
    """The checkpoint's name as runs record it: the last part of its path, URI or hub id."""
    return os.path.basename(uri.rstrip("/")) or uri


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


def _hf_logit_scale(folder: str) -> float | None:
    """``exp(logit_scale_a)`` read from the folder's safetensors weights without loading the model."""
    from safetensors import safe_open

    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                if "logit_scale_a" in f.keys():
                    return math.exp(float(f.get_tensor("logit_scale_a").float()))
    return None

