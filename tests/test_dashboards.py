"""The Streamlit dashboards, rendered with AppTest.

Two kinds of project: ``looped`` (conftest), a tiny project the real steps ran on (ingest, embed,
predict, evaluate, train, flag, retrain, flag), whose pages must show the numbers the steps
reported and the store holds; and a warehouse written here for what that loop does not reach
(filled classes, pseudo-labels, Label Studio tasks, annotators, two backbones), every name from
:mod:`fieldguide.names` and every answer in the form the pull writes. Empty projects too.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

from fieldguide import names
from fieldguide.config import PROJECT_ENV
from fieldguide.dashboards import charts
from fieldguide.platform.warehouse import Warehouse
from conftest import make_image


APP = Path(__file__).resolve().parents[1] / "fieldguide" / "dashboards" / "app.py"
PAGES = ["sections/health.py", "sections/review.py", "sections/relabel.py", "sections/models.py",
         "sections/benchmarks.py", "sections/where_when.py", "sections/backbones.py"]
T0 = dt.datetime(2025, 5, 1, 9, 0, 0)

COLORS = {"red_bird": (200, 40, 40), "green_bird": (40, 180, 60), "blue_bird": (40, 60, 200),
          "yellow_bird": (220, 210, 40), "black_bird": (20, 20, 20)}
# real samples per class: (train, test); yellow_bird and black_bird are scarce (< 10 train)
REAL = {"red_bird": (14, 3), "green_bird": (12, 3), "blue_bird": (11, 2),
        "yellow_bird": (4, 1), "black_bird": (2, 1)}
# the samples the last flag run marks, with their noise score and predicted label (best first)
FLAGGED = [("s-red_bird-train-0", 0.97, "blue_bird"), ("s-green_bird-train-1", 0.91, "red_bird"),
           ("s-blue_bird-train-2", 0.85, "green_bird"), ("s-red_bird-train-3", 0.74, "green_bird"),
           ("s-yellow_bird-train-0", 0.66, "red_bird"), ("s-blue_bird-test-0", 0.58, "green_bird")]
OUTLIERS = {"s-black_bird-train-0": 0.05, "s-green_bird-train-5": 0.12, "s-red_bird-test-1": 0.2}
NEAR_DUPLICATES = ("s-red_bird-train-7", "s-red_bird-train-8")
PENDING_PSEUDO = ("black_bird", "green_bird")


def t(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def run_row(run_id: str, kind: str, minute: float, **config) -> dict:
    return {"run_id": run_id, "kind": kind, "config": json.dumps(config), "status": "completed",
            "started": t(minute), "finished": t(minute + 1), "message": None}


def pulled_answer(sample_id: str, decision: str | None, samples: list[dict]) -> str | None:
    """A task's ``answer`` as ``relabel pull`` stores it (JSON: votes, the label given, the decision)."""
    if decision is None:
        return None
    given = next(s["label"] for s in samples if s["sample_id"] == sample_id)
    return json.dumps({"fingerprint": [[1, "2025-05-01", decision, False]], "run_id": "relabel_pull-1",
                       "given": given, "votes": [["curator@fieldguide.local", decision]], "rule": "majority",
                       "outcome": "accepted" if decision == given else "changed", "decision": decision},
                      sort_keys=True)


def build_warehouse(project) -> Warehouse:
    """Every table the pipeline writes, with realistic rows and real JPEG thumbnails."""
    wh = Warehouse(project.warehouse_path)
    images = project.root / "images"
    flagged = {sid: (score, pred) for sid, score, pred in FLAGGED}
    samples, seed = [], 0
    for label, (n_train, n_test) in REAL.items():
        for split, n in (("train", n_train), ("test", n_test)):
            for i in range(n):
                seed += 1
                sid = f"s-{label}-{split}-{i}"
                path = make_image(images / label / f"{label}_{split}_{i}.jpg", COLORS[label], seed=seed)
                score, pred = flagged.get(sid, (0.1, label))
                samples.append({"sample_id": sid, "filepath": str(path), "label": label, "split": split,
                                "origin": "real", "predicted_label": pred, "confidence": 0.9 - score / 2,
                                "noise_score": score, "label_issue": sid in flagged, "updated": t(60)})
    for origin, label, n in (("pseudo", "yellow_bird", 3), ("synthetic", "black_bird", 2)):
        for i in range(n):
            path = make_image(images / origin / f"{label}_{i}.jpg", COLORS[label], seed=100 + i)
            samples.append({"sample_id": f"s-{origin}-{i}", "filepath": str(path), "label": label,
                            "split": "train", "origin": origin, "predicted_label": label,
                            "confidence": 0.8, "noise_score": 0.05, "label_issue": False, "updated": t(60)})
    for i, pseudo in enumerate(PENDING_PSEUDO):  # unlabeled, with a pseudo-label pending review
        path = make_image(images / "unlabeled" / f"u_{i}.jpg", (128, 128, 128), seed=200 + i)
        samples.append({"sample_id": f"s-unlabeled-{i}", "filepath": str(path), "label": None,
                        "split": "unlabeled", "origin": "real", "predicted_label": "red_bird",
                        "confidence": 0.4, "noise_score": None, "label_issue": False,
                        "pseudo_label": pseudo, "pseudo_confidence": 0.8, "updated": t(60)})
    wh.write("samples", samples)

    wh.write("runs", [
        run_row("ingest-0", "ingest", 0), run_row("ingest-1", "ingest", 5),
        run_row("embed-1", "embed", 10, backbone="efficientnet_lite0"),
        run_row("predict-1", "predict", 15, head="logreg", folds=5),
        run_row("flag-1", "flag", 20), run_row("evaluate-a", "evaluate", 25, backbone="efficientnet_lite0"),
        run_row("train-1", "train", 30, backbone="efficientnet_lite0", method="two-stage-entropy"),
        run_row("relabel_push-1", "relabel_push", 35), run_row("relabel_pull-1", "relabel_pull", 50),
        run_row("retrain-1", "retrain", 55, backbone="efficientnet_lite0"),
        run_row("flag-2", "flag", 60),
        run_row("evaluate-b", "evaluate", 65, models={"backbone": "vit_small"}),
    ])
    wh.write("rejects", [
        {"run_id": "ingest-0", "path": "/data/old/broken.jpg", "reason": "not an image"},
        {"run_id": "ingest-1", "path": "/data/new/empty.jpg", "reason": "empty file"},
        {"run_id": "ingest-1", "path": "/data/new/notes.txt", "reason": "not an image"},
        # a notice: ingested, with a decision the curator should know of; not a reject
        {"run_id": "ingest-1", "path": "/data/new/twice.jpg", "reason": "listed 2 times (identical rows)",
         "kind": "notice"},
    ])
    wh.write("metrics", [
        {"run_id": "flag-1", "split": "all", "name": names.FLAGGED, "value": 9},
        {"run_id": "flag-2", "split": "all", "name": names.FLAGGED, "value": 6},
        *({"run_id": "evaluate-a", "split": "test", "name": k, "value": v} for k, v in
          {"top1": 0.71, "top5": 0.93, "macro_f1": 0.62, "ece": 0.08, "cost_score": 0.35}.items()),
        *({"run_id": "evaluate-b", "split": "test", "name": k, "value": v} for k, v in
          {"top1": 0.78, "top5": 0.95, "macro_f1": 0.70, "ece": 0.06, "cost_score": 0.27,
           "params": 22_000_000, "macs": 4_600_000_000, "images_per_s": 310.0}.items()),
        {"run_id": "train-1", "split": "val", "name": "top1", "value": 0.75},
    ])
    wh.write("backbone_costs", [{"backbone": "efficientnet_lite0", "params": 4_652_008, "macs": 385_000_000,
                                 "input_size": 224, "images_per_s": 850.0, "measured": t(10)}])
    curves = []
    for step in range(1, 21):
        lam = 0.1 if step < 17 else -0.05  # two-stage entropy: explore, then exploit from step 17
        for name, value in ((names.LOSS, 2.0 / step), (names.TRAIN_ACC, min(0.95, 0.3 + step * 0.03)),
                            (names.EVAL_ACC, 0.5 + step * 0.01), (names.MEAN_ENTROPY, 1.5 - step * 0.05),
                            (names.LAMBDA, lam)):
            curves.append({"run_id": "train-1", "step": step, "name": name, "value": value})
    wh.write("curves", curves)
    f1 = {"evaluate-a": {"red_bird": 0.8, "green_bird": 0.7, "blue_bird": 0.5, "yellow_bird": 0.6, "black_bird": 0.5},
          "evaluate-b": {"red_bird": 0.85, "green_bird": 0.75, "blue_bird": 0.45, "yellow_bird": 0.8, "black_bird": 0.65}}
    wh.write("class_metrics", [
        {"run_id": run, "split": "test", "class": c, "precision": v, "recall": v, "f1": v, "support": REAL[c][1]}
        for run, per in f1.items() for c, v in per.items()
    ])
    cells = {("red_bird", "red_bird"): 3, ("green_bird", "green_bird"): 2, ("green_bird", "red_bird"): 1,
             ("blue_bird", "blue_bird"): 1, ("blue_bird", "green_bird"): 3, ("yellow_bird", "red_bird"): 2,
             ("black_bird", "black_bird"): 1}
    wh.write("confusions", [{"run_id": "evaluate-b", "split": "test", "true_label": a, "predicted_label": b,
                             "count": n} for (a, b), n in cells.items()])

    signals = []
    for s in samples:
        sid = s["sample_id"]
        if s["label"] is None:
            continue
        for run in ("flag-1", "flag-2"):
            issue = sid in flagged if run == "flag-2" else sid in flagged or sid.endswith("train-9")
            signals += [
                {"run_id": run, "sample_id": sid, "signal": names.LABEL_ISSUE, "value": float(issue)},
                {"run_id": run, "sample_id": sid, "signal": names.NOISE_SCORE, "value": s["noise_score"]},
            ]
        signals += [
            {"run_id": "flag-2", "sample_id": sid, "signal": names.LABEL_QUALITY, "value": 1 - s["noise_score"]},
            {"run_id": "flag-2", "sample_id": sid, "signal": names.OUTLIER_SCORE, "value": OUTLIERS.get(sid, 0.8)},
            {"run_id": "flag-2", "sample_id": sid, "signal": names.IS_OUTLIER, "value": float(sid in OUTLIERS)},
            {"run_id": "flag-2", "sample_id": sid, "signal": names.IS_NEAR_DUPLICATE,
             "value": float(sid in NEAR_DUPLICATES)},
            {"run_id": "flag-2", "sample_id": sid, "signal": names.NEAR_DUPLICATE_SCORE,
             "value": 0.01 if sid in NEAR_DUPLICATES else 0.9},
            {"run_id": "flag-2", "sample_id": sid, "signal": names.KNN_DISAGREEMENT,
             "value": 0.9 if sid in flagged else 0.1},
        ]
    wh.write("signals", signals)
    wh.write("annotators", [
        {"run_id": "flag-1", "annotator": "old_run_annotator", "quality": 0.5, "agreement": 0.5, "num_labels": 3},
        {"run_id": "flag-2", "annotator": "ana", "quality": 0.92, "agreement": 0.88, "num_labels": 40},
        {"run_id": "flag-2", "annotator": "ben", "quality": 0.81, "agreement": 0.79, "num_labels": 25},
        {"run_id": "flag-2", "annotator": "cai", "quality": 0.64, "agreement": 0.6, "num_labels": 15},
        {"run_id": "flag-2", "annotator": "dee", "quality": 0.31, "agreement": 0.35, "num_labels": 20},
    ])
    # 9 tasks: 5 answered (2 changed: a red/green swap, 3 kept), 2 pending, 1 skipped, 1 closed by a
    # curator's decision in the App
    tasks = [("s-red_bird-train-10", "answered", "green_bird"), ("s-green_bird-train-10", "answered", "red_bird"),
             ("s-blue_bird-train-10", "answered", "blue_bird"), ("s-red_bird-train-11", "answered", "red_bird"),
             ("s-green_bird-train-11", "answered", "green_bird"), (FLAGGED[0][0], "pushed", None),
             (FLAGGED[1][0], "pushed", None), ("s-black_bird-train-0", "skipped", None),
             ("s-blue_bird-train-9", "closed", "blue_bird")]
    wh.write("relabel_tasks", [
        {"project": "fieldguide-review", "sample_id": sid, "task_id": 100 + i, "status": status, "pushed": t(35),
         "answered": t(45 + i) if status != "pushed" else None, "answer": pulled_answer(sid, answer, samples)}
        for i, (sid, status, answer) in enumerate(tasks)
    ])
    # accepting the answers changed two labels (the store's snapshot holds the new ones); an older
    # crowd event, before the push, does not count as a change
    swapped = {"s-red_bird-train-10": ("red_bird", "green_bird"), "s-green_bird-train-10": ("green_bird", "red_bird")}
    events = [{"event_id": f"e-{sid}", "sample_id": sid, "old": old, "new": new, "source": "labelstudio",
               "actor": "curator@fieldguide.local", "time": t(51), "run_id": "relabel_pull-1"}
              for sid, (old, new) in swapped.items()]
    events.append({"event_id": "e-crowd", "sample_id": "s-red_bird-train-11", "old": None, "new": "red_bird",
                   "source": "crowd", "actor": "ana", "time": t(1), "run_id": "ingest-0"})
    wh.write("label_events", events)
    wh.write("samples", [dict(s, label=swapped[s["sample_id"]][1]) for s in samples if s["sample_id"] in swapped])
    return wh


@pytest.fixture
def full_project(project, monkeypatch):
    build_warehouse(project)
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    return project


@pytest.fixture
def empty_project(project, monkeypatch):
    """A new project: no warehouse file at all."""
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    return project


def render(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def frame(at: AppTest, alt: str) -> pd.DataFrame:
    """The table shown with this alt text."""
    found = [d for d in at.dataframe if d.proto.alt == alt]
    assert len(found) == 1, f"{len(found)} tables with alt text {alt!r}: {[d.proto.alt for d in at.dataframe]}"
    return found[0].value


def vega_charts(at: AppTest) -> list[tuple[dict, list[pd.DataFrame]]]:
    """Every Vega-Lite chart shown: its spec and the data frames it plots."""
    out = []
    for chart in at.get("vega_lite_chart"):
        data = [pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets]
        out.append((json.loads(chart.proto.spec), data))
    return out


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "code", "warning")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


# ---- the full warehouse ----------------------------------------------------------------
def test_health_page_counts_classes_splits_origins_rejects(full_project):
    at = render()  # the default page
    assert at.title[0].value == "Dataset health"
    assert metrics(at) == {"Samples": "60", "Classes": "5", "Scarce classes": "2",
                           "Rejects (last ingest)": "2", "Near-duplicates": "2", "Outliers": "3"}
    scarce = frame(at, "scarce classes")
    assert scarce["class"].tolist() == ["black_bird", "yellow_bird"]
    assert scarce["train"].tolist() == [4, 7]  # 2 real + 2 synthetic; 4 real + 3 pseudo
    split = frame(at, "per split").set_index("split")["n"].to_dict()
    assert split == {"train": 48, "test": 10, "unlabeled": 2}
    origin = frame(at, "per origin").set_index("origin")["n"].to_dict()
    assert origin == {"real": 55, "pseudo": 3, "synthetic": 2}
    assert sorted(frame(at, "rejects")["path"]) == ["/data/new/empty.jpg", "/data/new/notes.txt"]
    assert frame(at, "reject reasons").set_index("reason")["files"].to_dict() == {"empty file": 1, "not an image": 1}
    assert sorted(frame(at, "near duplicates")["sample_id"]) == list(NEAR_DUPLICATES)
    outliers = frame(at, "outliers")
    assert outliers["sample_id"].head(3).tolist() == list(OUTLIERS)
    assert outliers["outlier_score"].iloc[0] == pytest.approx(0.05)
    fill = frame(at, "class fill").set_index("class")
    assert fill.index.tolist() == ["black_bird", "yellow_bird", "green_bird"]  # fewest training labels first
    assert fill.loc["black_bird", ["real", "synthetic", "pseudo_accepted", "pseudo_pending"]].tolist() == [2, 2, 0, 1]
    assert fill.loc["yellow_bird", ["real", "synthetic", "pseudo_accepted", "pseudo_pending"]].tolist() == [4, 0, 3, 0]
    assert fill.loc["green_bird", ["real", "pseudo_pending", "train_labels"]].tolist() == [12, 1, 12]
    assert fill["still_scarce"].tolist() == [True, True, False]
    assert "2 of 3 classes still under 10" in texts(at)
    shown = vega_charts(at)
    assert len(shown) == 4  # the long tail, class fill, per split, per origin
    fill_data = next(d for d in shown[1][1] if "kind" in d)
    assert fill_data.groupby("kind")["samples"].sum().to_dict() == {
        "real": 18, "synthetic": 2, "pseudo_accepted": 3, "pseudo_pending": 2}
    spec, data = shown[0]
    bars_spec = spec["layer"][0]["layer"][0]  # labelled horizontal bars, most samples first
    assert bars_spec["encoding"]["y"]["sort"] == ["red_bird", "green_bird", "blue_bird", "yellow_bird", "black_bird"]
    assert spec["height"] == {"step": charts.BAR_STEP}
    bars = next(d for d in data if "kind" in d)
    assert bars.set_index("class")["kind"].to_dict() == {
        "red_bird": "enough", "green_bird": "enough", "blue_bird": "enough", "yellow_bird": "scarce", "black_bird": "scarce"}
    assert bars.set_index("class")["samples"].to_dict() == {
        "red_bird": 17, "green_bird": 15, "blue_bird": 13, "yellow_bird": 8, "black_bird": 5}


def test_review_page_shows_queue_thumbnails_and_signals(full_project):
    at = render("sections/review.py")
    assert at.title[0].value == "Review queue"
    shown = metrics(at)
    assert (shown["Flagged now"], shown["Flagged by the last run"], shown["Flag runs"]) == ("6", "6", "2")
    assert [m for m in at.metric if m.label == "Flagged by the last run"][0].proto.delta == "-3"
    captions = [c for img in at.image for c in img.captions]
    assert captions == [f"{sid.split('-')[1]} → {pred} · noise {score:.2f}" for sid, score, pred in FLAGGED]
    assert captions[0] == "red_bird → blue_bird · noise 0.97"
    assert all(url for img in at.image for url in img.value)  # served thumbnails
    assert any(c.value == f"fieldguide --project {full_project.root} app --view to_review" for c in at.code)
    table = frame(at, "flagged signals")
    assert table["sample_id"].tolist() == [sid for sid, _, _ in FLAGGED]
    assert {names.LABEL_QUALITY, names.OUTLIER_SCORE, names.IS_NEAR_DUPLICATE, names.KNN_DISAGREEMENT,
            names.LABEL_ISSUE} <= set(table.columns)
    assert table["label_issue"].tolist() == [1.0] * 6  # the newest flag run's values
    assert table["knn_disagreement"].tolist() == [0.9] * 6
    flags = frame(at, "signal flags").set_index("signal")["flagged"].to_dict()
    assert flags == {names.LABEL_ISSUE: 6, names.IS_NEAR_DUPLICATE: 2, names.IS_OUTLIER: 3}
    scores = frame(at, "signal scores").set_index("signal")
    assert scores.loc[names.OUTLIER_SCORE, "min"] == pytest.approx(0.05)
    assert scores.loc[names.LABEL_QUALITY, "run_id"] == "flag-2"
    assert names.LABEL_ISSUE not in scores.index
    # the two flag runs on a time axis that tells them apart, the counts written by the points
    spec, data = next((sp, d) for sp, d in vega_charts(at) if any("flagged" in x for x in d))
    history = next(d for d in data if "flagged" in d)
    assert history["flagged"].tolist() == [9, 6]
    x = spec["layer"][0]["encoding"]["x"]
    assert x["type"] == "temporal" and x["axis"]["format"] == "%H:%M:%S"  # 40 minutes apart
    assert "review states" not in [d.proto.alt for d in at.dataframe]  # no review_state column yet

    at.slider[0].set_value(4).run()  # fewer thumbnails
    assert len([c for img in at.image for c in img.captions]) == 4


def test_relabel_page_counts_tasks_outcomes_annotators(full_project):
    at = render("sections/relabel.py")
    assert at.title[0].value == "Relabeling"
    shown = metrics(at)
    keys = ("Tasks pushed", "Answered", "Pending", "Skipped", "Closed by a curator", "Labels changed")
    assert {k: shown[k] for k in keys} == {"Tasks pushed": "9", "Answered": "5", "Pending": "2", "Skipped": "1",
                                           "Closed by a curator": "1", "Labels changed": "40%"}
    per_project = frame(at, "tasks per project")
    assert per_project.to_dict("records") == [
        {"project": "fieldguide-review", "tasks": 9, "answered": 5, "pending": 2, "skipped": 1,
         "closed by a curator": 1}]
    assert frame(at, "outcomes").set_index("outcome")["tasks"].to_dict() == {"changed": 2, "kept": 3}
    moves = frame(at, "label changes")
    assert sorted(zip(moves["from"], moves["to"])) == [("green_bird", "red_bird"), ("red_bird", "green_bird")]
    people = frame(at, "annotators")
    assert people["annotator"].tolist() == ["ana", "ben", "cai", "dee"]  # newest run only, best first
    assert shown["Annotators"] == "4"
    assert shown["Agreement (label-weighted)"] == "0.71"
    assert shown["Lowest quality"] == "0.31"
    events = frame(at, "label events")
    assert events["source"].tolist() == ["labelstudio", "labelstudio", "crowd"]


def test_models_page_leaderboard_curves_f1_confusions(full_project):
    at = render("sections/models.py")
    assert at.title[0].value == "Models"
    board = frame(at, "leaderboard")
    assert board["run_id"].tolist() == ["evaluate-b", "evaluate-a"]
    assert board["backbone"].tolist() == ["vit_small", "efficientnet_lite0"]
    assert board["macro_f1"].tolist() == pytest.approx([0.70, 0.62])
    assert board["top1"].tolist() == pytest.approx([0.78, 0.71])
    assert board["cost_score"].tolist() == pytest.approx([0.27, 0.35])
    assert board["params"].tolist() == [22_000_000, 4_652_008]  # evaluate-a's from backbone_costs
    assert board["images_per_s"].tolist() == pytest.approx([310.0, 850.0])

    curves = frame(at, "curve summary").iloc[0]
    assert curves["run_id"] == "train-1" and curves["epochs"] == 20
    assert curves["method"] == "two-stage-entropy" and curves["lambda_switch_epoch"] == 17
    assert curves["final_loss"] == pytest.approx(0.1)
    assert curves["final_train_acc"] == pytest.approx(0.9) and curves["final_eval_acc"] == pytest.approx(0.7)
    assert curves["final_mean_entropy"] == pytest.approx(0.5)
    # two backbones at two speeds: macro-F1 against images/s, on a 0..1 scale
    spec, data = next((sp, d) for sp, d in vega_charts(at) if sp.get("title") == "accuracy against speed")
    points = next(d for d in data if names.IMAGES_PER_S in d)
    assert sorted(zip(points["backbone"], points[names.IMAGES_PER_S])) == [("efficientnet_lite0", 850.0),
                                                                           ("vit_small", 310.0)]
    assert spec["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 1]

    shown = metrics(at)
    assert (shown["Classes better"], shown["Classes worse"], shown["Mean F1 change"]) == ("4", "1", "+0.080")
    change = frame(at, "class f1 change")
    assert change["class"].iloc[0] == "blue_bird" and change["change"].iloc[0] == pytest.approx(-0.05)
    assert change.set_index("class").loc["yellow_bird", "change"] == pytest.approx(0.2)

    pairs = frame(at, "most confused")
    assert list(zip(pairs["true_label"], pairs["predicted_label"], pairs["count"])) == [
        ("blue_bird", "green_bird", 3), ("yellow_bird", "red_bird", 2), ("green_bird", "red_bird", 1)]
    assert pairs["share"].tolist() == pytest.approx([0.75, 1.0, 1 / 3])

    # the leaderboard on the val split holds the training run
    at.selectbox(key="leaderboard_split").set_value("val").run()
    assert frame(at, "leaderboard")["run_id"].tolist() == ["train-1"]
    # swapping the two runs flips the F1 changes
    at.selectbox(key="f1_run_a").set_value("evaluate-b")
    at.selectbox(key="f1_run_b").set_value("evaluate-a").run()
    shown = metrics(at)
    assert (shown["Classes better"], shown["Classes worse"], shown["Mean F1 change"]) == ("1", "4", "-0.080")


def test_runs_at_one_speed_draw_no_accuracy_speed_plot(full_project):
    Warehouse(full_project.warehouse_path).write("metrics", [
        {"run_id": "evaluate-b", "split": "test", "name": names.IMAGES_PER_S, "value": 850.0}])
    at = render("sections/models.py")
    assert frame(at, "leaderboard")[names.IMAGES_PER_S].tolist() == [850.0, 850.0]
    assert not any(spec.get("title") == "accuracy against speed" for spec, _ in vega_charts(at))
    assert "runs at 850.0 images/s (efficientnet_lite0, vit_small): no accuracy-speed trade-off" in texts(at)


def test_the_matrix_size_and_the_app_port_come_from_the_project_file(full_project):
    from fieldguide.config import dump_config

    config = full_project.config
    config.dashboards.matrix_max_classes = 3
    config.app.port = 6123
    full_project.config_path.write_text(dump_config(config))
    at = render("sections/review.py")
    assert "http://127.0.0.1:6123/datasets/" in texts(at)
    at = render("sections/models.py")
    assert "Showing the 3 classes in the most-confused pairs." in texts(at)


def test_review_page_counts_review_states_when_the_snapshot_has_them(full_project):
    wh = Warehouse(full_project.warehouse_path)
    states = {"to_review": 3, "pushed": 2, "resolved": 1}
    ids = [sid for sid, _, _ in FLAGGED]
    with wh.connect() as con:
        start = 0
        for state, n in states.items():
            for sid in ids[start:start + n]:
                con.execute("UPDATE samples SET review_state = ? WHERE sample_id = ?", [state, sid])
            start += n
    at = render("sections/review.py")
    assert frame(at, "review states").set_index("state")["samples"].to_dict() == states


# ---- a project the real loop ran on (conftest's looped) ------------------------------------------
@pytest.fixture
def looped_env(looped, monkeypatch):
    project, truth = looped
    monkeypatch.setenv(PROJECT_ENV, str(project.root))
    return project, truth


def chart_of(at: AppTest, *columns: str) -> tuple[dict, pd.DataFrame]:
    """The one chart whose data has ``columns``: its spec and that data."""
    found = [(spec, d) for spec, data in vega_charts(at) for d in data if set(columns) <= set(d.columns)]
    assert len(found) == 1, f"{len(found)} charts plot {columns}"
    return found[0]


def test_loop_health_page_shows_what_ingest_and_flag_report(looped_env):
    project, truth = looped_env
    status, report = truth["status"], truth["flag"]
    at = render()
    shown = metrics(at)
    assert (shown["Samples"], shown["Classes"]) == (str(status["samples"]), str(status["classes"]))
    assert shown["Rejects (last ingest)"] == str(status["rejects"]) == "2"
    # Datalab's flags: what flag reports and what the App's outliers and near_duplicates views hold
    assert report.outliers > 0 and report.near_duplicates > 0
    assert shown["Outliers"] == str(report.outliers) == str(truth["views"]["outliers"])
    assert shown["Near-duplicates"] == str(report.near_duplicates) == str(truth["views"]["near_duplicates"])
    assert sorted(frame(at, "outliers")["sample_id"]) == truth["tagged"]["outlier"]
    assert sorted(frame(at, "near duplicates")["sample_id"]) == truth["tagged"]["near_duplicate"]
    # (a threshold on outlier_score, as the page once counted, gives another number here)
    wh = Warehouse(project.warehouse_path)
    low = wh.query("SELECT count(*) FROM signals WHERE run_id = ? AND signal = ? AND value <= 0.2",
                   [report.run_id, names.OUTLIER_SCORE]).iloc[0, 0]
    assert low != report.outliers

    assert frame(at, "per split").set_index("split")["n"].to_dict() == status["splits"]
    assert frame(at, "per origin").set_index("origin")["n"].to_dict() == status["origins"]
    for field, counts in (("split", status["splits"]), ("origin", status["origins"])):
        spec, data = chart_of(at, field)
        # one horizontal bar per category, named on its axis, its count written beside it, a bar's
        # height per category (not a fixed height the axes squeeze the bars out of)
        bars, label = spec["layer"]
        assert bars["encoding"]["y"] == {**bars["encoding"]["y"], "field": field, "type": "nominal"}
        assert label["mark"]["type"] == "text" and label["encoding"]["text"]["field"] == "n"
        assert spec["height"] == {"step": charts.BAR_STEP}
        assert data.set_index(field)["n"].to_dict() == counts
    per_class = chart_of(at, "kind", "train")[1].set_index("class")["samples"].to_dict()
    assert per_class == status["per_class"]


def test_loop_review_page_shows_what_flag_reports(looped_env):
    project, truth = looped_env
    report, first = truth["flag"], truth["flag_1"]
    at = render("sections/review.py")
    shown = metrics(at)
    assert shown["Flagged now"] == str(truth["label_issue"])
    # the review states the store holds (the queue: flagged train samples, fieldguide.platform.review)
    states = frame(at, "review states").set_index("state")["samples"].to_dict()
    assert states == {k: v for k, v in truth["review_counts"].items() if v}
    assert states.get("to_review", 0) == truth["views"]["to_review"] == report.queued
    assert shown["In the review queue"] == str(report.queued)
    assert shown["Flagged by the last run"] == str(report.flagged)
    assert shown["Flag runs"] == "2"
    assert sorted(frame(at, "flagged signals")["sample_id"]) == truth["tagged"]["to_review"]
    flags = frame(at, "signal flags").set_index("signal")["flagged"].to_dict()
    assert flags[names.LABEL_ISSUE] == report.flagged
    assert flags[names.IS_OUTLIER] == report.outliers
    assert flags[names.IS_NEAR_DUPLICATE] == report.near_duplicates
    scores = frame(at, "signal scores")
    assert {names.NOISE_SCORE, names.OUTLIER_SCORE, names.NEAR_DUPLICATE_SCORE} <= set(scores["signal"])
    assert set(scores["run_id"]) == {report.run_id}
    spec, history = chart_of(at, "flagged", "started")
    assert history["run_id"].tolist() == [first.run_id, report.run_id]
    assert history["flagged"].tolist() == [first.flagged, report.flagged]
    x = spec["layer"][0]["encoding"]["x"]
    assert x["type"] == "temporal" and x["axis"]["format"] == "%H:%M:%S"  # runs seconds apart


def test_loop_models_page_shows_what_training_and_evaluate_report(looped_env):
    project, truth = looped_env
    ev, trained, retrained = truth["evaluate"], truth["train"], truth["retrain"][0]
    at = render("sections/models.py")
    board = frame(at, "leaderboard").set_index("run_id")
    assert set(board.index) == {ev["run_id"], trained.run_id, retrained.run_id}
    assert board.loc[ev["run_id"], ["top1", "macro_f1"]].tolist() == pytest.approx([ev["top1"], ev["macro_f1"]])
    for run in (trained, retrained):
        assert board.loc[run.run_id, ["top1", "macro_f1"]].tolist() == pytest.approx([run.top1, run.macro_f1])
    # the evaluate run's backbone is its predict run's
    assert set(board["backbone"]) == {project.config.models.backbone}

    curves = frame(at, "curve summary").set_index("run_id")
    for run in (trained, retrained):
        last = truth["last_epoch"][run.run_id]
        row = curves.loc[run.run_id]
        assert row["method"] == run.method
        assert row["epochs"] == run.epochs
        assert row["final_eval_acc"] == pytest.approx(run.top1)  # the last epoch's model is the run's
        assert row["final_train_acc"] == pytest.approx(last[names.TRAIN_ACC])
        assert row["final_loss"] == pytest.approx(last[names.LOSS])
        assert row["final_mean_entropy"] == pytest.approx(last[names.MEAN_ENTROPY])
    assert curves["method"].to_dict() == {trained.run_id: "two-stage-entropy", retrained.run_id: "ce"}
    assert not any(spec.get("title") == "accuracy against speed" for spec, _ in vega_charts(at))  # one backbone

    at.selectbox(key="confusion_run").set_value(f"{ev['run_id']} (test)").run()
    pairs = frame(at, "most confused")
    assert [dict(true=t, predicted=p, count=n) for t, p, n in
            zip(pairs["true_label"], pairs["predicted_label"], pairs["count"])] == ev["most_confused"]


def test_sidebar_names_the_project(full_project):
    at = render()
    assert "testproj" in [m.value.strip("*") for m in at.sidebar.markdown]


# ---- empty projects --------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_a_new_project_says_what_to_run(empty_project, page):
    at = render(page)
    assert not at.metric
    shown = texts(at)
    assert at.info, shown
    if page != "sections/benchmarks.py":
        assert not at.dataframe
        assert f"fieldguide --project {empty_project.root} ingest IMAGES_DIR" in [c.value for c in at.code]
    else:  # the benchmark page reads the warehouse only (tests/test_bench_results.py shows it full)
        assert "No benchmark recorded yet" in shown and not at.dataframe


@pytest.mark.parametrize("page", PAGES)
def test_every_page_on_an_empty_warehouse_says_what_to_run(empty_project, page):
    wh = Warehouse(empty_project.warehouse_path)
    with wh.connect():  # the schema, no rows
        pass
    assert wh.query("SELECT count(*) FROM runs").iloc[0, 0] == 0
    at = render(page)
    assert at.info and not at.metric
    if page != "sections/benchmarks.py":
        assert f"fieldguide --project {empty_project.root} ingest IMAGES_DIR" in [c.value for c in at.code]


def test_after_ingest_only_pages_point_to_the_next_steps(empty_project):
    wh = Warehouse(empty_project.warehouse_path)
    wh.write("runs", [run_row("ingest-1", "ingest", 0)])
    wh.write("samples", [{"sample_id": f"s{i}", "filepath": f"/x/{i}.jpg", "label": "red_bird", "split": "train",
                          "origin": "real", "label_issue": False} for i in range(3)])
    at = render()
    assert metrics(at)["Samples"] == "3" and metrics(at)["Scarce classes"] == "1"
    assert "No outlier signal yet (run flag)." in texts(at)

    at = render("sections/review.py")
    codes = [c.value for c in at.code]
    root = empty_project.root
    assert codes == [f"fieldguide --project {root} embed", f"fieldguide --project {root} flag"]
    at = render("sections/models.py")
    assert f"fieldguide --project {root} evaluate" in [c.value for c in at.code]


def test_a_folder_without_a_project_shows_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(PROJECT_ENV, str(tmp_path / "nowhere"))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "does not exist" in at.error[0].value
    assert at.code[0].value == "fieldguide --project DIR dashboard"
