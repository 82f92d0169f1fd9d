"""The @fieldguide/curator panels as a curator sees them: `fieldguide app` on a flagged project, in
headless Chromium. The project panel shows the store's review counts; the sample panel, opened in
the modal, shows the sample's review state; its "Accept the prediction" button runs ``set_label``
in the App, after which the sample panel shows the new history entry, the sample has left the
queue, and the project panel and the grid show one sample fewer to review, without a reload."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from fieldguide.config import PROJECT_ENV
from fieldguide.platform import review, store
from conftest import free_port
from tests.test_app import stop_app
from tests.test_dashboard_browser import browser, page_text
from tests.test_plugin import flagged_project  # noqa: F401 - fixture

pytestmark = [pytest.mark.server, pytest.mark.slow]

WINDOW = (1600, 1000)


@pytest.fixture
def app(predicted, tmp_path):
    """`fieldguide app --view to_review` on the flagged ``predicted``; yields (url, project, queued ids)."""
    ds, queued = flagged_project(predicted)
    port = free_port()
    log = (tmp_path / "app.log").open("w")
    env = {k: v for k, v in os.environ.items() if k != PROJECT_ENV}
    server = subprocess.Popen(
        [sys.executable, "-m", "fieldguide.cli", "--project", str(predicted.root), "app", "--port", str(port),
         "--view", "to_review"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "app.log").read_text()[-3000:]
                time.sleep(1)
        yield url, predicted, queued
    finally:
        stop_app(server)
        log.close()


def wait_for(driver, texts: list[str], timeout_s: float = 120, within: str | None = None) -> str:
    """The page's text (or that of the element with data-cy ``within``) once it holds all of ``texts``."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        if within is None:
            text = page_text(driver.page_source)
        else:
            found = driver.find_elements(By.CSS_SELECTOR, f"[data-cy='{within}']")
            text = " ".join(" ".join(e.text.split()) for e in found)
        if all(t in text for t in texts):
            return text
        time.sleep(0.5)
    raise AssertionError(f"not shown within {timeout_s:.0f} s: {[t for t in texts if t not in text]}\n{text[-3000:]}")


def click(driver, xpath: str, timeout_s: float = 60) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            driver.find_elements(By.XPATH, xpath)[-1].click()
            return
        except (IndexError, WebDriverException):
            assert time.monotonic() < deadline, f"nothing to click at {xpath}"
            time.sleep(0.5)


def open_panel(driver, label: str) -> None:
    """Open a panel from the "+" of the grid's panel tabs."""
    click(driver, "//*[@data-cy='new-panel-btn']")
    click(driver, f"//*[normalize-space(text())='{label}']")


def review_row(counts: dict) -> str:
    """The project panel's review table as text: its header, then the counts."""
    return ("to review pushed answered resolved dismissed "
            + " ".join(str(counts[s]) for s in review.STATES))


def keep_shot(driver, path: Path) -> Path:
    """A screenshot, also copied to $FIELDGUIDE_SHOTS (when set) for a person to look at."""
    driver.save_screenshot(str(path))
    if os.environ.get("FIELDGUIDE_SHOTS"):
        Path(os.environ["FIELDGUIDE_SHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["FIELDGUIDE_SHOTS"]) / path.name)
    return path


def test_panels_show_the_store_and_follow_a_set_label(app, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.by import By

    url, project, queued = app
    ds = store.dataset(project)
    before = review.counts(ds)
    cards = {sid: (ds[sid].ground_truth.label, ds[sid].prediction.label) for sid in queued}
    sid = next((s for s, (label, pred) in cards.items() if pred != label), None)
    assert sid is not None, f"no queued sample whose prediction differs from its label: {cards}"
    old, new = cards[sid]
    with browser(tmp_path / "browser") as driver:
        driver.set_window_size(*WINDOW)
        driver.get(url)
        wait_for(driver, [f"{len(queued)} samples"])
        for dismiss in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Dismiss']"):
            dismiss.click()  # the App's advertisement
        open_panel(driver, "fieldguide: project")
        wait_for(driver, [review_row(before), f"{len(ds)} samples", "no task pushed yet"],
                 within="panel-content-fieldguide_project")

        # the sample, opened in the modal, with the sample panel beside it
        thumbs = driver.find_elements(By.CSS_SELECTOR, "[data-cy='looker']")
        assert len(thumbs) == len(queued)
        order = ds.load_saved_view("to_review").values("id")
        thumbs[order.index(sid)].click()
        click(driver, "//*[@data-cy='modal']//*[@data-cy='panel-tab-fieldguide_sample']")  # the modal's tab
        wait_for(driver, [old, f"predicted {new}", f"review {review.TO_REVIEW}"],
                 within="panel-content-fieldguide_sample")
        keep_shot(driver, tmp_path / "modal_sample_panel_before.png")

        click(driver, f"//button[normalize-space(.)='Accept the prediction: {new}']")
        actor = project.config.project.curator
        wait_for(driver, [f"{old} → {new} curator {actor}", f"review {review.RESOLVED}"],
                 within="panel-content-fieldguide_sample")
        keep_shot(driver, tmp_path / "modal_sample_panel_after.png")
        ds.reload()
        assert ds[sid].ground_truth.label == new and review.QUEUE_TAG not in ds[sid].tags
        assert ds[sid].review_state == review.RESOLVED
        after = review.counts(ds)
        assert after["to_review"] == before["to_review"] - 1 and after["resolved"] == before["resolved"] + 1

        deadline = time.monotonic() + 60
        while any(m.is_displayed() for m in driver.find_elements(By.CSS_SELECTOR, "[data-cy='modal']")):
            if time.monotonic() > deadline:
                keep_shot(driver, tmp_path / "modal_not_closed.png")
                raise AssertionError("the modal did not close")
            actions = ActionBuilder(driver)  # a click on the backdrop, left of the modal
            actions.pointer_action.move_to_location(12, WINDOW[1] // 2).click()
            actions.perform()
            time.sleep(1)
        wait_for(driver, [review_row(after)], within="panel-content-fieldguide_project")
        wait_for(driver, [f"{len(queued) - 1} sample"], within="entry-counts")  # the queue the grid shows
        assert len(driver.find_elements(By.CSS_SELECTOR, "[data-cy='looker']")) == len(queued) - 1
        keep_shot(driver, tmp_path / "grid_project_panel_after.png")

        # the sample panel in the grid follows the selection
        rest = next(s for s in queued if s != sid)
        open_panel(driver, "fieldguide: sample")
        wait_for(driver, ["Open or select a sample"], within="panel-content-fieldguide_sample")
        ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, "[data-cy='looker']")).perform()
        box = driver.find_element(By.CSS_SELECTOR, "[data-cy='looker'] input[type='checkbox']")
        driver.execute_script("arguments[0].click()", box)  # the thumbnail's selection box
        wait_for(driver, [cards[rest][0], f"review {review.TO_REVIEW}", "Label history"],
                 within="panel-content-fieldguide_sample")
        keep_shot(driver, tmp_path / "grid_sample_panel.png")
