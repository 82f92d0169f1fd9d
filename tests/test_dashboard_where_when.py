"""The "Where and when" page on a real project: a CSV of observations (dates, a few coordinates)
ingested into a real store, a few samples flagged and queued as ``flag`` does, the samples
snapshotted to the warehouse; the page must show the warehouse's counts (per month for a class,
flagged points on the map), and say so plainly when there are no dates or no places."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fieldguide.config import PROJECT_ENV
from fieldguide.dashboards import charts, observations
from fieldguide.platform.warehouse import Warehouse
from conftest import CLASS_COLORS, make_image
from tests.test_dashboard_browser import WINDOW, browser, page_text, serving
from tests.test_dashboards import frame, metrics, render, texts, vega_charts

PAGE = "sections/where_when.py"
FLAGGED_COLOR = "#d62728"  # the page's red
# per class: the months its dated samples were observed in (one sample each), its season
SEASONS = {"red_bird": [1, 1, 2, 2, 2, 12], "green_bird": [4, 4, 5, 5, 6], "blue_bird": [7, 8, 8, 9]}
PLACES = {"red_bird": (52.37, 4.89), "green_bird": (48.85, 2.35), "blue_bird": (-33.9, 151.2)}


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """A project of the CSV rows below, ingested: per class one sample per month of :data:`SEASONS`
    and one without a date; a place on the first sample of each month, the second sample and the
    undated one; flagged: the second sample of every class and blue_bird's undated one.
    Yields (project, the CSV rows as a frame)."""
    from fieldguide.config import init_project
    from fieldguide.platform import review, samples, store
    from fieldguide.platform.fields import write_values
    from fieldguide.platform.ingest import ingest

    area = tmp_path_factory.mktemp("observed")
    rows, seed = [], 0
    for label, months in SEASONS.items():
        for i, month in enumerate([*months, None]):  # and one sample without a date
            seed += 1
            path = make_image(area / "photos" / f"{label}_{i}.jpg", CLASS_COLORS[label], seed=seed)
            placed = month is None or i == 1 or month not in months[:i]
            lat, lon = PLACES[label] if placed else (None, None)
            rows.append({"filepath": str(path), "label": label,
                         "observed_on": dt.date(2023, month, 3 + 2 * i).isoformat() if month else "",
                         "latitude": lat + 0.7 * i if placed else "", "longitude": lon - 0.9 * i if placed else "",
                         "flagged": i == 1 or (label == "blue_bird" and month is None)})
    table = pd.DataFrame(rows)
    table.drop(columns="flagged").to_csv(area / "observations.csv", index=False)
    project = init_project(area / "proj", "observed")
    try:
        ingest(project, area / "observations.csv", fmt="csv")
        ds = store.dataset(project, create=False)
        ids = samples.arrays(ds, ["filepath"]).set_index("filepath")["id"]
        flagged = {ids[p]: bool(f) for p, f in zip(table["filepath"], table["flagged"])}
        write_values(ds, {"label_issue": flagged})  # as flag writes it, then queues the flagged ones
        review.requeue(ds, [sid for sid, f in flagged.items() if f])
        store.snapshot_samples(project, ds)
    finally:
        store.release_database()
    yield project, table


@pytest.fixture
def served(observed, monkeypatch):
    project, table = observed
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    return project, table


def chart_data(at, column: str) -> pd.DataFrame:
    """The data of the one chart whose frame has ``column``."""
    found = [d for _, data in vega_charts(at) for d in data if column in d]
    assert len(found) == 1, [list(d.columns) for _, data in vega_charts(at) for d in data]
    return found[0]


def test_page_shows_the_warehouse_counts(served):
    project, table = served
    wh = Warehouse(project.warehouse_path)
    snap = wh.query("SELECT label, observed_at, latitude, longitude, label_issue, review_state FROM samples")
    # the snapshot holds what the CSV said
    assert len(snap) == len(table)
    assert snap["observed_at"].notna().sum() == (table["observed_on"] != "").sum()
    assert sorted(snap["latitude"].dropna().round(4)) == sorted(pd.to_numeric(table["latitude"]).dropna().round(4))
    assert sorted(snap["longitude"].dropna().round(4)) == sorted(pd.to_numeric(table["longitude"]).dropna().round(4))
    assert snap["label_issue"].sum() == table["flagged"].sum()

    at = render(PAGE)
    assert at.title[0].value == "Where and when"
    assert metrics(at) == {"Labeled samples": str(len(snap)), "With a date": str(snap["observed_at"].notna().sum()),
                           "With a place": str(snap["latitude"].notna().sum()),
                           "Flagged": str(int(snap["label_issue"].sum()))}
    assert "season by month" in [d.proto.alt for d in at.dataframe]
    # all classes: the overview's cells are the warehouse's counts per class and month
    per_cell = wh.query("SELECT label AS class, month(observed_at) AS month_number, count(*) AS n, "
                        "count(*) FILTER (WHERE label_issue) AS f FROM samples WHERE observed_at IS NOT NULL "
                        "GROUP BY ALL")
    heat = chart_data(at, "month_number")
    shown = heat[heat["samples"] > 0].set_index(["class", "month_number"]).sort_index()
    expected = per_cell.set_index(["class", "month_number"]).sort_index()
    assert shown["samples"].tolist() == expected["n"].tolist()
    assert shown["flagged"].tolist() == expected["f"].tolist()
    assert len(heat) == 12 * len(SEASONS)

    # one class: its months (the CSV's) and its flagged points on the map
    at.selectbox[0].set_value("red_bird").run()
    assert not at.exception
    months = frame(at, "season by month").set_index("count")
    assert list(months.columns) == observations.MONTHS
    red = snap[(snap["label"] == "red_bird") & snap["observed_at"].notna()]
    want = red["observed_at"].dt.month.value_counts().reindex(range(1, 13), fill_value=0)
    assert months.loc["samples"].tolist() == want.tolist() == [SEASONS["red_bird"].count(m) for m in range(1, 13)]
    want_flagged = red[red["label_issue"]]["observed_at"].dt.month.value_counts().reindex(range(1, 13), fill_value=0)
    assert months.loc["flagged"].tolist() == want_flagged.tolist()
    weeks = chart_data(at, "first_day")
    assert weeks["samples"].sum() == len(red)
    assert weeks.groupby("status")["samples"].sum().get("flagged", 0) == red["label_issue"].sum() == 1

    points = chart_data(at, "longitude")
    red_placed = snap[(snap["label"] == "red_bird") & snap["latitude"].notna()]
    assert len(points) == len(red_placed)
    assert (points["status"] == "flagged").sum() == red_placed["label_issue"].sum() == 1
    assert points["status"].iloc[-1] == "flagged"  # drawn last, on top
    flagged_point = points[points["status"] == "flagged"].iloc[0]
    assert flagged_point["review_state"] == "to_review"
    assert f"{len(red_placed)} observations with a place, 1 flagged" in texts(at)
    assert f"{len(snap[snap['label'] == 'red_bird']) - len(red_placed)} samples without a place left out" in texts(at)

    at.selectbox[0].set_value("All classes").run()
    points = chart_data(at, "longitude")
    placed = snap[snap["latitude"].notna()]
    assert (len(points), (points["status"] == "flagged").sum()) == (len(placed), placed["label_issue"].sum())


def test_no_dates_and_no_places_say_so(project, monkeypatch):
    """Samples (as a warehouse from before dates and places were kept holds them after the
    upgrade): neither dates nor places."""
    Warehouse(project.warehouse_path).write("samples", [
        {"sample_id": f"s{i}", "label": label, "split": "train", "label_issue": i == 0}
        for i, label in enumerate(["wren", "wren", "tit"])])
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    at = render(PAGE)
    assert metrics(at)["With a date"] == "0" and metrics(at)["With a place"] == "0"
    assert [i.value for i in at.info] == [
        "No sample has a date (observed_at): dates come with CSV (observed_on, date), iNaturalist and "
        "Darwin Core ingests.",
        "No sample has a place (latitude and longitude): places come with CSV (latitude, longitude), "
        "iNaturalist and Darwin Core ingests."]
    assert not vega_charts(at) and not at.dataframe


def test_an_older_warehouse_is_read_and_says_what_fills_it(project, monkeypatch):
    """A schema-4 warehouse (samples without date and place) opened read-only: a sentence, no error;
    the next write adds the columns and keeps the rows."""
    wh = Warehouse(project.warehouse_path)
    wh.path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(wh.path))
    con.execute("CREATE TABLE schema_info (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '4')")
    con.execute("CREATE TABLE samples (sample_id VARCHAR PRIMARY KEY, filepath VARCHAR, label VARCHAR, "
                "split VARCHAR, origin VARCHAR, predicted_label VARCHAR, confidence DOUBLE, noise_score DOUBLE, "
                "label_issue BOOLEAN, pseudo_label VARCHAR, pseudo_confidence DOUBLE, updated TIMESTAMP, "
                "review_state VARCHAR)")
    con.execute("INSERT INTO samples (sample_id, label) VALUES ('a', 'wren')")
    con.close()
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    at = render(PAGE)
    assert "written before samples carried their date and place" in at.info[0].value
    assert at.code[0].value == f"fieldguide --project {project.root} flag"
    assert wh.schema_version() == 4  # the dashboards never write

    wh.write("samples", [{"sample_id": "b", "label": "tit", "observed_at": dt.datetime(2024, 3, 1),
                          "latitude": 1.5, "longitude": 2.5}])
    obs = observations.observations(wh)
    assert obs.set_index("sample_id")["month"].fillna(0).to_dict() == {"a": 0, "b": 3}
    at = render(PAGE)
    assert metrics(at)["With a place"] == "1"
    at.selectbox[0].set_value("wren").run()
    assert "No sample of wren has a date." in texts(at) and "No sample of wren has a place." in texts(at)
    assert not vega_charts(at) and not at.dataframe  # one class with dates: no overview


@pytest.mark.parametrize("state", ["no warehouse", "empty warehouse"])
def test_a_new_project_says_what_to_run(project, monkeypatch, state):
    if state == "empty warehouse":
        with Warehouse(project.warehouse_path).connect():
            pass
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    at = render(PAGE)
    assert at.info and not at.metric and not at.dataframe
    assert f"fieldguide --project {project.root} ingest IMAGES_DIR" in [c.value for c in at.code]


def test_week_bins_and_months_of_a_leap_year_end():
    obs = pd.DataFrame({"label": ["a", "a", "a"], "flagged": [False, True, False],
                        "observed_at": pd.to_datetime(["2024-01-01", "2024-01-07", "2024-12-31"]),
                        "day_of_year": [1, 7, 366], "month": [1, 1, 12]})
    weeks = observations.by_week(obs)
    assert weeks.to_dict("records") == [
        {"first_day": 1, "last_day": 7, "flagged": "flagged", "samples": 1},
        {"first_day": 1, "last_day": 7, "flagged": "not flagged", "samples": 1},
        {"first_day": 365, "last_day": 366, "flagged": "not flagged", "samples": 1}]
    months = observations.by_month(obs).set_index("month")
    assert months.loc["Jan"].tolist() == [2, 1] and months.loc["Dec"].tolist() == [1, 0]
    assert months["samples"].sum() == 3



# ---- in headless Chromium -------------------------------------------------------------------
SHOTS = Path(os.environ.get("FIELDGUIDE_SHOTS", "")) if os.environ.get("FIELDGUIDE_SHOTS") else None


def screenshot(driver, path: Path, ready: Callable[[np.ndarray], bool], timeout_s: float = 60) -> np.ndarray:
    """The whole page (the window grown to its height) once Streamlit's run is drawn, the page
    has stopped changing (two screenshots alike: charts and tables painted) and ``ready(image)``
    holds, or at the timeout."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    before = None
    while True:
        height = driver.execute_script(  # the tallest scroller: Streamlit's main area, not the body
            "return Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
        driver.set_window_size(WINDOW[0], max(WINDOW[1], int(height) + 120))
        driver.save_screenshot(str(path))
        image = np.asarray(Image.open(path).convert("RGB"))
        drawn = not driver.find_elements(By.CSS_SELECTOR, "[data-stale='true']")  # no element of a former run
        still = before is not None and before.shape == image.shape and np.array_equal(before, image)
        if (drawn and still and ready(image)) or time.monotonic() > deadline:
            return image
        before = image
        time.sleep(1.0)


def color_pixels(image: np.ndarray, color: str) -> int:
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).max(axis=-1) <= 8).sum())


@pytest.mark.server
@pytest.mark.slow
def test_page_in_headless_chromium(observed, tmp_path):
    """Served by ``fieldguide dashboard``: the counts in the DOM, the season bars and the map's
    points drawn offline (blue, flagged red), for all classes and for one."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    project, table = observed
    placed = table[table["latitude"] != ""]
    everything = f"All classes : {len(placed)} observations with a place, {int(placed['flagged'].sum())} flagged"
    headline = (f"Labeled samples {len(table)} With a date {(table['observed_on'] != '').sum()} "
                f"With a place {(table['latitude'] != '').sum()} Flagged {int(table['flagged'].sum())}")
    shots = SHOTS or tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with serving(project, tmp_path) as url, browser(tmp_path / "chromium") as driver:
        driver.get(url + "where-when")
        deadline = time.monotonic() + 90
        while everything not in page_text(driver.page_source):
            assert time.monotonic() < deadline, page_text(driver.page_source)[-2000:]
            time.sleep(0.5)
        text = page_text(driver.page_source)
        assert headline in text, text[:2000]
        image = screenshot(driver, shots / "season_all.png",
                           lambda im: color_pixels(im, FLAGGED_COLOR) > 300 and color_pixels(im, charts.BAR_COLOR) > 1500)
        assert len(np.unique(image.reshape(-1, 3), axis=0)) > 100
        assert color_pixels(image, charts.BAR_COLOR) > 1500  # season bars, map points
        assert color_pixels(image, FLAGGED_COLOR) > 300  # flagged bars, crosses, framed cells

        box = driver.find_element(By.CSS_SELECTOR, "[data-testid='stSelectbox'] input")
        box.send_keys("red_bird")
        box.send_keys(Keys.ENTER)
        red = table[table["label"] == "red_bird"]
        sentence = f"red_bird : {(red['latitude'] != '').sum()} observations with a place, 1 flagged"
        while sentence not in page_text(driver.page_source):
            assert time.monotonic() < deadline + 60, page_text(driver.page_source)[-2000:]
            time.sleep(0.5)
        image = screenshot(driver, shots / "season_red_bird.png", lambda im: color_pixels(im, FLAGGED_COLOR) > 100)
        assert color_pixels(image, FLAGGED_COLOR) > 100
