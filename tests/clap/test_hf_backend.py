"""The hf backend (saved transformers ClapModel folders) against transformers' own code path, on test-made models."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import sine

from das_core.audio.decode import SAMPLE_RATE, WINDOW_SAMPLES, int16_round_trip, repeat_pad
from das_core.clap import checkpoint as ckpt
from das_core.clap.encoder import ClapEncoder
from das_core.clap.random_weights import byte_level_tokenizer, write_random_hf_checkpoint
from das_core.errors import CheckpointError, TokenizerError

pytestmark = pytest.mark.integration    # Ray, S3 (moto) or subprocesses: `make test-fast` skips it

TEXTS = ["sound of dog bark", "siren with traffic noise", "This is a sound of jackhammer.", "wind"]


@pytest.fixture(scope="session")
def hf_folder(ckpt_dir):
    return write_random_hf_checkpoint(str(ckpt_dir / "hf-tiny"), seed=0)


@pytest.fixture(scope="session")
def hf_fused_folder(ckpt_dir):
    return write_random_hf_checkpoint(str(ckpt_dir / "hf-tiny-fused"), fusion=True, seed=1)


@pytest.fixture(scope="session", params=["unfused", "fused"])
def hf_model(request, hf_folder, hf_fused_folder):
    """(folder, das encoder with max_batch_size 8, transformers' ClapModel, its feature extractor)."""
    from transformers import ClapFeatureExtractor, ClapModel

    folder = hf_folder if request.param == "unfused" else hf_fused_folder
    reference = ClapModel.from_pretrained(folder, local_files_only=True).eval()
    extractor = ClapFeatureExtractor.from_pretrained(folder, local_files_only=True)
    return folder, ClapEncoder.from_checkpoint(folder, max_batch_size=8), reference, extractor


def clips(seconds):
    """Noisy tones, one per duration (all at most 10 s), int16-round-tripped as das_core.audio.decode delivers them."""
    rng = np.random.default_rng(0)
    out = []
    for i, s in enumerate(seconds):
        n = int(s * SAMPLE_RATE)
        x = sine(150 * (i + 1), s, SAMPLE_RATE, amp=0.3) + 0.05 * rng.standard_normal(n)
        out.append(int16_round_trip(x.astype(np.float32)))
    return out


def reference_features(extractor, fusion, waves):
    """ClapFeatureExtractor's features; is_longer forced False (it sets one at random for fused batches)."""
    feats = extractor(waves, sampling_rate=SAMPLE_RATE, padding="repeatpad",
                      truncation="fusion" if fusion else "rand_trunc", return_tensors="pt")
    return feats["input_features"], torch.zeros((len(waves), 1), dtype=torch.bool)


def max_cosine_distance(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.max(1.0 - np.sum(a * b, axis=1)))


def test_features_equal_feature_extractor(hf_model):
    _, enc, _, extractor = hf_model
    waves = clips([10.0, 3.3, 0.7])
    want, _ = reference_features(extractor, enc.front_end.fusion, waves)
    got = enc.front_end(torch.from_numpy(np.stack([repeat_pad(w) for w in waves])))
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert want.shape == (3, 4 if enc.arch.enable_fusion else 1, WINDOW_SAMPLES // 480 + 1, 64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)      # bit-identical on CPU here
    assert float((got - want).abs().mean()) < 1e-5


@pytest.mark.parametrize("n", [1, 8])
def test_audio_matches_clapmodel(hf_model, n):
    _, enc, reference, extractor = hf_model
    waves = clips([10.0, 2.5, 7.1, 10.0, 0.4, 9.99, 5.0, 1.0][:n])
    features, longer = reference_features(extractor, enc.arch.enable_fusion, waves)
    with torch.no_grad():
        want = reference.get_audio_features(input_features=features, is_longer=longer).pooler_output.numpy()
    ours = enc.embed_audio(np.stack([repeat_pad(w) for w in waves]))
    assert ours.shape == (n, 32) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert max_cosine_distance(ours, want) <= 1e-5


def test_text_matches_clapmodel(hf_model):
    _, enc, reference, _ = hf_model
    tokens = enc.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = reference.get_text_features(input_ids=tokens["input_ids"],
                                           attention_mask=tokens["attention_mask"]).pooler_output.numpy()
    ours = enc.embed_text(TEXTS)
    assert max_cosine_distance(ours, want) <= 1e-5
    np.testing.assert_allclose(enc.embed_text(TEXTS, batch_size=1), ours, atol=1e-6)


def test_batch_invariant_mode_pads_every_pass(hf_folder):
    enc = ClapEncoder.from_checkpoint(hf_folder, max_batch_size=4, batch_invariant=True)
    seen = []
    front_end = enc.front_end
    enc.front_end = lambda chunk: seen.append(len(chunk)) or front_end(chunk)
    x = np.stack([repeat_pad(w) for w in clips([10.0, 4.0, 6.0, 10.0, 2.0])])
    together = enc.embed_audio(x)
    alone = enc.embed_audio(x[3:4])
    assert seen == [4, 4, 4]
    np.testing.assert_array_equal(alone[0], together[3])


def test_bf16_autocast_runs_on_cpu(hf_folder):
    x = np.stack([repeat_pad(w) for w in clips([10.0, 3.0])])
    ref = ClapEncoder.from_checkpoint(hf_folder).embed_audio(x)
    out = ClapEncoder.from_checkpoint(hf_folder, precision="bf16").embed_audio(x)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert max_cosine_distance(out, ref) < 0.05


def test_backend_is_detected_and_described(hf_folder, hf_fused_folder, tiny_ckpt):
    info = ckpt.describe(hf_folder)
    scale = info.pop("logit_scale")
    assert info == {"backend": "hf", "weights": "random",
                    "architecture": "HTSAT(width 16, depths 1-1) audio tower, roberta text tower, "
                                    "Hugging Face ClapModel"}
    from transformers import ClapModel

    model = ClapModel.from_pretrained(hf_folder)       # the scale CLAP scores audio against text with
    assert scale == pytest.approx(float(model.logit_scale_a.exp()), rel=1e-6)
    assert ClapEncoder.from_checkpoint(hf_folder).logit_scale == pytest.approx(scale, rel=1e-6)
    assert "fusion (aff_2d)" in ckpt.describe(hf_fused_folder)["architecture"]
    assert ckpt.describe(tiny_ckpt)["backend"] == "laion"
    enc = ClapEncoder.from_checkpoint(hf_folder)
    assert enc.backend == "hf" and enc.name == "hf:hf-tiny" and enc.encoder_id == ckpt.fingerprint(hf_folder)
    assert ClapEncoder.from_checkpoint(tiny_ckpt).backend == "laion"


def test_fingerprint_covers_config_and_weights(hf_folder, tmp_path):
    same = shutil.copytree(hf_folder, tmp_path / "same")
    assert ckpt.fingerprint(str(same)) == ckpt.fingerprint(hf_folder)
    (same / "README.md").write_text("not part of the model")
    assert ckpt.fingerprint(str(same)) == ckpt.fingerprint(hf_folder)
    edited = shutil.copytree(hf_folder, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    config["audio_config"]["layer_norm_eps"] = 1e-6          # weights untouched, model changed
    (edited / "config.json").write_text(json.dumps(config))
    assert ckpt.fingerprint(str(edited)) != ckpt.fingerprint(hf_folder)
    other = write_random_hf_checkpoint(str(tmp_path / "other"), seed=5)
    assert ckpt.fingerprint(other) != ckpt.fingerprint(hf_folder)


def _replace_tokenizer(folder, tokenizer):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(folder, name)):
            os.unlink(os.path.join(folder, name))
    tokenizer.save_pretrained(folder)


def test_mismatched_tokenizer_is_refused(hf_folder, tmp_path):
    smaller = shutil.copytree(hf_folder, tmp_path / "smaller")
    _replace_tokenizer(str(smaller), byte_level_tokenizer(vocab_size=300))
    with pytest.raises(TokenizerError, match=r"has \d+ tokens, but the model's text tower has a vocabulary of"):
        ClapEncoder.from_checkpoint(str(smaller))


def test_tokenizer_failing_round_trip_is_refused(hf_folder, tmp_path):
    """A word-level stand-in of the right size maps the probe to <unk>: refused."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    n = len(ClapEncoder.from_checkpoint(hf_folder).tokenizer)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(n - len(specials))])}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    stand_in = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", pad_token="<pad>",
                                       eos_token="</s>", unk_token="<unk>", mask_token="<mask>")
    folder = shutil.copytree(hf_folder, tmp_path / "word-level")
    _replace_tokenizer(str(folder), stand_in)
    with pytest.raises(TokenizerError, match="fails a round trip"):
        ClapEncoder.from_checkpoint(str(folder))


def test_folders_that_are_not_clap_models_are_refused(hf_folder, tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="'bert' model, not a CLAP model"):
        ClapEncoder.from_checkpoint(str(tmp_path / "bert"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no config.json"):
        ckpt.resolve(str(tmp_path / "empty"))
    no_fe = shutil.copytree(hf_folder, tmp_path / "no-fe")
    os.unlink(no_fe / "preprocessor_config.json")
    with pytest.raises(CheckpointError, match="no preprocessor_config.json or processor_config.json"):
        ClapEncoder.from_checkpoint(str(no_fe))
    deeper = shutil.copytree(hf_folder, tmp_path / "deeper")
    config = json.loads((deeper / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 2           # weights hold one layer
    (deeper / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not fit config.json: missing_keys"):
        ClapEncoder.from_checkpoint(str(deeper))


def test_a_folder_saved_by_clapprocessor_loads(hf_folder, ckpt_dir):
    """transformers 5 saves a ClapProcessor as processor_config.json (the feature extractor nested inside)."""
    folder = write_random_hf_checkpoint(str(ckpt_dir / "hf-tiny-processor"), seed=0, processor=True)
    assert not os.path.exists(os.path.join(folder, "preprocessor_config.json"))
    assert "feature_extractor" in json.loads(open(os.path.join(folder, "processor_config.json")).read())
    waves = np.stack([int16_round_trip(repeat_pad(sine(440.0, 3.0, SAMPLE_RATE))),
                      int16_round_trip(sine(220.0, 10.0, SAMPLE_RATE))])
    saved_as_processor = ClapEncoder.from_checkpoint(folder, max_batch_size=2)
    saved_apart = ClapEncoder.from_checkpoint(hf_folder, max_batch_size=2)
    np.testing.assert_array_equal(saved_as_processor.embed_audio(waves), saved_apart.embed_audio(waves))
    np.testing.assert_array_equal(saved_as_processor.embed_text(TEXTS), saved_apart.embed_text(TEXTS))


def test_s3_folder_is_downloaded_once(bucket, hf_folder, tmp_path, monkeypatch):
    import s3fs

    monkeypatch.setenv("DAS_CACHE_DIR", str(tmp_path / "cache"))
    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"])
    for name in os.listdir(hf_folder):
        fs.put(os.path.join(hf_folder, name), f"s3://{bucket}/models/hf-tiny/{name}")
    uri = f"s3://{bucket}/models/hf-tiny/"
    first = ckpt.resolve(uri)
    assert os.path.isdir(first) and sorted(os.listdir(first)) == ckpt.hf_model_files(hf_folder)
    mtime = os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns
    assert ckpt.resolve(uri) == first and os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns == mtime
    assert ckpt.fingerprint(first) == ckpt.fingerprint(hf_folder)
    assert ClapEncoder.from_checkpoint(uri).encoder_id == ckpt.fingerprint(hf_folder)
    # a changed object is a new cache entry
    with open(os.path.join(hf_folder, "config.json")) as f:
        config = json.load(f)
    fs.pipe(f"s3://{bucket}/models/hf-tiny/config.json", json.dumps({**config, "note": "edited"}).encode())
    assert ckpt.resolve(uri) != first


def test_hub_id_offline_fails_fast_with_instructions(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "empty-hf-home")
    code = ("from das_core.clap import checkpoint as ckpt\nfrom das_core.errors import CheckpointError\n"
            "try:\n    ckpt.resolve('laion/clap-htsat-unfused')\n"
            "except CheckpointError as e:\n    print('REFUSED', e)\n")
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    lines = [line for line in out.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(lines) == 1 and out.stdout.strip() == lines[0], out.stdout + out.stderr[-2000:]
    assert "HF_HUB_OFFLINE=1" in lines[0] and "--checkpoint /models/clap-htsat-unfused" in lines[0]
    assert "local folder" in lines[0]


def test_hub_id_in_the_hugging_face_cache_loads_offline(hf_folder, tmp_path, monkeypatch):
    """A hub id whose snapshot is in the cache (the hub's own layout) resolves offline, same fingerprint."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--laion--clap-tiny-test"
    shutil.copytree(hf_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    local = ckpt.resolve("laion/clap-tiny-test")
    assert local == str(repo / "snapshots" / commit)
    enc = ClapEncoder.from_checkpoint("laion/clap-tiny-test")
    assert enc.encoder_id == ckpt.fingerprint(hf_folder) and enc.name == "hf:clap-tiny-test"


def test_importing_das_changes_no_global_state():
    """Issue #12: a notebook that imports das keeps its Hugging Face downloads working."""
    code = """
import json, os
import huggingface_hub.constants as c
names = ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
before = (dict(os.environ), {n: getattr(c, n) for n in names})
import importlib, pkgutil, das_core
for module in pkgutil.walk_packages(das_core.__path__, "das_core."):
    importlib.import_module(module.name)
from das_core.clap.offline import hf_offline
after_import = (dict(os.environ), {n: getattr(c, n) for n in names})
with hf_offline() as offline:
    inside = (os.environ.get("HF_HUB_OFFLINE"), c.HF_HUB_OFFLINE, offline)
after_block = (dict(os.environ), {n: getattr(c, n) for n in names})
print(json.dumps([before == after_import, before == after_block, inside]))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                            "HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout.splitlines()[-1]) == [True, True, ["1", True, True]], out.stderr[-2000:]
    env["HF_HUB_OFFLINE"] = "0"         # the user's choice is respected inside das's loading too
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(out.stdout.splitlines()[-1]) == [True, True, ["0", False, False]], out.stderr[-2000:]


def test_build_cache_with_hf_folder(hf_folder, tmp_path):
    from das_core.scoring.cache import DriftCache
    from jobs.build_cache import main

    labels = tmp_path / "labels.txt"
    labels.write_text("dog_bark\nsiren\njackhammer\n")
    out = tmp_path / "cache.npz"
    assert main(["--labels", str(labels), "--checkpoint", hf_folder, "--out", str(out)]) == 0
    cache = DriftCache.load(str(out))
    enc = ClapEncoder.from_checkpoint(hf_folder)
    assert cache.encoder_id == enc.encoder_id and cache.encoder_name == "hf:hf-tiny"
    assert cache.dim == enc.dim
    np.testing.assert_allclose(cache.clean, enc.embed_text(["sound of dog bark", "sound of siren",
                                                            "sound of jackhammer"]), atol=1e-6)


_BLOCK_NAMES = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
                "attn.relative_position_bias_table": "attention.self.relative_position_bias_table",
                "attn.relative_position_index": "attention.self.relative_position_index",
                "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def laion_audio_to_hf(state: dict) -> dict:
    """A LAION HTSAT audio tower and projection, renamed to transformers' ClapModel layout (qkv split in three).

    Written here from the two modules' parameter names: transformers 5.23 ships no conversion script.
    The LAION tower's STFT / mel buffers and its classification head (tscam_conv, head) have no
    counterpart: the hf backend computes the features itself and the embedding never uses the head.
    """
    out = {}
    for key, value in state.items():
        if key.startswith("audio_projection."):
            out[key.replace(".0.", ".linear1.").replace(".2.", ".linear2.")] = value
            continue
        if not key.startswith("audio_branch.") or key.split(".")[1] in (
                "spectrogram_extractor", "logmel_extractor", "tscam_conv", "head"):
            continue
        name = "audio_model.audio_encoder." + key[len("audio_branch."):].replace("bn0.", "batch_norm.", 1)
        if ".blocks." in name:
            head, rest = name.split(".blocks.", 1)
            block, param = rest.split(".", 1)
            if param == "attn_mask":                 # derived from the window geometry; transformers recomputes it
                continue
            if param.startswith("attn.qkv."):       # one [3d, d] projection in LAION, three [d, d] in transformers
                for part, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                    out[f"{head}.blocks.{block}.attention.self.{part}.{param.rsplit('.', 1)[1]}"] = chunk.clone()
                continue
            stem = next(k for k in _BLOCK_NAMES if param == k or param.startswith(k + "."))
            name = f"{head}.blocks.{block}.{_BLOCK_NAMES[stem]}{param[len(stem):]}"
        out[name] = value
    return out


@pytest.mark.slow
def test_laion_checkpoint_converted_to_hf_embeds_the_same_audio(tiny_ckpt, tmp_path, record_property):
    """The same HTSAT-tiny weights through both backends: laion-clap's own front end and model, and
    das's front end + transformers' ClapModel. The text towers cannot be compared: this LAION checkpoint
    has LAION's CLIP-style text tower, which ClapModel does not have."""
    from safetensors.torch import save_file
    from transformers import ClapModel

    folder = write_random_hf_checkpoint(str(tmp_path / "converted"), audio="HTSAT-tiny", projection_dim=512)
    model = ClapModel.from_pretrained(folder, local_files_only=True)
    converted = laion_audio_to_hf(ckpt.load_state_dict(tiny_ckpt))
    own = model.state_dict()
    audio_keys = {k for k in own if k.startswith(("audio_model.", "audio_projection."))}
    assert set(converted) == audio_keys
    own.update(converted)
    save_file({k: v.contiguous() for k, v in own.items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    x = np.stack([repeat_pad(w) for w in clips([10.0, 3.3, 7.5])])
    laion = ClapEncoder.from_checkpoint(tiny_ckpt).embed_audio(x)
    hf = ClapEncoder.from_checkpoint(folder).embed_audio(x)
    record_property("laion_vs_hf_max_cosine_distance", max_cosine_distance(hf, laion))
    assert max_cosine_distance(hf, laion) <= 1e-5


@pytest.mark.slow
def test_label_with_hf_folder(hf_folder, ray_local, tmp_path):
    """das label end to end on the hf backend: Ray actors load the folder, embeddings and manifest say so."""
    import pyarrow.parquet as pq
    from conftest import write_audio

    from das_core.scoring.cache import DriftCache
    from jobs.label import LabelConfig, run

    (tmp_path / "in").mkdir()
    write_audio(tmp_path / "in" / "a.wav", sine(440, 3.0, 16000), 16000)
    write_audio(tmp_path / "in" / "b.flac", sine(880, 12.0, 44100), 44100, fmt="FLAC")
    enc = ClapEncoder.from_checkpoint(hf_folder)
    cache_uri = str(tmp_path / "cache.npz")
    DriftCache.build(enc.embed_text, ["siren", "dog_bark"], ["traffic noise"], encoder_id=enc.encoder_id,
                     encoder_name=enc.name).save(cache_uri)
    out = str(tmp_path / "out")
    manifest = run(LabelConfig(input=str(tmp_path / "in"), cache=cache_uri, checkpoint=hf_folder, out=out,
                               embedding_dtype="float32", progress_every_s=1e9))
    assert manifest["status"] == "complete" and manifest["counts"]["ok"] == 2
    assert manifest["checkpoint"]["backend"] == "hf" and manifest["checkpoint"]["fingerprint"] == enc.encoder_id
    segments = pq.read_table(os.path.join(out, "segments")).to_pandas().sort_values(["path", "segment"])
    assert len(segments) == 3 and set(segments.label) <= {"siren", "dog_bark"}
    # the 3 s clip's one window, as das_core.audio.decode delivers it, embedded in this process
    from das_core.audio.decode import load_mono48k

    window = repeat_pad(load_mono48k((tmp_path / "in" / "a.wav").read_bytes(), "a.wav"))
    ours = enc.embed_audio(window[None])[0]
    stored = np.asarray(segments[segments.path.str.endswith("a.wav")].embedding.iloc[0], dtype=np.float32)
    assert float(ours @ stored) > 1 - 1e-5
