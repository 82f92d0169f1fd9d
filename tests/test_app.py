"""`fieldguide app` serves the FiftyOne App on the project's dataset (fetched over HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fieldguide.config import PROJECT_ENV
from fieldguide.errors import StoreError
from fieldguide.platform.app import launch_app
from conftest import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def test_app_serves_the_projects_dataset(ingested, tmp_path):
    port = free_port()
    log = (tmp_path / "app.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != PROJECT_ENV}
    server = subprocess.Popen(
        [sys.executable, "-m", "fieldguide.cli", "--project", str(ingested.root), "app", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        deadline, status, page = time.time() + 180, None, ""
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                status, page = _get(f"http://127.0.0.1:{port}/")
                break
            except OSError:
                time.sleep(1)
        assert status == 200, (tmp_path / "app.log").read_text()[-3000:]
        assert "<html" in page.lower() and "fiftyone" in page.lower()
        # the server answers for the project's dataset: its GraphQL API lists it
        gql = '{ dataset(name: "%s") { name estimatedSampleCount } }' % ingested.dataset_name
        req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": gql}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.load(r)
        assert answer.get("data") and answer["data"]["dataset"] == {
            "name": ingested.dataset_name, "estimatedSampleCount": 24}, answer
        assert f"http://127.0.0.1:{port}/" in (tmp_path / "app.log").read_text()

        # the App server found the @fieldguide/curator plugin (acceptance of the plugin issue)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/operators",
                                     data=json.dumps({"dataset_name": ingested.dataset_name}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            listed = json.load(r)
        uris = {op["uri"] for op in listed["operators"]}
        for name in ("flag_label_issues", "push_to_label_studio", "pull_from_label_studio", "set_label", "retrain"):
            assert f"@fieldguide/curator/{name}" in uris, sorted(uris)
        assert not [e for e in listed.get("errors", []) if "fieldguide" in json.dumps(e)]

        # the delegated-operations orchestrator runs beside the App
        deadline = time.time() + 60
        log_file = ingested.runs_dir / "orchestrator.log"
        while time.time() < deadline and not log_file.exists():
            time.sleep(0.5)
        assert log_file.exists()

        # a curator's view of it: the App in headless Chromium shows the dataset
        shot = _app_screenshot(f"http://127.0.0.1:{port}/datasets/{ingested.dataset_name}", tmp_path / "browser",
                               ingested.dataset_name)
        assert shot.stat().st_size > 20_000
        docs = Path(__file__).resolve().parents[1] / "docs"
        if os.environ.get("FIELDGUIDE_UPDATE_DOCS"):
            docs.mkdir(exist_ok=True)
            (docs / "app.png").write_bytes(shot.read_bytes())
    finally:
        stop_app(server)


def stop_app(server: subprocess.Popen) -> None:
    """Stop `fieldguide app` (started in its own session) and everything it started."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)


def _app_screenshot(url: str, workdir: Path, dataset_name: str) -> Path:
    """Load the App and take a screenshot once the dataset's thumbnails are drawn."""
    import numpy as np
    from PIL import Image

    from tests.test_dashboard_browser import browser

    shot = workdir / "app.png"
    colours = 0
    with browser(workdir) as driver:
        driver.set_window_size(1400, 1000)
        driver.get(url)
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(2)
            driver.save_screenshot(str(shot))
            image = np.asarray(Image.open(shot).convert("RGB"))
            colours = len(np.unique(image.reshape(-1, 3), axis=0))
            if dataset_name in driver.page_source and colours > 3000:
                break
        assert dataset_name in driver.page_source, "the App did not open the project's dataset"
    assert colours > 3000, f"the App's grid shows no thumbnails ({colours} colours)"
    return shot


def test_status_reports_dataset_and_plugin(ingested):
    from fieldguide.platform.status import project_status

    info = project_status(ingested)
    assert info["dataset"] == ingested.dataset_name
    assert (Path(info["app_plugin"]) / "fiftyone.yml").read_text().count("@fieldguide/curator") == 1


def test_app_with_an_unknown_view_is_a_clear_error(ingested):
    with pytest.raises(StoreError, match="no saved view 'to_review'"):
        launch_app(ingested, view="to_review", wait=False)
