"""A Label Studio task built for fine-grained work: 100 classes with ranks, a real server on a free port.

The task shows the candidates (given label, the model's top-k, the crowd's votes) beside the image,
every class behind a search (a ``Taxonomy`` over the class tree), pre-selects the prediction only
when it is confident, and the review tab types the curation columns as numbers. The browser test
drives headless Chromium at 1600x1000 through a search, a choice and a submit, then pulls.
"""

from __future__ import annotations

import json
import math
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_labelstudio_data, free_port, make_image
from fieldguide.config import init_project
from fieldguide.platform import labelstudio as ls
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest
from fieldguide.platform.labelstudio import tasks as lstasks

SHOTS = Path("/work/shots/lstask")
FAMILIES = ("Corvidae", "Paridae", "Fringillidae", "Sylviidae")
GENERA = ("Corvus", "Pica", "Garrulus", "Nucifraga", "Pyrrhocorax", "Parus", "Poecile", "Cyanistes",
          "Lophophanes", "Periparus", "Fringilla", "Carduelis", "Spinus", "Pyrrhula", "Serinus",
          "Sylvia", "Curruca", "Phylloscopus", "Acrocephalus", "Hippolais")
EPITHETS = ("major", "minor", "montanus", "palustris", "borealis")
TOP_K = 5


def class_names() -> list[tuple[str, str, str]]:
    """100 (family, genus, "Genus species") triples, 5 genera per family, 5 species per genus."""
    return [(FAMILIES[g // 5], genus, f"{genus} {e}") for g, genus in enumerate(GENERA) for e in EPITHETS]


def make_project(area: Path):
    """100 classes (one image each, two for the first), ranks family > genus > species, crowd votes."""
    rows, votes = ["filepath,label,family,genus,split"], ["filepath,annotator,label"]
    rng = np.random.default_rng(0)
    for k, (family, genus, species) in enumerate(class_names()):
        for j in range(2 if k == 0 else 1):
            path = make_image(area / "images" / "birds" / f"c{k:03d}_{j}.jpg",
                              tuple(int(v) for v in rng.integers(30, 220, 3)), size=96, seed=k * 10 + j)
            rows.append(f"{path},{species},{family},{genus},train")
    (area / "manifest.csv").write_text("\n".join(rows) + "\n")
    for k, who, label in ((3, "ana", "Corvus minor"), (3, "bo", "Parus major"), (4, "ana", "Sylvia borealis")):
        votes.append(f"{area / 'images' / 'birds' / f'c{k:03d}_0.jpg'},{who},{label}")
    (area / "votes.csv").write_text("\n".join(votes) + "\n")
    project = init_project(area / "fg100", "fg100")
    project.config.labelstudio.top_k = TOP_K
    ingest(project, area / "manifest.csv", fmt="csv", ranks="family,genus", votes=area / "votes.csv")
    return project


#: flagged samples: (image index, confidence of the top class, noise score)
FLAGGED = ((1, 0.93, 0.97), (2, 0.13, 0.91), (3, 0.55, 0.88), (4, 0.81, 0.62), (5, 0.79, 0.41), (6, 0.2, 0.35))


def flag(project) -> dict[str, dict]:
    """What predict and flag write for the FLAGGED samples: logits over the class list, noise
    scores, the saved view; returns sample id -> what was written."""
    import fiftyone as fo
    from fiftyone import ViewField as F

    ds = store.dataset(project, create=False)
    classes = store.classes(ds)
    paths = dict(zip(*ds.values(["filepath", "id"])))
    rng = np.random.default_rng(1)
    written, preds, noise = {}, {}, {}
    for k, conf, score in FLAGGED:
        sid = paths[str(project.root.parent / "images" / "birds" / f"c{k:03d}_0.jpg")]
        order = rng.permutation(len(classes))
        probs = np.full(len(classes), 0.0)
        probs[order[0]] = conf
        rest = rng.dirichlet(np.ones(len(classes) - 1)) * (1 - conf) * 0.999
        probs[order[1:]] = rest
        probs /= probs.sum()
        top = classes[int(np.argmax(probs))]
        preds[sid] = fo.Classification(label=top, confidence=float(probs.max()), logits=np.log(probs).tolist())
        noise[sid] = score + 1e-9 * k  # many decimals, as signals give them
        written[sid] = {"probs": dict(zip(classes, probs.tolist())), "label": top, "confidence": float(probs.max()),
                        "noise": noise[sid]}
    for sid in ds.values("id"):
        noise.setdefault(sid, 0.01)
    ds.set_values("prediction", preds, key_field="id")
    ds.set_values("noise_score", noise, key_field="id")
    ds.set_values("label_issue", {sid: sid in written for sid in ds.values("id")}, key_field="id")
    ds.save_view("to_review", ds.match(F("label_issue") == True).sort_by("noise_score", reverse=True),  # noqa: E712
                 overwrite=True)
    return written


# ---- pure parts ------------------------------------------------------------------------------
def test_config_has_candidates_and_the_class_tree():
    names = class_names()
    paths = {s: [f, g, s] for f, g, s in names}
    root = ET.fromstring(ls.label_config([s for _, _, s in names], paths))
    cand = root.find(".//Choices")
    assert cand.get("value") == "$candidates" and cand.get("choice") == "single" and len(cand) == 0
    tax = root.find(".//Taxonomy")
    assert tax.get("leafsOnly") == "false" and tax.get("maxUsages") == "1"  # a genus, a family can be chosen
    assert sorted(c.get("value") for c in tax) == sorted(FAMILIES)
    corvidae = next(c for c in tax if c.get("value") == "Corvidae")
    corvus = next(c for c in corvidae if c.get("value") == "Corvus")
    assert [c.get("value") for c in corvus] == [f"Corvus {e}" for e in sorted(EPITHETS)]
    leaves = [c.get("value") for c in tax.iter("Choice") if len(c) == 0]
    assert sorted(leaves) == sorted(s for _, _, s in names)
    # no ranks: the same search over a flat list
    flat = ET.fromstring(ls.label_config(["b", "a"])).find(".//Taxonomy")
    assert [c.get("value") for c in flat] == ["a", "b"] and flat.get("leafsOnly") == "true"
    # "new species / not in list": a free-text name
    new = root.find(f".//TextArea[@name='{lstasks.NEW_NAME}']")
    assert new is not None and new.get("toName") == "image" and new.get("maxSubmissions") == "1"
    # a class that is also a rank above others (a genus-level label) can be chosen
    mixed = ET.fromstring(ls.label_config(["Corvus", "Corvus corax"], {"Corvus corax": ["Corvus", "Corvus corax"]}))
    assert mixed.find(".//Taxonomy").get("leafsOnly") == "false"
    # the image sits beside the controls and stays in view
    assert "display:flex" in root.get("style") and "sticky" in root[0].get("style")


def test_candidates_dedup_order_and_hotkeys():
    probs = lstasks.probabilities(np.log([0.05, 0.6, 0.2, 0.1, 0.05]).tolist(), ["a", "b", "c", "d", "e"])
    assert probs["b"] == pytest.approx(0.6)
    got = lstasks.candidates("c", "b", probs, ["d", "z", "d"], top_k=3)
    assert [g["value"] for g in got] == ["c", "b", "d", "z", ls.UNSURE]  # given, top-3 (b, c, d), votes
    assert [g["hotkey"] for g in got] == ["1", "2", "3", "4", "0"]
    assert "given" in got[0]["html"] and "model 20%" in got[0]["html"] and "2 votes" in got[2]["html"]
    assert [g["value"] for g in lstasks.candidates(None, "b", {}, [], top_k=5)] == ["b", ls.UNSURE]


def test_choice_prefers_the_full_list_and_reads_the_leaf():
    cand = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["Pica major"]}}
    tax = {"from_name": "species", "to_name": "image", "type": "taxonomy",
           "value": {"taxonomy": [["Corvidae", "Corvus", "Corvus minor"]]}}
    assert lstasks.choice([cand]) == "Pica major"
    assert lstasks.choice([cand, tax]) == "Corvus minor" == lstasks.choice([tax, cand])
    assert lstasks.choice([]) is None and lstasks.choice(None) is None
    genus = dict(tax, value={"taxonomy": [["Corvidae", "Corvus"]]})
    assert lstasks.choice([genus, cand]) == "Corvus"  # a node above the classes is the answer
    named = {"from_name": lstasks.NEW_NAME, "to_name": "image", "type": "textarea",
             "value": {"text": ["  Corvus   novus "]}}
    assert lstasks.choice([cand, tax, named]) == "Corvus novus" == lstasks.new_name([named])
    assert lstasks.new_name([cand, tax]) is None
    assert lstasks.choice([dict(named, value={"text": [" "]}), cand]) == "Pica major"  # a blank name is none


def test_preselect_threshold():
    assert lstasks.preselected(0.8, 0.8) and lstasks.preselected(0.93, 0.8)
    assert not lstasks.preselected(0.13, 0.8) and not lstasks.preselected(None, 0.0)


# ---- with a real server ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory, labelstudio_data):
    """The 100-class project, flagged, and its own Label Studio on a free port (stopped at the end)."""
    area = tmp_path_factory.mktemp("lstask")
    project = make_project(area)
    written = flag(project)
    copy_labelstudio_data(labelstudio_data, project)
    info = ls.start(project, port=free_port(), timeout_s=600)
    assert info.running
    yield project, written
    ls.stop(project)


@pytest.fixture(scope="module")
def pushed(server):
    project, written = server
    report = ls.push(project)
    assert report.pushed == len(FLAGGED)
    return project, written, report


def _sdk(project):
    from label_studio_sdk import LabelStudio

    conn = ls.connection(project)
    return LabelStudio(base_url=conn.url, api_key=conn.token)


def _tasks(sdk, project_id) -> dict[str, object]:
    return {t.data["sample_id"]: t for t in sdk.tasks.list(project=project_id, fields="all")}


def expected_candidates(given: str, probs: dict[str, float], votes: list[str]) -> list[str]:
    top = sorted(probs, key=probs.get, reverse=True)[:TOP_K]
    out = []
    for c in [given, *top, *sorted(set(votes), key=lambda v: (-votes.count(v), votes.index(v)))]:
        if c not in out:
            out.append(c)
    return out + [ls.UNSURE]


@pytest.mark.server
@pytest.mark.slow
def test_push_candidates_preselect_and_numbers(pushed):
    project, written, report = pushed
    sdk = _sdk(project)
    ds = store.dataset(project, create=False)
    given = dict(zip(*ds.values(["id", "ground_truth.label"])))
    votes = {sid: [c.label for c in v.classifications] if v else [] for sid, v in zip(*ds.values(["id", "votes"]))}
    tasks = _tasks(sdk, report.project_id)
    assert set(tasks) == set(written)
    assert any(votes[sid] for sid in written)  # the crowd's votes are among some candidates
    for sid, task in tasks.items():
        w = written[sid]
        data = task.data
        assert [c["value"] for c in data["candidates"]] == expected_candidates(given[sid], w["probs"], votes[sid])
        assert data["candidates"][-1]["hotkey"] == "0" and data["candidates"][0]["hotkey"] == "1"
        # numbers are numbers, rounded
        assert isinstance(data["noise_score"], float) and data["noise_score"] == round(w["noise"], 3)
        assert data["confidence"] == round(w["confidence"], 3) and data["predicted_label"] == w["label"]
        # pre-selected only when confident (the default threshold, 0.8)
        if w["confidence"] >= 0.8:
            (pred,) = task.predictions
            assert pred.result[0]["value"]["choices"] == [w["label"]] and pred.result[0]["from_name"] == "label"
        else:
            assert not task.predictions
        assert w["label"] in [c["value"] for c in data["candidates"]]  # the prediction is still offered
    assert sum(w["confidence"] >= 0.8 for w in written.values()) == 2
    # the labeling config holds the class tree: every class, under its genus and family
    config = ET.fromstring(sdk.projects.get(report.project_id).label_config)
    leaves = [c.get("value") for c in config.find(".//Taxonomy").iter("Choice") if len(c) == 0]
    assert sorted(leaves) == sorted(store.classes(ds)) and len(leaves) == 100


@pytest.mark.server
@pytest.mark.slow
def test_review_tab_types_numbers_and_filters(pushed):
    project, written, report = pushed
    sdk = _sdk(project)
    (tab,) = [v for v in sdk.views.list(project=report.project_id) if v.data.get("title") == "to review"]
    assert tab.data["columnsDisplayType"] == {"tasks:data.noise_score": "Number", "tasks:data.confidence": "Number"}
    hidden = set(tab.data["hiddenColumns"]["explore"])
    assert {"tasks:completed_at", "tasks:annotators", "tasks:data.candidates"} <= hidden
    assert not hidden & {f"tasks:data.{c}" for c in ("given_label", "noise_score", "predicted_label", "confidence")}
    # the tab lists the most doubtful first
    listed = [t.data["sample_id"] for t in sdk.tasks.list(project=report.project_id, view=tab.id)]
    assert listed == sorted(written, key=lambda s: -written[s]["noise"])
    # a number filter on the noise score: 0.62 < 0.9 < 0.91 and 0.88 (a string filter would compare text)
    for op, value, want in (("greater", 0.9, {s for s, w in written.items() if w["noise"] > 0.9}),
                            ("less", 0.5, {s for s, w in written.items() if w["noise"] < 0.5})):
        filtered = sdk.views.create(project=report.project_id, data={
            "title": f"noise {op} {value}",
            "filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:data.noise_score", "operator": op, "type": "Number", "value": value}]},
        })
        got = {t.data["sample_id"] for t in sdk.tasks.list(project=report.project_id, view=filtered.id)}
        assert got == want and 0 < len(got) < len(written)
        sdk.views.delete(str(filtered.id))


def _login(driver, url: str, creds: dict) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "/user/login/")
    driver.find_element(By.NAME, "email").send_keys(creds["username"])
    driver.find_element(By.NAME, "password").send_keys(creds["password"])
    driver.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    _wait(lambda: "/user/login" not in driver.current_url, "the login")


def _wait(ok, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            got = ok()
        except Exception:  # noqa: BLE001 - the page is still being drawn
            got = None
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _in_view(driver, element) -> bool:
    """Whether the element's bounding box lies inside the viewport (no scrolling needed)."""
    return driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.width > 0 && r.height > 0 && r.top >= 0 && r.left >= 0"
        " && r.bottom <= window.innerHeight && r.right <= window.innerWidth;", element)


@pytest.mark.server
@pytest.mark.slow
def test_browser_search_choose_submit_pull(pushed, tmp_path):
    """At 1600x1000 the image and the candidates show without scrolling; a search in the full
    list picks a class; pull applies it."""
    from selenium.webdriver.common.by import By

    from tests.test_dashboard_browser import browser

    project, written, report = pushed
    sdk = _sdk(project)
    conn = ls.connection(project)
    tasks = _tasks(sdk, report.project_id)
    low = next(s for s, w in written.items() if w["confidence"] < 0.8)  # nothing pre-selected
    high = next(s for s, w in written.items() if w["confidence"] >= 0.8)
    ds = store.dataset(project, create=False)
    given = ds[low].ground_truth.label
    target = next(c for c in store.classes(ds) if c.endswith("palustris") and c != given
                  and c not in [x["value"] for x in tasks[low].data["candidates"]])
    SHOTS.mkdir(parents=True, exist_ok=True)
    with browser(tmp_path / "chrome") as d:
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False})
        _login(d, conn.url, ls.credentials(project))
        (tab,) = [v for v in sdk.views.list(project=report.project_id) if v.data.get("title") == "to review"]
        # the review tab: the curation columns come first
        d.get(f"{conn.url}/projects/{report.project_id}/data?tab={tab.id}")
        header = _wait(lambda: d.find_element(By.XPATH, "//*[normalize-space(text())='noise_score']"), "the tab")
        assert _in_view(d, header) and header.rect["x"] < 800
        d.save_screenshot(str(SHOTS / "review_tab.png"))

        # the confident prediction is pre-selected, the unsure one is not
        def checked_candidates(sid):
            d.get(f"{conn.url}/projects/{report.project_id}/data?tab={tab.id}&task={tasks[sid].id}")
            _wait(lambda: len(d.find_elements(By.CSS_SELECTOR, ".ant-checkbox-wrapper")) >= 2, "the candidates")
            time.sleep(2)
            return [e.text.split(" ")[0:2] for e in d.find_elements(By.CSS_SELECTOR, ".ant-checkbox-wrapper-checked")]

        assert [" ".join(w) for w in checked_candidates(high)] == [written[high]["label"]]
        assert checked_candidates(low) == []
        image = d.find_element(By.CSS_SELECTOR, ".lsf-main-view img, .lsf-main-content img, img[alt]")
        labels = [e for e in d.find_elements(By.CSS_SELECTOR, ".ant-checkbox-wrapper")
                  if e.text.split(" ")[0] in {c["value"].split(" ")[0] for c in tasks[low].data["candidates"]}
                  or ls.UNSURE in e.text]
        assert len(labels) == len(tasks[low].data["candidates"])
        assert _in_view(d, image) and all(_in_view(d, e) for e in labels)
        d.save_screenshot(str(SHOTS / "task_1600x1000_before_search.png"))

        # search the full list, pick the class, submit
        d.find_element(By.CSS_SELECTOR, ".htx-taxonomy .ant-select-selector, .ant-select-selector").click()
        search = _wait(lambda: d.find_element(By.CSS_SELECTOR, "input[data-testid=taxonomy-search]"), "the search")
        search.send_keys(target[3:-3])  # part of the class name
        node = _wait(lambda: d.find_element(By.XPATH, f"//*[contains(@class,'ant-select-tree')]//*[@title={json.dumps(target)}]"),
                     "the class in the search results")
        d.execute_script("arguments[0].scrollIntoView({block: 'nearest'})", node)
        d.save_screenshot(str(SHOTS / "task_1600x1000_search.png"))
        node.click()
        time.sleep(1)
        d.save_screenshot(str(SHOTS / "task_1600x1000_after_search.png"))
        d.find_element(By.XPATH, "//button[normalize-space(.)='Submit']").click()
        _wait(lambda: sdk.tasks.get(str(tasks[low].id)).annotations, "the annotation")

    out = ls.pull(project)
    assert out.changed == 1, out
    ds.reload()
    assert ds[low].ground_truth.label == target
    assert [(e.old, e.new, e.source) for e in ds[low].label_history] == [(given, target, "labelstudio")]


# ---- answers on the class tree (after the browser test: these pull their own tasks only) -------------------
def _task_of(project, sdk, report, k: int):
    ds = store.dataset(project, create=False)
    sid = dict(zip(*ds.values(["filepath", "id"])))[str(project.root.parent / "images" / "birds" / f"c{k:03d}_0.jpg")]
    return sid, _tasks(sdk, report.project_id)[sid]


def _genus(taxonomy_path: list[str]) -> list[dict]:
    return [{"from_name": lstasks.FULL_NAME, "to_name": "image", "type": "taxonomy",
             "value": {"taxonomy": [taxonomy_path]}}]


@pytest.mark.server
@pytest.mark.slow
def test_a_genus_answer_is_recorded_with_its_rank_and_the_label_is_kept(pushed):
    """One answer at the genus; two that split between two species of one genus (> 2/3 agree on
    it): each is a genus-level answer in label_history, the sample stays unresolved."""
    project, _, report = pushed
    sdk = _sdk(project)
    ds = store.dataset(project, create=False)
    picked, split = _task_of(project, sdk, report, 3), _task_of(project, sdk, report, 6)
    sdk.annotations.create(picked[1].id, result=_genus(["Corvidae", "Corvus"]))
    for species in ("Pica major", "Pica borealis"):  # c006 is a Pica
        sdk.annotations.create(split[1].id, result=_genus(["Corvidae", "Pica", species]))
    given = {sid: ds[sid].ground_truth.label for sid, _ in (picked, split)}
    out = ls.pull(project, task_ids=[picked[1].id, split[1].id])
    assert (out.coarse, out.changed, out.accepted, out.unsure) == (2, 0, 0, 0), out
    ds.reload()
    for (sid, _), genus in ((picked, "Corvus"), (split, "Pica")):
        assert ds[sid].ground_truth.label == given[sid]  # the project labels at the species
        last = ds[sid].label_history[-1]
        assert (last.old, last.new, last.answer, last.answer_rank, last.source) == (
            given[sid], given[sid], genus, "genus", "labelstudio")
        assert ds[sid].review_state == "answered"
    events = store.warehouse(project).query(
        "SELECT sample_id, answer, answer_rank FROM label_events WHERE answer IS NOT NULL")
    assert sorted(map(tuple, events.to_numpy().tolist())) == sorted(
        [(picked[0], "Corvus", "genus"), (split[0], "Pica", "genus")])
    assert ls.pull(project, task_ids=[picked[1].id]).unchanged == 1  # applied once


@pytest.mark.server
@pytest.mark.slow
def test_a_new_species_name_creates_the_class_under_its_genus(pushed):
    project, _, report = pushed
    sdk = _sdk(project)
    sid, task = _task_of(project, sdk, report, 5)
    sdk.annotations.create(task.id, result=[{"from_name": lstasks.NEW_NAME, "to_name": "image", "type": "textarea",
                                            "value": {"text": ["Garrulus novus"]}}])
    out = ls.pull(project, task_ids=[task.id])
    assert (out.changed, out.new_classes) == (1, ["Garrulus novus"]), out
    ds = store.dataset(project, create=False)
    ds.reload()
    assert ds[sid].ground_truth.label == "Garrulus novus" and "Garrulus novus" in store.classes(ds)
    assert lstasks.class_paths(project)["Garrulus novus"] == ["Corvidae", "Garrulus", "Garrulus novus"]
