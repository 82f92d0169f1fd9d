"""`fieldguide app` serves the FiftyOne App on the project's dataset (fetched over HTTP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from fieldguide.config import PROJECT_ENV
from fieldguide.errors import StoreError
from fieldguide.platform.app import launch_app
from tests.test_dashboard_browser import free_port

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
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_app_with_an_unknown_view_is_a_clear_error(ingested):
    with pytest.raises(StoreError, match="no saved view 'to_review'"):
        launch_app(ingested, view="to_review", wait=False)
