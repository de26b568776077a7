"""The encoder against laion-clap's own code path, on test-made checkpoints."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import sine

from das_core.audio.decode import SAMPLE_RATE, WINDOW_SAMPLES, int16_round_trip, repeat_pad
from das_core.clap import checkpoint as ckpt
from das_core.clap.encoder import ClapEncoder, build_model, laion, load_clap
from das_core.clap.random_weights import write_random_checkpoint
from das_core.errors import CheckpointError, EncoderError, TokenizerError


@pytest.fixture(scope="session")
def roberta_ckpt(ckpt_dir):
    return write_random_checkpoint(str(ckpt_dir / "tiny-roberta.pt"), text="roberta", seed=2)


@pytest.fixture(scope="session")
def fusion_ckpt(ckpt_dir):
    return write_random_checkpoint(str(ckpt_dir / "tiny-fusion.pt"), fusion=True, seed=3)


def clips(n=3, seconds=10.0):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x = sine(200 * (i + 1), seconds, SAMPLE_RATE, amp=0.3) + 0.05 * rng.standard_normal(int(seconds * SAMPLE_RATE))
        out.append(x.astype(np.float32))
    return np.stack(out)


def max_cosine_distance(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.max(1.0 - np.sum(a * b, axis=1)))


@pytest.fixture(scope="session")
def laion_reference(tiny_ckpt):
    """laion-clap's create_model + its own preprocessing and embedding functions."""
    from das_core.clap.offline import hf_offline

    with hf_offline():      # laion_clap loads tokenizers at import: local-only, or it hangs retrying the network
        import laion_clap  # noqa: F401
        from laion_clap.training.data import get_audio_features

    model, cfg = laion().create_model("HTSAT-tiny", "transformer", precision="fp32", device="cpu")
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    # laion's load_ckpt deletes text_branch.embeddings.position_ids unconditionally and fails on
    # checkpoints without it, so load the same tensors directly.
    model.load_state_dict({k[len("module."):]: v for k, v in state.items()})
    model.eval()

    def embed_audio(waves):
        dicts = []
        for w in waves:
            w = torch.from_numpy(int16_round_trip(w))
            dicts.append(get_audio_features({}, w, 480000, data_truncating="rand_trunc", data_filling="repeatpad",
                                            audio_cfg=cfg["audio_cfg"]))
        with torch.no_grad():
            return model.get_audio_embedding(dicts).numpy()

    def embed_text(texts):
        with torch.no_grad():
            return torch.nn.functional.normalize(model.encode_text(laion().tokenize(texts), device="cpu"),
                                                 dim=-1).numpy()

    return embed_audio, embed_text


def test_audio_matches_laion(encoder, laion_reference):
    embed_audio, _ = laion_reference
    x = clips(3)
    ours = encoder.embed_audio(x)
    assert ours.shape == (3, 512) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert max_cosine_distance(ours, embed_audio(list(x))) <= 1e-5


def test_short_clip_repeatpad_matches_laion(encoder, laion_reference):
    embed_audio, _ = laion_reference
    short = clips(1, seconds=3.3)[0]
    ours = encoder.embed_audio(repeat_pad(short)[None])
    assert max_cosine_distance(ours, embed_audio([short])) <= 1e-5


def test_text_matches_laion(encoder, laion_reference):
    _, embed_text = laion_reference
    texts = ["sound of dog bark", "siren with traffic noise", "This is a sound of jackhammer."]
    ours = encoder.embed_text(texts)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert max_cosine_distance(ours, embed_text(texts)) <= 1e-5
    # batching the prompts does not change them
    np.testing.assert_allclose(encoder.embed_text(texts, batch_size=1), ours, atol=1e-6)


def test_repeatable_and_batch_independent(encoder):
    x = clips(4)
    first = encoder.embed_audio(x)
    np.testing.assert_array_equal(first, encoder.embed_audio(x))
    alone = encoder.embed_audio(x[2:3])
    np.testing.assert_allclose(alone[0], first[2], atol=1e-5)


def test_int16_input_is_the_same_round_trip(encoder):
    from das_core.audio.decode import quantize_int16

    x = clips(2)
    np.testing.assert_array_equal(encoder.embed_audio_int16(quantize_int16(x)), encoder.embed_audio(x))


def test_rejects_wrong_window_shape(encoder):
    with pytest.raises(EncoderError, match=r"\[n, 480000\]"):
        encoder.embed_audio(np.zeros((2, 1000), dtype=np.float32))


def test_internal_batching_caps_chunk_size(tiny_ckpt):
    enc = ClapEncoder.from_checkpoint(tiny_ckpt, max_batch_size=2)
    seen = []
    original = enc.model.encode_audio
    enc.model.encode_audio = lambda batch, device: seen.append(len(batch["waveform"])) or original(batch, device)
    enc.embed_audio(clips(5))
    assert seen == [2, 2, 1]


def test_bf16_and_fp16_autocast_run_on_cpu(tiny_ckpt, encoder, record_property):
    x = clips(3)
    ref = encoder.embed_audio(x)
    for precision in ("bf16", "fp16"):
        enc = ClapEncoder.from_checkpoint(tiny_ckpt, precision=precision)
        out = enc.embed_audio(x)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        dev = max_cosine_distance(out, ref)
        record_property(f"{precision}_max_cosine_deviation", dev)
        print(f"\n{precision} vs fp32: largest cosine deviation {dev:.2e}")
        assert dev < 0.05


def test_cuda_refused_without_gpu(tiny_ckpt):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(EncoderError, match="no CUDA GPU"):
        ClapEncoder.from_checkpoint(tiny_ckpt, device="cuda")
    with pytest.raises(EncoderError, match="precision"):
        ClapEncoder.from_checkpoint(tiny_ckpt, precision="int8")


def test_detects_architectures(tiny_ckpt, roberta_ckpt, fusion_ckpt):
    assert ckpt.detect(ckpt.load_state_dict(tiny_ckpt)) == ckpt.Architecture("HTSAT-tiny", "transformer", None)
    assert ckpt.detect(ckpt.load_state_dict(roberta_ckpt)) == ckpt.Architecture("HTSAT-tiny", "roberta", None)
    assert ckpt.detect(ckpt.load_state_dict(fusion_ckpt)) == ckpt.Architecture("HTSAT-tiny", "transformer", "aff_2d")


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
    assert ckpt.TensorShapes.read(str(odd)) is None
    assert ckpt.describe(str(odd), without_torch=True) == ckpt.describe(str(odd))
    code = (f"import sys; from das_core.clap import checkpoint as c; c.describe({tiny_ckpt!r}, without_torch=True); "
            "assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_detects_htsat_base():
    arch = ckpt.Architecture("HTSAT-base", "transformer", None)
    state = build_model(arch).state_dict()
    assert ckpt.detect(state) == arch


def test_refuses_unknown_state_dict(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(3), "fc.bias": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match=r"not a LAION-CLAP checkpoint.*Detected key groups: conv1.weight"):
        ClapEncoder.from_checkpoint(str(path))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ClapEncoder.from_checkpoint(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="does not exist"):
        ClapEncoder.from_checkpoint(str(tmp_path / "nope.pt"))


def test_bare_state_dict_loads_the_same(tmp_path, tiny_ckpt, encoder):
    state = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    bare = tmp_path / "bare.pt"
    torch.save({k[len("module."):]: v for k, v in state.items()}, bare)
    enc = ClapEncoder.from_checkpoint(str(bare))
    x = clips(1)
    np.testing.assert_array_equal(enc.embed_audio(x), encoder.embed_audio(x))


def test_roberta_tower_with_and_without_position_ids(ckpt_dir, roberta_ckpt):
    without = write_random_checkpoint(str(ckpt_dir / "tiny-roberta-nopos.pt"), text="roberta", seed=2,
                                      include_position_ids=False)
    a, b = load_clap(roberta_ckpt), load_clap(without)
    assert a.arch.text == b.arch.text == "roberta"
    tokens = {"input_ids": torch.tensor([[0, 713, 16, 10, 2, 1, 1]]),
              "attention_mask": torch.tensor([[1] * 5 + [0] * 2])}
    with torch.no_grad():
        ea = a.model.get_text_embedding(dict(tokens))
        eb = b.model.get_text_embedding(dict(tokens))
    torch.testing.assert_close(ea, eb)


def test_roberta_text_matches_laion(roberta_ckpt, monkeypatch):
    """laion-clap's create_model + load_state_dict + get_text_embedding, RoBERTa built from its config."""
    from transformers import RobertaConfig, RobertaModel

    from das_core.clap.encoder import ROBERTA_BASE_CONFIG

    class FromConfig:
        @staticmethod
        def from_pretrained(name):
            assert name == "roberta-base"
            return RobertaModel(RobertaConfig(**ROBERTA_BASE_CONFIG))

    monkeypatch.setattr(laion().model, "RobertaModel", FromConfig)
    ref, _ = laion().create_model("HTSAT-tiny", "roberta", precision="fp32", device="cpu")
    ref.load_state_dict(laion().factory.load_state_dict(roberta_ckpt, skip_params=True))
    ref.eval()
    monkeypatch.undo()
    ours = load_clap(roberta_ckpt).model
    ids = torch.randint(3, 50000, (4, 77))
    mask = torch.ones_like(ids)
    mask[:, 20:] = 0
    ids[:, 0], ids[:, 19], ids[:, 20:] = 0, 2, 1
    with torch.no_grad():
        want = ref.get_text_embedding({"input_ids": ids.clone(), "attention_mask": mask.clone()}).numpy()
        got = ours.get_text_embedding({"input_ids": ids.clone(), "attention_mask": mask.clone()}).numpy()
    assert max_cosine_distance(got, want) <= 1e-5


def test_roberta_without_tokenizer_is_refused_quickly(roberta_ckpt, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DAS_TOKENIZER_DIR", "HF_HUB_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "empty-hf-home")
    code = ("from das_core.clap.encoder import ClapEncoder\nfrom das_core.errors import TokenizerError\n"
            f"try:\n    ClapEncoder.from_checkpoint({roberta_ckpt!r})\n"
            "except TokenizerError as e:\n    print('REFUSED', e)\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 60
    assert "REFUSED" in out.stdout, out.stderr[-2000:]
    assert "tokenizer" in out.stdout and "--tokenizer-dir" in out.stdout


def test_fake_tokenizer_is_refused(roberta_ckpt, tmp_path):
    import json

    tok_dir = tmp_path / "fake-roberta"
    tok_dir.mkdir()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "Hello": 4, "Ġworld": 5, "<mask>": 6}
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(TokenizerError, match="has 7 tokens, not 50265"):
        ClapEncoder.from_checkpoint(roberta_ckpt, tokenizer_dir=str(tok_dir))


def test_fusion_checkpoint_is_deterministic(fusion_ckpt):
    enc = ClapEncoder.from_checkpoint(fusion_ckpt)
    assert enc.arch.enable_fusion
    x = clips(2)
    a = enc.embed_audio(x)
    np.testing.assert_array_equal(a, enc.embed_audio(x))
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(enc.embed_audio(x[1:])[0], a[1], atol=1e-5)


def test_fusion_mel_matches_librosa(fusion_ckpt):
    """The fusion input is laion-clap's get_mel (torchaudio, not installed here); librosa computes the same."""
    import librosa

    enc = ClapEncoder.from_checkpoint(fusion_ckpt)
    x = int16_round_trip(clips(1)[0])
    ours = enc._log_mel(torch.from_numpy(x)[None])[0].numpy()
    cfg = enc.model.audio_cfg
    mel = librosa.feature.melspectrogram(y=x, sr=SAMPLE_RATE, n_fft=cfg.window_size, hop_length=cfg.hop_size,
                                         win_length=cfg.window_size, center=True, pad_mode="reflect", power=2.0,
                                         n_mels=cfg.mel_bins, norm=None, htk=True, fmin=cfg.fmin, fmax=cfg.fmax)
    ref = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None).T
    assert ours.shape == ref.shape == (WINDOW_SAMPLES // cfg.hop_size + 1, cfg.mel_bins)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


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
