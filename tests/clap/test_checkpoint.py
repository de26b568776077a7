"""Finding, fetching, recognising and describing checkpoints (das_core.clap.checkpoint, download, formats)."""

import os
import subprocess
import sys
import time

import pytest
import torch

from das_core.clap import checkpoint as ckpt
from das_core.clap import formats
from das_core.clap.encoder import ClapEncoder
from das_core.clap.laion import build_model
from das_core.errors import CheckpointError


def test_detects_architectures(tiny_ckpt, roberta_ckpt, fusion_ckpt):
    assert formats.detect(formats.load_state_dict(tiny_ckpt)) == formats.Architecture("HTSAT-tiny", "transformer", None)
    assert formats.detect(formats.load_state_dict(roberta_ckpt)) == formats.Architecture("HTSAT-tiny", "roberta", None)
    assert formats.detect(formats.load_state_dict(fusion_ckpt)) == formats.Architecture("HTSAT-tiny", "transformer",
                                                                                        "aff_2d")


def test_describe_without_torch_reads_the_same(tiny_ckpt, roberta_ckpt, fusion_ckpt, tmp_path):
    """The dry run describes a checkpoint from its pickled shapes, without importing torch."""
    for path in (tiny_ckpt, roberta_ckpt, fusion_ckpt):
        assert ckpt.describe(path, without_torch=True) == ckpt.describe(path)
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    bare = tmp_path / "bare.pt"
    torch.save({k[len("module."):]: torch.nn.Parameter(v) if v.is_floating_point() else v for k, v in state.items()},
               bare)
    assert ckpt.describe(str(bare), without_torch=True) == ckpt.describe(str(bare))
    odd = tmp_path / "odd.pt"                     # a global outside a state dict: torch reads it instead
    torch.save({"state_dict": state, "extra": torch.Size([3])}, odd)
    assert formats.TensorShapes.read(str(odd)) is None
    assert ckpt.describe(str(odd), without_torch=True) == ckpt.describe(str(odd))
    code = (f"import sys; from das_core.clap import checkpoint as c; c.describe({tiny_ckpt!r}, without_torch=True); "
            "assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_detects_htsat_base():
    arch = formats.Architecture("HTSAT-base", "transformer", None)
    state = build_model(arch).state_dict()
    assert formats.detect(state) == arch


def test_s3_checkpoint_is_downloaded_once(bucket, tiny_ckpt, tmp_path, monkeypatch):
    import s3fs

    monkeypatch.setenv("DAS_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"s3://{bucket}/models/tiny.pt"
    s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"]).put(tiny_ckpt, uri)
    first = ckpt.resolve(uri)
    mtime = os.stat(first).st_mtime_ns
    assert ckpt.resolve(uri) == first and os.stat(first).st_mtime_ns == mtime
    assert ckpt.fingerprint(first) == ckpt.fingerprint(tiny_ckpt)
    enc = ClapEncoder.from_checkpoint(uri)
    assert enc.encoder_id == ckpt.fingerprint(tiny_ckpt)


def test_published_name_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("DAS_CACHE_DIR", str(tmp_path))
    start = time.monotonic()
    with pytest.raises(CheckpointError) as err:
        ckpt.resolve("630k-audioset-best")
    assert time.monotonic() - start < 30
    msg = str(err.value)
    assert "https://huggingface.co/lukewys/laion_clap/resolve/main/630k-audioset-best.pt" in msg
    assert "--checkpoint" in msg and "local path" in msg
