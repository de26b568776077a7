"""Shared fixtures: test-made checkpoints, a real S3 endpoint, generated audio."""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import uuid

import numpy as np
import pytest
import soundfile as sf

# Workers and subprocesses inherit these: every S3 client in the tests talks to moto.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)
logging.getLogger("werkzeug").setLevel(logging.WARNING)     # moto's per-request log lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def tiny_ckpt(ckpt_dir) -> str:
    """HTSAT-tiny + transformer text tower, random weights, LAION's format (fully offline)."""
    from das_core.clap.random_weights import write_random_checkpoint

    return write_random_checkpoint(str(ckpt_dir / "tiny-transformer.pt"), seed=0)


@pytest.fixture(scope="session")
def other_ckpt(ckpt_dir) -> str:
    """Same architecture, other weights: a different checkpoint fingerprint."""
    from das_core.clap.random_weights import write_random_checkpoint

    return write_random_checkpoint(str(ckpt_dir / "tiny-transformer-seed1.pt"), seed=1)


@pytest.fixture(scope="session")
def roberta_ckpt(ckpt_dir) -> str:
    """HTSAT-tiny + RoBERTa text tower, random weights, LAION's format."""
    from das_core.clap.random_weights import write_random_checkpoint

    return write_random_checkpoint(str(ckpt_dir / "tiny-roberta.pt"), text="roberta", seed=2)


@pytest.fixture(scope="session")
def fusion_ckpt(ckpt_dir) -> str:
    """HTSAT-tiny with LAION's aff_2d fusion + transformer text tower, random weights, LAION's format."""
    from das_core.clap.random_weights import write_random_checkpoint

    return write_random_checkpoint(str(ckpt_dir / "tiny-fusion.pt"), fusion=True, seed=3)


@pytest.fixture(scope="session")
def encoder(tiny_ckpt):
    from das_core.clap.encoder import ClapEncoder

    return ClapEncoder.from_checkpoint(tiny_ckpt)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's threaded S3 server on 127.0.0.1: a real HTTP endpoint that Ray workers reach too."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    previous = os.environ.get("AWS_ENDPOINT_URL_S3")
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    yield endpoint
    if previous is None:
        os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    else:
        os.environ["AWS_ENDPOINT_URL_S3"] = previous
    server.stop()


@pytest.fixture
def bucket(s3_endpoint) -> str:
    import boto3

    name = f"das-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def sine(freq: float, seconds: float, rate: int, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    if channels == 1:
        return x
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)


def write_audio(path, samples: np.ndarray, rate: int, fmt: str | None = None, subtype: str | None = None) -> str:
    sf.write(str(path), samples, rate, format=fmt, subtype=subtype)
    return str(path)


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One real local Ray cluster for the session (started after the S3 env is set, so workers inherit it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def small_cache(encoder, tmp_path_factory) -> str:
    """A drift cache of three classes for the tiny test checkpoint."""
    from das_core.scoring.cache import DriftCache

    uri = str(tmp_path_factory.mktemp("small-cache") / "cache.npz")
    DriftCache.build(encoder.embed_text, ["siren", "dog_bark", "engine_idling"], ["traffic noise"],
                     encoder_id=encoder.encoder_id).save(uri)
    return uri


# Windows per encoder forward pass in the tests' label runs. A run pads every pass to its batch size (one shape,
# bit-identical embeddings whatever shares a batch), so the default 16 would encode mostly zeros for these
# 1-to-3-window units; 2 keeps a window sharing its pass with another at an eighth of the work.
TEST_BATCH_SIZE = 2


def label_run(src, cache: str, ckpt: str, out, **kw) -> dict:
    """``das label`` through its library call, with every error kept, no progress lines and passes of
    ``TEST_BATCH_SIZE`` windows unless ``kw`` says otherwise."""
    from jobs.label import LabelConfig, run

    kw.setdefault("batch_size", TEST_BATCH_SIZE)
    kw.setdefault("max_error_fraction", 1.0)
    kw.setdefault("progress_every_s", 1e9)
    return run(LabelConfig(input=str(src), cache=cache, checkpoint=ckpt, out=str(out), **kw))


def read_output(out):
    """(segments, files) of a label output's committed units, sorted."""
    from das_core.output.store import OutputStore

    store = OutputStore(str(out))
    return (store.read_segments().sort_by([("file_id", "ascending"), ("segment", "ascending")]),
            store.read_files().sort_by([("file_id", "ascending")]))


BROKEN_WAV = b"RIFF\x00\x00\x00\x00WAVEfmt this is not a wav file"


def write_clips(folder, clips: dict, seed: int = 0, broken: dict[str, bytes] | None = None) -> None:
    """Generated audio under ``folder``. ``clips``: name -> (seconds, rate, frequency[, noise]): a sine of
    amplitude 0.3, plus white noise of that amplitude drawn in order from one generator seeded by ``seed``;
    ``broken``: name -> bytes that are not audio."""
    rng = np.random.default_rng(seed)
    for name, spec in clips.items():
        seconds, rate, freq, noise = (*spec, 0.0)[:4]
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        x = sine(freq, seconds, rate, amp=0.3)
        if noise:
            x = x + (noise * rng.standard_normal(len(x))).astype(np.float32)
        write_audio(path, x, rate)
    for name, data in (broken or {}).items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


@pytest.fixture(scope="session")
def make_cache(encoder, tmp_path_factory):
    """``make_cache(labels, phrases=<3 default phrases>, **build options)``: the URI of a new drift cache for the
    tiny checkpoint."""
    from das_core.scoring.cache import DriftCache
    from das_core.scoring.prompts import DEFAULT_NOISE_PHRASES

    def make(labels, phrases=tuple(DEFAULT_NOISE_PHRASES[:3]), **kw) -> str:
        uri = str(tmp_path_factory.mktemp("caches") / "cache.npz")
        DriftCache.build(encoder.embed_text, list(labels), list(phrases), encoder_id=encoder.encoder_id,
                         encoder_name=encoder.name, **kw).save(uri)
        return uri

    return make


@pytest.fixture(scope="session")
def make_label_output(ray_local, tiny_ckpt, tmp_path_factory):
    """``make_label_output(clips, cache, seed=0, broken=None, **label settings)``: OUT of a ``das label`` run
    (``label_run``) over clips written by ``write_clips``; the audio is OUT's sibling folder ``audio``."""

    def make(clips: dict, cache: str, *, seed: int = 0, broken: dict[str, bytes] | None = None, **kw) -> str:
        root = tmp_path_factory.mktemp("label-output")
        write_clips(root / "audio", clips, seed, broken)
        label_run(root / "audio", cache, tiny_ckpt, root / "out", **kw)
        return str(root / "out")

    return make


# shard files, written by the libraries that write them in the wild
def flac(seconds: float, freq: float, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, sine(freq, seconds, rate, amp=0.3), rate, format="FLAC")
    return buf.getvalue()


CLIPS = {"sample000": flac(3.0, 300), "sample001": flac(12.0, 500), "sample002": flac(1.5, 700)}


def write_tar(path, clips=CLIPS, extra=True) -> str:
    import webdataset as wds

    with wds.TarWriter(str(path)) as sink:
        for key, data in clips.items():
            sample = {"__key__": key, "flac": data}
            if extra:
                sample.update({"json": {"source": key, "licence": "cc-by"}, "cls": 3})
            sink.write(sample)
    return str(path)


def write_hf_parquet(path, clips=CLIPS, with_null=False) -> str:
    from datasets import Audio, Dataset

    rows = [{"bytes": data, "path": f"{key}.flac"} for key, data in clips.items()]
    ids = list(clips)
    if with_null:
        rows.append(None)
        ids.append("nothing")
    ds = Dataset.from_dict({"audio": rows, "clip_id": ids}).cast_column("audio", Audio(decode=False))
    ds.to_parquet(str(path))
    return str(path)


def headless_chromium(window_height: int, script_timeout: float):
    """Yield one headless Chromium driven by Selenium (Debian's ``chromium`` and ``chromium-driver``; ``make
    test`` installs them), 1280 wide and ``window_height`` high, muted; quit afterwards. A missing browser
    fails the test with the command that installs it."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: apt-get install -y "
                    "--no-install-recommends chromium chromium-driver (make test does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--mute-audio",
                f"--window-size=1280,{window_height}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_script_timeout(script_timeout)
    yield driver
    driver.quit()
