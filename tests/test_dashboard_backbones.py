"""The Backbones page: what ``bench backbones`` recorded, shown from the warehouse only (AppTest), and
in headless Chromium (a screenshot under /work/shots when that folder exists)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import blobs
from fieldguide import names
from fieldguide.config import PROJECT_ENV
from fieldguide.models.backbone_bench import BenchData, record, score_embeddings
from fieldguide.platform.warehouse import Warehouse
from tests.test_dashboards import frame, render, texts, vega_charts

PAGE = "sections/backbones.py"
COSTS = {"efficientnet_lite0": (4.65e6, 3.85e8, 22.0), "efficientnet_lite1": (5.4e6, 6.0e8, 15.5),
         "efficientnet_lite2": (6.1e6, 8.7e8, 12.0)}


def bench_rows(wh: Warehouse, collection: str, spread: dict[str, float]) -> dict[str, str]:
    """A recorded bench_backbone run per backbone (real scoring of blobs, made-up costs); backbone -> run id."""
    out = {}
    for name, s in spread.items():
        X, y = blobs(n_classes=4, per_class=20, dim=8, spread=s, seed=1)
        test = np.arange(len(y)) % 4 == 0
        data = BenchData([f"c{i}" for i in range(4)], X[~test], y[~test], X[test], y[test],
                         groups={"genus": ["g0", "g0", "g1", "g1"]})
        result = score_embeddings(data)
        params, macs, speed = COSTS[name]
        result.backbone = name
        result.metrics[names.COST_SPLIT] = {names.PARAMS: params, names.MACS: macs, names.FLOPS: 2 * macs,
                                            names.IMAGES_PER_S: speed, names.PEAK_MEMORY_MB: 80.0}
        result.config.update(backbone=name, device="cpu", input_size=224)
        out[name] = record(wh, result, collection)
    return out


@pytest.fixture
def benched(project, monkeypatch):
    wh = Warehouse(project.warehouse_path)
    bench_rows(wh, "cub100", {"efficientnet_lite0": 0.5})  # superseded by the run below
    runs = bench_rows(wh, "cub100", {"efficientnet_lite0": 2.6, "efficientnet_lite1": 2.0, "efficientnet_lite2": 3.2})
    bench_rows(wh, "inat-plants-dev", {"efficientnet_lite0": 1.0})
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    return wh, runs


def test_backbones_page_shows_the_warehouse_numbers(benched):
    wh, runs = benched
    at = render(PAGE)
    assert at.title[0].value == "Backbones"
    assert at.selectbox(key="backbones_collection").options == ["cub100", "inat-plants-dev"]
    shown = frame(at, "backbones")
    assert list(shown["run_id"]) == list(shown.sort_values(names.TOP1, ascending=False)["run_id"])
    assert set(shown["run_id"]) == set(runs.values())  # the newest run of each backbone
    stored = wh.query("SELECT run_id, split, name, value FROM metrics")
    for row in shown.itertuples(index=False):
        mine = stored[stored["run_id"] == row.run_id]
        want = {(n if s.startswith(("test", "embedding", "cost", "gradients")) and ":" not in s
                 else f"{s[5:]}_{n}"): v for s, n, v in mine[["split", "name", "value"]].itertuples(index=False)}
        for column in ["top1", "top5", "macro_f1", "genus_top1", *names.EMBEDDING_METRICS,
                       *names.BACKBONE_COST_METRICS]:
            assert getattr(row, column) == pytest.approx(want[column]), column
    spec, data = next((s, d) for s, d in vega_charts(at) if "accuracy against cost" in str(s))
    points = data[0].set_index("backbone")
    assert points["gmacs"].to_dict() == pytest.approx({b: c[1] / 1e9 for b, c in COSTS.items()})
    assert points[names.TOP1].to_dict() == pytest.approx(shown.set_index("backbone")[names.TOP1].to_dict())
    at.selectbox(key="backbones_collection").set_value("inat-plants-dev").run()
    assert list(frame(at, "backbones")["backbone"]) == ["efficientnet_lite0"]


def test_backbones_page_without_runs_says_what_to_run(project, monkeypatch):
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    at = render(PAGE)
    assert at.info and not at.dataframe
    assert any("bench backbones --backbones" in c.value for c in at.code), texts(at)


@pytest.mark.server
@pytest.mark.slow
def test_backbones_page_in_headless_chromium(benched, project, tmp_path):
    import shutil
    import time
    from pathlib import Path

    from tests.test_dashboard_browser import browser, page_text, serving

    wanted = ["Backbones", "accuracy against cost", *COSTS]  # the grid is a canvas: its numbers are not in the DOM
    with serving(project, tmp_path) as url, browser(tmp_path / "chrome") as driver:
        driver.get(url + "backbones")
        deadline = time.monotonic() + 90
        while not all(w in page_text(driver.page_source) for w in wanted) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # the chart's marks are drawn after its title
        shot = tmp_path / "backbones.png"
        driver.save_screenshot(str(shot))
        text = page_text(driver.page_source)
    assert all(w in text for w in wanted), text[-2000:]
    assert shot.stat().st_size > 10_000
    if Path("/work/shots").is_dir():
        shutil.copy(shot, "/work/shots/backbones_page.png")
