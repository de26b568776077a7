"""``das browse`` in a real browser and over plain HTTP: one label run, one ``das browse`` subprocess and one
headless Chromium (Debian's chromium and chromium-driver, driven by Selenium) for the module.

The run's input holds plain files, a symlink that points out of the input (labelled like the others: das
browse must still refuse its audio) and a file deleted after the run (its audio answers 404 with a reason).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import BROKEN_WAV, free_port, headless_chromium, label_run, read_output, write_clips

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = ["siren", "dog_bark", "engine_idling", "rain", "glass_breaking", "speech"]
SCREENSHOTS_ENV = "DAS_SCREENSHOTS"
WAIT_S = 30


@pytest.fixture(scope="module")
def run(make_cache, tiny_ckpt, tmp_path_factory) -> dict:
    """A das label run over generated audio, with a symlink out of the input and a source deleted after."""
    root = tmp_path_factory.mktemp("browse")
    clips = {"long.wav": (33.5, 16000, 440.0, 0.1), "a.wav": (10.0, 22050, 880.0, 0.3),
             "quiet/b.wav": (12.0, 16000, 2500.0, 0.0), "gone.wav": (10.0, 16000, 300.0, 0.2)}
    write_clips(root / "audio", clips, seed=5, broken={"broken.wav": BROKEN_WAV})
    write_clips(root / "outside", {"secret.wav": (5.0, 16000, 500.0, 0.4)}, seed=6)
    os.symlink(root / "outside" / "secret.wav", root / "audio" / "link.wav")
    label_run(root / "audio", make_cache(LABELS), tiny_ckpt, root / "out", report=False)
    os.remove(root / "audio" / "gone.wav")
    segments, _ = read_output(root / "out")
    return {"root": root, "out": str(root / "out"), "segments": segments.select(["file_id", "segment", "label"]),
            "secret": (root / "outside" / "secret.wav").read_bytes()}


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT_S) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def server(run):
    """``das browse OUT --port P`` as a user runs it, until its text search is ready; its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "browse", run["out"], "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline, status = time.monotonic() + 90, None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status = json.loads(_get(base + "/api/status")[1])
            if not status["loading"]:
                break
        except OSError:
            pass
        time.sleep(0.2)
    assert proc.poll() is None and status and status["text_search"] == "ready", (status, proc.poll())
    yield {"base": base, "port": port, "proc": proc}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (Debian's packages; `make test` installs them)."""
    yield from headless_chromium(1000, WAIT_S)


def _results(page, title_part: str) -> list:
    """The result rows once the title says ``title_part`` (a new answer arrived)."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(page, WAIT_S).until(lambda d: title_part in d.find_element("id", "title").text)
    return page.find_elements("css selector", "#results tbody tr.hit")


def _submit(page, text: str = "", label: str = "") -> None:
    page.execute_script("document.getElementById('q').value = arguments[0];"
                        "document.getElementById('label').value = arguments[1];"
                        "document.getElementById('title').textContent = '';", text, label)
    page.find_element("id", "go").click()


# Resolves with [duration, seconds of the window, error code] once the player has its metadata or failed.
LOAD = """const done = arguments[arguments.length - 1]; const a = arguments[0];
const poll = () => (a.readyState >= 1 || a.error) ? done([a.duration, Number(a.dataset.seconds),
                                                        a.error ? a.error.code : null]) : setTimeout(poll, 50);
a.load(); poll();"""


def _screenshot(page, tmp_path, name: str) -> None:
    """The page as a PNG under the test's tmp dir, and in $DAS_SCREENSHOTS/<name> if set."""
    shot = tmp_path / name
    assert page.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(shot, os.path.join(folder, name))


@pytest.fixture(scope="module")
def page(server, browser):
    """The browser on the page, its label list filled."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server["base"] + "/")
    WebDriverWait(browser, WAIT_S).until(lambda d: len(d.find_elements("css selector", "#label option")) > 1)
    return browser


def test_a_text_query_lists_windows_whose_audio_plays(page, tmp_path):
    _submit(page, "a siren wailing")
    rows = _results(page, 'windows like "a siren wailing"')
    assert len(rows) >= 5
    files = [r.get_attribute("data-file") for r in rows]
    row = rows[files.index("long.wav")]
    duration, seconds, error = page.execute_async_script(LOAD, row.find_element("css selector", "audio"))
    assert error is None and duration > 0 and abs(duration - seconds) <= 0.1, (duration, seconds, error)
    _screenshot(page, tmp_path, "browse-search.png")


def test_the_label_filter_keeps_that_labels_windows_only(page, run):
    labels = run["segments"].column("label").to_pylist()
    label = max(set(labels), key=labels.count)
    _submit(page, "", label)
    rows = _results(page, f"best windows labelled {label}")
    shown = [r.find_element("css selector", "td.label").text.split()[0] for r in rows]
    assert shown == [label] * labels.count(label)              # every window of that label, and no other
    absent = next((lb for lb in LABELS if lb not in labels), None)
    if absent:
        _submit(page, "", absent)
        assert _results(page, f"best windows labelled {absent}") == []
    _submit(page, "a siren wailing", label)
    narrowed = _results(page, f"labelled {label}")
    assert 0 < len(narrowed) <= labels.count(label)


def test_a_files_timeline_opens_and_a_click_plays_its_window(page, tmp_path):
    _submit(page)
    rows = _results(page, "best windows of any label")
    row = next(r for r in rows if r.get_attribute("data-file") == "long.wav")
    row.find_element("css selector", "button.open-timeline").click()
    from selenium.webdriver.support.ui import WebDriverWait

    buttons = WebDriverWait(page, WAIT_S).until(
        lambda d: d.find_elements("css selector", "#tl-bar button") if "long.wav" in
        d.find_element("id", "tl-file").text else None)
    assert len(buttons) == 4                                   # 10 + 10 + 10 + 3.5 s
    buttons[1].click()
    deadline, state = time.monotonic() + WAIT_S, None
    while time.monotonic() < deadline:
        state = page.execute_script("const a = document.getElementById('tl-player');"
                                    "return [a.paused, a.currentTime, a.getAttribute('src')]")
        if not state[0] and state[1] > 0:
            break
        time.sleep(0.05)
    assert state[0] is False and state[1] > 0 and state[2].endswith("file=long.wav&segment=1"), state
    page.execute_script("window.scrollTo(0, 0)")
    _screenshot(page, tmp_path, "browse-timeline.png")


def test_more_like_this_lists_the_window_itself_first(page):
    _submit(page)
    rows = _results(page, "best windows of any label")
    row = next(r for r in rows if r.get_attribute("data-file") == "a.wav")
    row.find_element("css selector", "button.like").click()
    found = _results(page, "more like")
    assert (found[0].get_attribute("data-file"), found[0].get_attribute("data-segment")) == ("a.wav", "0")
    assert float(found[0].find_element("css selector", "td.num").text) == pytest.approx(1.0, abs=1e-3)


def test_audio_outside_the_inputs_is_refused_without_a_byte_of_it(server, run):
    base, secret = server["base"], run["secret"]
    outside = str(run["root"] / "outside" / "secret.wav")
    probes = {
        "/audio?file=link.wav&segment=0": 403,                       # labelled, but a symlink out of the input
        "/audio?file=../outside/secret.wav&segment=0": 404,
        "/audio?file=%2e%2e%2Foutside%2Fsecret.wav&segment=0": 404,
        "/audio?file=" + urllib.request.quote(outside, safe="") + "&segment=0": 404,
        "/audio?file=a.wav&segment=7": 404,
        "/audio?file=nothing.wav&segment=0": 404,
        "/../outside/secret.wav": 404,
        "/%2e%2e/%2e%2e/outside/secret.wav": 404,
        "/audio/..%2F..%2Foutside%2Fsecret.wav": 404,
    }
    for path, expected in probes.items():
        status, body = _get(base + path)
        assert status == expected, (path, status, body[:200])
        assert secret[200:264] not in body and secret[:44] not in body, path
    status, body = _get(base + "/audio?file=link.wav&segment=0")
    assert b"symlink" in body


def test_a_missing_source_answers_why_and_the_server_keeps_serving(server):
    status, body = _get(server["base"] + "/audio?file=gone.wav&segment=0")
    assert status == 404 and b"no longer there" in body and b"gone.wav" in body
    status, body = _get(server["base"] + "/audio?file=a.wav&segment=0")
    assert status == 200 and body[:4] == b"OggS"


def test_a_port_in_use_is_refused_with_one_line(server, run):
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "browse", run["out"], "--port", str(server["port"])],
                          env=env, capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [ln for ln in lines if ln.startswith("das browse: error: ")]
    assert len(errors) == 1 and "in use" in errors[0] and "--port" in errors[0], lines


def test_another_host_is_warned_about_and_an_address_it_cannot_bind_is_one_line(server, run):
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "browse", run["out"], "--host", "192.0.2.1", "--port",
                           str(server["port"])], env=env, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "serves this archive's audio to the network, unauthenticated" in lines[0], lines
    errors = [ln for ln in lines if ln.startswith("das browse: error: ")]
    assert len(errors) == 1 and "cannot listen on 192.0.2.1" in errors[0], lines


def test_ctrl_c_stops_it_with_one_line(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0 and out.strip().splitlines()[-1] == "das browse: stopped", out
