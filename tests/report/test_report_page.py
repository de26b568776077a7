"""report.html in a real browser: headless Chromium (Debian's chromium and chromium-driver, driven by Selenium)
opens the page from disk, every excerpt loads with its window's length, a missing source shows its note, and
clicking a timeline window plays it. One label run and one browser session for the module."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time

import pytest
from conftest import BROKEN_WAV, headless_chromium, label_run, sine, write_clips

from das_core.output.report_files import REPORT_DIR, REPORT_HTML, REPORT_RECORD
from das_core.report.write import write_report

pytestmark = pytest.mark.integration

LABELS = ["siren", "dog_bark", "engine_idling", "rain"]
SCREENSHOTS_ENV = "DAS_SCREENSHOTS"      # a folder: the test run copies its screenshot there as report.png
LOAD_TIMEOUT_S = 20


def _shard(path, members: dict[str, float]) -> None:
    """A WebDataset tar shard of 16 kHz WAV members (name -> seconds), each with a .json beside it."""
    import soundfile as sf

    with tarfile.open(path, "w") as tar:
        for name, seconds in members.items():
            buf = io.BytesIO()
            sf.write(buf, sine(660.0, seconds, 16000, amp=0.3), 16000, format="WAV")
            for member, data in ((name, buf.getvalue()), (name.rsplit(".", 1)[0] + ".json", b"{}")):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def report(make_cache, ray_local, tiny_ckpt, tmp_path_factory) -> str:
    """OUT/report of a das label run over plain files and a tar shard, rewritten by das report after one
    source (gone.wav) was deleted; returns the report folder."""
    root = tmp_path_factory.mktemp("listen")
    clips = {"long.wav": (23.5, 16000, 440.0, 0.1), "a.wav": (10.0, 22050, 880.0, 0.1),
             "gone.wav": (12.0, 16000, 300.0, 0.1)}
    write_clips(root / "audio", clips, seed=3, broken={"broken.wav": BROKEN_WAV})
    _shard(root / "audio" / "shard.tar", {"s1.wav": 14.0})
    label_run(root / "audio", make_cache(LABELS), tiny_ckpt, root / "out")
    assert os.path.exists(root / "out" / REPORT_DIR / REPORT_HTML)          # written at the end of das label
    os.remove(root / "audio" / "gone.wav")
    write_report(str(root / "out"), excerpts=50)                           # every window of this small run
    return str(root / "out" / REPORT_DIR)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Debian's packages; `make test` installs them)."""
    yield from headless_chromium(1600, LOAD_TIMEOUT_S)


@pytest.fixture(scope="module")
def page(report, browser):
    """The browser with report.html opened from disk (file://)."""
    browser.get("file://" + os.path.join(report, REPORT_HTML))
    return browser


# Resolves with each excerpt's [src, duration, readyState, error code] once all have loaded or failed.
AUDIO_STATES = """
const done = arguments[arguments.length - 1];
const players = Array.from(document.querySelectorAll('audio[data-seconds]'));
const settled = a => a.readyState >= 1 || a.error;
const report = () => done(players.map(a => [a.getAttribute('src'), a.duration, Number(a.dataset.seconds),
                                            a.error ? a.error.code : null]));
const poll = () => players.every(settled) ? report() : setTimeout(poll, 50);
players.forEach(a => a.load());
poll();
"""


def test_every_excerpt_loads_with_its_windows_length(page, report):
    states = page.execute_async_script(AUDIO_STATES)
    record = json.load(open(os.path.join(report, REPORT_RECORD)))["files"]
    assert len(states) >= 6
    for src, duration, seconds, error in states:
        assert error is None, src
        assert duration > 0 and abs(duration - seconds) <= 0.1, (src, duration, seconds)
        assert src in record                                    # on the record: --overwrite removes it
    lengths = sorted(seconds for _, _, seconds, _ in states)
    assert lengths[0] < 5 and lengths[-1] == pytest.approx(10.0)   # long.wav's 3.5 s tail, and full windows
    paths = page.execute_script("return Array.from(document.querySelectorAll('td.path')).map(e => e.textContent)")
    assert any(p.endswith("shard.tar/s1.wav") for p in paths)        # a tar shard's member is excerpted too
    assert "[report.html](report.html)" in open(os.path.join(report, "report.md")).read()


def test_a_missing_source_shows_its_note_and_the_page_still_works(page, report):
    notes = page.execute_script("return Array.from(document.querySelectorAll('tr')).filter("
                                "r => r.querySelector('.note.missing')).map(r => r.textContent)")
    assert notes and all("gone.wav" in n and "no longer there" in n for n in notes)
    kept = {f"excerpts/{n}" for n in os.listdir(os.path.join(report, "excerpts"))}
    recorded = json.load(open(os.path.join(report, REPORT_RECORD)))["files"]
    assert kept == {n for n in recorded if n.startswith("excerpts/")}     # gone.wav's earlier excerpts removed
    errors = page.execute_script("return document.body.innerText")
    assert "broken.wav" in errors and "Errors by kind" in errors                    # with its example file


def test_clicking_a_timeline_window_plays_it(page, report, tmp_path):
    buttons = page.find_elements("css selector", ".timeline button[data-src]")
    assert len(buttons) >= 3                                   # long.wav: 10 + 10 + 3.5 s
    target = buttons[1]
    page.execute_script("arguments[0].scrollIntoView()", target)
    target.click()
    player = target.get_attribute("data-player")
    deadline, state = time.monotonic() + LOAD_TIMEOUT_S, None
    while time.monotonic() < deadline:
        state = page.execute_script(f"const a = document.getElementById('{player}');"
                                    "return [a.paused, a.currentTime, a.getAttribute('src'), a.error && a.error.code]")
        if not state[0] and state[1] > 0:
            break
        time.sleep(0.05)
    assert state[0] is False and state[1] > 0, state
    assert state[2] == target.get_attribute("data-src")
    _screenshot(page, tmp_path)


def _screenshot(page, tmp_path) -> None:
    """The page from its top as a PNG under the test's tmp dir, and in $DAS_SCREENSHOTS/report.png if set."""
    page.execute_script("window.scrollTo(0, 0)")
    shot = tmp_path / "report.png"
    assert page.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(shot, os.path.join(folder, "report.png"))


def test_the_report_on_s3_plays_from_the_bucket_as_a_static_site(report, browser, s3_endpoint, bucket):
    """The label output copied to a bucket; das report writes report/ there with each file's Content-Type, and
    the page, served by the S3 endpoint over HTTP with its relative links, loads every excerpt."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    out = os.path.dirname(report)
    for folder, _, names in os.walk(out):
        for name in names:
            rel = os.path.relpath(os.path.join(folder, name), out)
            if not rel.startswith(REPORT_DIR):
                s3.upload_file(os.path.join(folder, name), bucket, f"out/{rel}")
    write_report(f"s3://{bucket}/out", excerpts=50)
    record = json.loads(s3.get_object(Bucket=bucket, Key=f"out/{REPORT_DIR}/{REPORT_RECORD}")["Body"].read())
    excerpt = next(n for n in record["files"] if n.startswith("excerpts/"))
    types = {name: s3.head_object(Bucket=bucket, Key=f"out/{REPORT_DIR}/{name}")["ContentType"]
             for name in (REPORT_HTML, excerpt, "scores.png")}
    assert types == {REPORT_HTML: "text/html; charset=utf-8", excerpt: "audio/ogg", "scores.png": "image/png"}
    public_read = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action":
                   "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}      # as a static website's bucket
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(public_read))
    browser.get(f"{s3_endpoint}/{bucket}/out/{REPORT_DIR}/{REPORT_HTML}")
    states = browser.execute_async_script(AUDIO_STATES)
    assert len(states) >= 6 and all(e is None and abs(d - s) <= 0.1 for _, d, s, e in states), states
