"""The app in a real browser: a fresh ``streamlit run app.py`` driven by headless Chromium through Playwright.

One journey, as a newcomer would take it: a deep link to /Compare on the freshly started server (the page itself,
no "Page not found"), a melody that plays, a corpus upload on Data, a tiny run started on Train and followed to
its end, a checkpoint downloaded on Checkpoints. Screenshots go to tests/artifacts/ (``SEQGAN_E2E_ARTIFACTS``
overrides). Needs Debian's ``chromium`` (/usr/bin/chromium) and ``pip install playwright``; skipped otherwise.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from e2e_helpers import REPO, make_runs, poem_lines

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("SEQGAN_E2E_ARTIFACTS") or REPO / "tests" / "artifacts")

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``streamlit run app.py`` on a free port, in its own process group (as in a terminal)."""

    def __init__(self, root: Path, env: dict):
        self.root, self.env, self.process = root, env, None

    def start(self) -> str:
        port = free_port()
        self.log = open(self.root / "server.log", "a")
        self.process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
                                         "--server.port", str(port), "--server.address", "127.0.0.1"],
                                        cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2)
                return self.url
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "server.log").read_text()[-2000:]
                    raise RuntimeError(f"the app server did not start: {log}")
                time.sleep(0.2)

    def stop(self) -> None:
        """Ctrl-C in the server's terminal: SIGINT to its whole process group."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A fresh app server with tiny real demo runs and an empty runs folder."""
    root = tmp_path_factory.mktemp("e2e")
    demo = make_runs(root / "demo")
    env = dict(os.environ, SEQGAN_RUNS_DIR=str(root / "runs"), SEQGAN_DEMO_DIR=str(demo), SEQGAN_THREADS="1")
    server = Server(root, env)
    server.start()
    yield server
    server.stop()
    from seqgan import jobs

    for run, _ in jobs.active_runs(root / "runs"):
        jobs.stop(run, force=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def shot(page, name: str, height: int = 1500) -> None:
    """A screenshot of the first ``height`` pixels (Streamlit scrolls inside the page, so no full_page)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    page.set_viewport_size({"width": 1400, "height": 1500})


def runs_report(root: Path) -> str:
    """Every run's state, status.json and end of output, and the end of the server's log."""
    from seqgan import jobs
    from seqgan.runs import RunDir

    lines = []
    for path in sorted((root / "runs").iterdir()) if (root / "runs").is_dir() else []:
        run = RunDir(path)
        lines += [f"--- run {path.name}: {jobs.job_state(run)}", f"status: {run.read_status()}",
                  *run.tail(run.output, 15)]
    log = root / "server.log"
    lines += ["--- server.log", *(log.read_text(errors="replace").splitlines()[-30:] if log.exists() else [])]
    return "\n".join(lines)


@contextmanager
def reported(root: Path):
    """On a failure, add what the runs and the server were doing to the error."""
    try:
        yield
    except Exception as exc:
        raise AssertionError(f"{type(exc).__name__}: {exc}\n{runs_report(root)}") from exc


def wait_until_running(root: Path, timeout: float = 120.0):
    """The newest run, once its job says 'running' (its process may take a while to read its corpus)."""
    from seqgan import jobs
    from seqgan.runs import RunDir

    runs = [RunDir(p) for p in (root / "runs").iterdir() if (p / "job.json").exists()]
    run = max(runs, key=lambda r: jobs.read_job(r)["started"])
    state = jobs.wait(run, states=("running", "finished", "failed", "stopped", "interrupted"), timeout=timeout)
    assert state.state == "running", f"run {run.name} is {state.state}, not running"
    return run


def settle(page) -> None:
    """Wait until the app has finished its rerun (Streamlit shows a status widget while it runs)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="hidden")
    page.wait_for_function("() => !document.querySelector('[data-stale=\"true\"]')")


def sidebar(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    page.get_by_role("heading", level=1).first.wait_for()


PLAY = """async (audio) => {
    if (audio.readyState < 1) await new Promise(r => audio.addEventListener('loadedmetadata', r, {once: true}));
    audio.muted = true;                     // muted playback needs no user gesture
    await audio.play();
    await new Promise(r => setTimeout(r, 800));
    return {duration: audio.duration, time: audio.currentTime, paused: audio.paused};
}"""


@pytest.fixture
def page(browser):
    """A browser tab; on a failure its screenshot is saved as tests/artifacts/failure.png."""
    page = browser.new_page(viewport={"width": 1400, "height": 1500}, accept_downloads=True)
    page.set_default_timeout(30_000)
    try:
        yield page
    except BaseException:
        raise
    finally:
        if not page.is_closed():
            shot(page, "failure", height=2000)
            page.close()


def test_newcomer_journey_in_a_real_browser(server, page, tmp_path):
    url, root = server.url, server.root
    with reported(root):
        journey(page, url, root, server, tmp_path)
    page.close()  # closed: no failure screenshot


def journey(page, url, root, server, tmp_path) -> None:
    # 1. a deep link on a freshly started server opens the page itself
    page.goto(f"{url}/Compare")
    page.get_by_role("heading", name="Compare MLE and SeqGAN").wait_for()
    page.locator("audio").first.wait_for()
    page.wait_for_timeout(1000)
    assert page.get_by_text("Page not found").count() == 0
    assert page.get_by_text("SeqGAN — demo melodies").count() >= 1

    # 2. a generated melody plays
    played = page.locator("audio").first.evaluate(PLAY)
    assert played["duration"] > 0 and played["time"] > 0 and not played["paused"], played
    shot(page, "1-compare-deep-link", height=2200)

    # 3. upload a corpus on the Data page
    sidebar(page, "Data")
    corpus = tmp_path / "verse.txt"
    corpus.write_bytes(poem_lines(200))
    page.locator('[data-testid="stFileUploader"] input[type=file]').set_input_files(str(corpus))
    page.get_by_text("verse.txt").first.wait_for()
    page.get_by_role("button", name="Read the corpus").click()
    page.get_by_text("Training sequences").wait_for()
    page.get_by_text("the Train page can train on it", exact=False).wait_for()
    shot(page, "2-data-upload")

    # 4. start a tiny run on the uploaded corpus and follow it to the end
    page.get_by_role("link", name="Train on this corpus").click()
    page.get_by_role("heading", name="Train").wait_for()
    corpus_box = page.get_by_role("combobox", name="Corpus")
    sync_api.expect(corpus_box).to_have_value("Uploaded text: verse.txt")  # the upload is preselected
    page.get_by_text("Smoke test (seconds)").click()
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Started run").wait_for()
    page.locator('[data-testid="stProgress"]').first.wait_for()
    page.get_by_text("done: 3 units", exact=False).wait_for(timeout=90_000)
    page.get_by_text("Coverage: NLL-test", exact=False).wait_for()
    shot(page, "3-train-finished", height=2600)
    run_id = next(p.name for p in (root / "runs").iterdir() if (p / "job.json").exists())

    # 5. download the run's SeqGAN checkpoint and check it
    sidebar(page, "Checkpoints")
    choice = page.get_by_role("combobox", name="Checkpoint")
    choice.click()
    page.keyboard.type(f"{run_id}/seqgan")
    page.keyboard.press("Enter")
    sync_api.expect(choice).to_have_value(f"{run_id}/seqgan")
    with page.expect_download() as download:
        page.get_by_role("button", name=f"Download {run_id}-seqgan.pt").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    shot(page, "4-checkpoints")
    from seqgan.checkpoint import load_bundle

    bundle = load_bundle(saved)
    assert saved.name == f"{run_id}-seqgan.pt" and bundle["role"] == "seqgan" and bundle["kind"] == "text"
    assert saved.read_bytes() == (root / "runs" / run_id / "checkpoints" / "seqgan.pt").read_bytes()

    # 6. a longer run keeps training through a restart of the server, and stops from the new one
    from seqgan import jobs

    sidebar(page, "Train")
    page.get_by_text("Start a new run").click()
    page.get_by_text("Smoke test (seconds)").click()
    settle(page)
    page.get_by_text("Advanced options (the training configuration)").click()
    settle(page)
    epochs = page.get_by_label("mle epochs", exact=True).filter(visible=True)
    epochs.fill("5000")
    epochs.press("Tab")
    settle(page)
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Started run").wait_for()
    long_run = wait_until_running(root)
    command = jobs.read_job(long_run)["command"]
    assert command[command.index("--mle-epochs") + 1] == "5000", command  # the edited option reached the job
    sync_api.expect(page).to_have_url(re.compile(f"run={long_run.name}"))  # the page watches the new run
    page.get_by_text("state running", exact=False).wait_for()
    try:
        server.stop()
        assert jobs.job_state(long_run).state == "running"  # Ctrl-C of the server does not reach the job
        url = server.start()
        page.goto(f"{url}/Train?run={long_run.name}")
        page.get_by_text("state running", exact=False).wait_for()
        page.get_by_test_id("stMainBlockContainer").get_by_role("button", name="Stop").click()
        page.get_by_role("button", name="Resume").wait_for(timeout=60_000)
        assert jobs.job_state(long_run).state == "stopped"
        shot(page, "5-train-stopped-after-restart", height=1200)
    finally:
        if jobs.job_state(long_run).alive:
            jobs.stop(long_run, force=True)

    # 7. the start page: demo verse and a melody, no training needed
    page.goto(url)
    page.get_by_role("heading", name="SeqGAN Studio").wait_for()
    page.locator("audio").first.wait_for()
    shot(page, "6-start")
