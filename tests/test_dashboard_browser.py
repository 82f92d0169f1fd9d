"""`fieldguide dashboard` serves the app; headless Chromium loads the pages and shows the
warehouse's numbers (the rendered DOM and a screenshot): a warehouse written by the tests, and a
project the real loop ran on (conftest's ``looped``), whose pages must show what the steps reported."""

from __future__ import annotations

import contextlib
import html
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fieldguide.config import PROJECT_ENV
from fieldguide.platform.warehouse import Warehouse
from conftest import free_port
from tests.test_dashboards import build_warehouse, run_row

pytestmark = [pytest.mark.server, pytest.mark.slow]

WINDOW = (1400, 1000)
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
]




@contextlib.contextmanager
def browser(workdir: Path):
    """Debian's headless Chromium driven by its chromedriver (Selenium), with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    exe, driver_exe = shutil.which("chromium"), shutil.which("chromedriver")
    assert exe and driver_exe, "headless Chromium is needed (apt-get install chromium chromium-driver)"
    workdir.mkdir(parents=True, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = exe
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={workdir / 'profile'}")
    env = dict(os.environ, HOME=str(workdir), XDG_CONFIG_HOME=str(workdir / "config"),
               XDG_CACHE_HOME=str(workdir / "cache"))
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_exe, env=env))
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(dom: str) -> str:
    dom = re.sub(r"<(script|style)\b[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", dom)).split())


def rendered_text(url: str, workdir: Path, expect: str | list[str], timeout_s: float = 90) -> str:
    """The page's text (its DOM, tags stripped) once Streamlit has rendered all of ``expect``."""
    expect = [expect] if isinstance(expect, str) else expect
    with browser(workdir) as driver:
        driver.get(url)
        deadline = time.monotonic() + timeout_s
        text = ""
        while time.monotonic() < deadline:
            text = page_text(driver.page_source)
            if all(e in text for e in expect):
                break
            time.sleep(0.5)
        return text


def _bar_pixels(image: np.ndarray, color: tuple[int, int, int]) -> int:
    return int((np.abs(image.astype(int) - color).max(axis=-1) <= 6).sum())


def rendered_screenshot(url: str, workdir: Path, expect: str, timeout_s: float = 90) -> tuple[np.ndarray, Path]:
    """A screenshot once ``expect`` is on the page and the long-tail chart's bars are drawn."""
    shot = workdir / "dashboard.png"
    with browser(workdir) as driver:
        driver.get(url)
        deadline = time.monotonic() + timeout_s
        while True:
            if expect in page_text(driver.page_source):
                driver.save_screenshot(str(shot))
                image = np.asarray(Image.open(shot).convert("RGB"))
                if _bar_pixels(image, (76, 120, 168)) > 500 or time.monotonic() > deadline:
                    return image, shot
            elif time.monotonic() > deadline:
                driver.save_screenshot(str(shot))
                return np.asarray(Image.open(shot).convert("RGB")), shot
            time.sleep(0.5)


@pytest.fixture
def dashboard(project, tmp_path):
    """``fieldguide --project DIR dashboard --port P`` on a full warehouse; yields (url, project)."""
    build_warehouse(project)
    with serving(project, tmp_path) as url:
        yield url, project


@contextlib.contextmanager
def serving(project, tmp_path: Path):
    """``fieldguide --project DIR dashboard --port P`` until the block ends; yields its URL."""
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != PROJECT_ENV}
    server = subprocess.Popen(
        [sys.executable, "-m", "fieldguide.cli", "--project", str(project.root), "dashboard", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "dashboard.log").read_text()
            try:
                with urllib.request.urlopen(url + "_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "dashboard.log").read_text()
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_dashboard_main_page_in_headless_chromium(dashboard, tmp_path):
    url, project = dashboard
    headline = "Samples 60 Classes 5 Scarce classes 2 Rejects (last ingest) 2 Near-duplicates 2 Outliers 3"
    rows = ["black_bird 5 4 yellow_bird 8 7", "train 48 test 10 unlabeled 2"]
    text = rendered_text(url, tmp_path / "first", [headline, *rows])
    assert headline in text, text[-3000:]
    assert "Dataset health" in text and project.config.project.name in text
    # table rows as rendered: the scarce classes (class, samples, train) and the splits
    assert "black_bird 5 4 yellow_bird 8 7" in text
    assert "train 48 test 10 unlabeled 2" in text
    assert "2 rejected in the last ingest run ingest-1 (3 over all runs)." in text

    image, shot = rendered_screenshot(url, tmp_path / "shot", headline)
    assert shot.stat().st_size > 10_000
    assert image.shape[1] == WINDOW[0] and image.shape[0] >= WINDOW[1] // 2  # the viewport
    colors = len(np.unique(image.reshape(-1, 3), axis=0))
    assert colors > 100, f"screenshot looks blank ({colors} colours)"
    # the long-tail chart's bars: Altair's blue for the common classes, red for the scarce ones
    assert np.all(np.abs(image.astype(int) - (76, 120, 168)).max(axis=-1) <= 6, axis=None) is np.False_
    assert (np.abs(image.astype(int) - (76, 120, 168)).max(axis=-1) <= 6).sum() > 500
    assert (np.abs(image.astype(int) - (214, 39, 40)).max(axis=-1) <= 6).sum() > 200


def test_dashboard_reads_while_the_cli_writes(dashboard, tmp_path):
    """The server holds no lock between queries: a step writes, the next page load shows it."""
    url, project = dashboard
    assert "Rejects (last ingest) 2" in rendered_text(url, tmp_path / "before", "Rejects (last ingest) 2")
    wh = Warehouse(project.warehouse_path)
    started = time.monotonic()
    wh.write("runs", [run_row("ingest-2", "ingest", 120)])
    wh.write("rejects", [{"run_id": "ingest-2", "path": "/data/late/bad.png", "reason": "truncated image"}])
    assert time.monotonic() - started < 10
    sentence = "1 rejected in the last ingest run ingest-2 (4 over all runs)."
    text = rendered_text(url, tmp_path / "after", ["Rejects (last ingest) 1", sentence])  # (drawn in turn)
    assert "Rejects (last ingest) 1" in text
    assert sentence in text


def js_number(x: float) -> str:
    """``x`` as the page's DOM writes a table cell (JavaScript's shortest round-trip form)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def test_looped_pages_show_what_the_steps_reported(looped, tmp_path):
    """Every page by its own URL (a link or a bookmark, /health too): the numbers the steps reported."""
    project, truth = looped
    report, trained, retrained = truth["flag"], truth["train"], truth["retrain"][0]
    pages = {
        "": ["Dataset health", f"Outliers {report.outliers}", f"Near-duplicates {report.near_duplicates}",
             f"Samples {truth['status']['samples']}"],
        "health": ["Dataset health", f"Outliers {report.outliers}", f"Near-duplicates {report.near_duplicates}"],
        "review": ["Review queue", f"Flagged now {truth['views']['to_review']}",
                   f"Flagged by the last run {report.flagged}", "Flag runs 2"],
        "models": ["Models", f"{trained.run_id} two-stage-entropy {trained.epochs}",
                   f"{retrained.run_id} ce {retrained.epochs}",
                   " ".join([retrained.run_id, "retrain", project.config.models.backbone,
                             *map(js_number, (retrained.top1, retrained.top5, retrained.macro_f1))])],
    }
    with serving(project, tmp_path) as url:
        for path, expect in pages.items():
            text = rendered_text(url + path, tmp_path / (path or "root"), expect)
            assert "Page not found" not in text, path
            for e in expect:
                assert e in text, (path, e, text[-3000:])
