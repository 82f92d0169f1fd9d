"""The loop's CLI verbs as real processes (``python -m fieldguide.cli``) on a tiny project with the
tiny backbone: what they print, checked against what lands in the store and the warehouse."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fieldguide
from conftest import CLASS_COLORS, make_image, use_tiny_backbone
from fieldguide.config import dump_config
from fieldguide.platform import store
from fieldguide.platform.ingest import ingest

REPO = Path(fieldguide.__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def cli(project, *args: str) -> tuple[int, list[str], str]:
    """Run ``fieldguide --project ROOT ARGS`` in a process; ``(exit code, stdout lines, stderr)``.
    Output goes to files: the project's mongod may outlive the command and would hold a pipe open."""
    env = {k: v for k, v in os.environ.items() if k != "FIELDGUIDE_PROJECT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out, err = project.root / "cli.out", project.root / "cli.err"
    with out.open("w") as o, err.open("w") as e:
        rc = subprocess.run([sys.executable, "-m", "fieldguide.cli", "--project", str(project.root), *args],
                            stdout=o, stderr=e, env=env, timeout=600).returncode
    return rc, out.read_text().splitlines(), err.read_text()


def line_starting(lines: list[str], prefix: str) -> str:
    found = [line for line in lines if line.startswith(prefix)]
    assert len(found) == 1, lines
    return found[0]


@pytest.fixture
def tiny(ingested, tiny_weights):
    """``ingested`` with the tiny backbone written into its fieldguide.toml (the CLI reads the file)."""
    p = use_tiny_backbone(ingested, tiny_weights)
    p.config.train.epochs = 5
    p.config_path.write_text(dump_config(p.config))
    return p


def test_embed_predict_evaluate_with_a_cost_matrix(tiny, tmp_path):
    p = tiny
    rc, lines, err = cli(p, "embed")
    assert rc == 0, err
    assert re.fullmatch(r"timm/test_efficientnet: embedded 24, cached 0, skipped 0 \([0-9.]+ images/s\)", lines[-1])
    from fieldguide.models.embed import load_embeddings

    ids, X = load_embeddings(p)
    ds = store.dataset(p)
    assert sorted(ids) == sorted(ds.values("id")) and X.shape == (24, 256)

    # two test labels made wrong on purpose, so the predictions cost something: a red bird called a
    # green one (the CSV says 7 when a green bird is predicted red) and a blue bird called a red one (1)
    test = ds.match_tags("test")
    red, blue = (test.match({"ground_truth.label": c}).first().id for c in ("red_bird", "blue_bird"))
    store.set_labels(p, ds, {red: "green_bird", blue: "red_bird"}, source="curator", actor="test")
    cost_csv = tmp_path / "cost.csv"
    cost_csv.write_text("true,predicted,cost\ngreen_bird,red_bird,7\nred_bird,green_bird,2\nblue_bird,blue_bird,0\n")
    p.config.evaluate.cost_matrix = str(cost_csv)
    p.config_path.write_text(dump_config(p.config))

    rc, lines, err = cli(p, "predict", "--head", "logreg", "--folds", "3")
    assert rc == 0, err
    ds.reload()
    truth, predicted = ds.match_tags("train").values(["ground_truth.label", "prediction.label"])
    oof_top1 = sum(t == q for t, q in zip(truth, predicted)) / 18
    assert lines[-1] == (f"logreg: 18 samples by 3-fold (out-of-fold top-1 {oof_top1:.3f}), "
                         "6 by a head fit on all of them")

    rc, lines, err = cli(p, "evaluate")
    assert rc == 0, err
    truth, predicted = ds.match_tags("test").values(["ground_truth.label", "prediction.label"])
    costs = {(r["true"], r["predicted"]): float(r["cost"]) for r in csv.DictReader(cost_csv.open())}
    expected_cost = sum(costs.get((t, q), 0.0 if t == q else 1.0) for t, q in zip(truth, predicted)) / 6
    top1 = sum(t == q for t, q in zip(truth, predicted)) / 6
    assert ds[red].prediction.label == "red_bird" and ds[blue].prediction.label == "blue_bird"  # colours win
    assert expected_cost >= (7 + 1) / 6
    head = line_starting(lines, "test (n=6): ")
    assert head.startswith(f"test (n=6): top-1 {top1:.3f}  top-5 1.000  macro-F1 ")
    assert head.endswith(f"cost {expected_cost:.3f}")
    assert "  green_bird -> red_bird: 1" in lines and "  red_bird -> blue_bird: 1" in lines
    png = Path(line_starting(lines, "confusion matrix: ").split(": ", 1)[1])
    assert png.stat().st_size > 1000
    wh = store.warehouse(p)
    run = wh.last_run("evaluate")["run_id"]
    metrics = wh.query("SELECT name, value FROM metrics WHERE run_id = ? AND split = 'test'", [run])
    values = dict(zip(metrics["name"], metrics["value"]))
    assert values["cost_score"] == pytest.approx(expected_cost) and values["top1"] == pytest.approx(top1)
    assert png.parent.name == run


def _unlabeled_manifest(folder: Path) -> Path:
    """Two more images per class, listed in a CSV without labels: the ``unlabeled`` split."""
    rows = [["path", "label"]]
    for k, (cls, color) in enumerate(CLASS_COLORS.items()):
        for i in range(2):
            rows.append([make_image(folder / f"u_{cls}_{i}.jpg", color, seed=900 + 10 * k + i).name, ""])
    manifest = folder / "unlabeled.csv"
    with manifest.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return manifest


def test_pseudolabel_accept_then_loop(tiny, tmp_path):
    from fieldguide.curation.pseudolabel import pseudolabel
    from fieldguide.models.embed import embed

    p = tiny
    ingest(p, _unlabeled_manifest(tmp_path / "unl"), fmt="csv", filepath_column="path", label_column="label")
    embed(p)
    report = pseudolabel(p, threshold=0.0, epochs=5, abstain=False)  # the accept path, whatever the estimate
    ds = store.dataset(p)
    pending = dict(zip(*ds.match_tags("pseudo_labeled").values(["id", "pseudo_label.label"])))
    assert len(pending) == report.selected >= 1

    rc, lines, err = cli(p, "pseudolabel", "--accept")
    assert rc == 0, err
    assert lines[-1] == f"accepted {len(pending)} pseudo-labels (label_history: source pseudo)"
    ds.reload()
    accepted = ds.select(list(pending))
    assert dict(zip(*accepted.values(["id", "ground_truth.label"]))) == pending
    assert set(accepted.values("tags", unwind=True)) == {"train"}
    assert {h[-1].source for h in accepted.values("label_history")} == {"pseudo"}
    rc, lines, err = cli(p, "pseudolabel", "--accept")  # nothing pending any more
    assert rc == 0 and lines[-1] == "accepted 0 pseudo-labels (label_history: source pseudo)", err

    rc, lines, err = cli(p, "loop")
    assert rc == 0, err
    wh = store.warehouse(p)
    n_train = 18 + len(pending)
    predict_run = wh.last_run("predict")["run_id"]
    oof = wh.query("SELECT value FROM metrics WHERE run_id = ? AND name = 'top1'", [predict_run]).iloc[0, 0]
    assert line_starting(lines, "embed     ") == "embed     embedded 0, cached 30, skipped 0"
    assert line_starting(lines, "predict   ") == f"predict   logreg: {n_train} out of fold (top-1 {oof:.3f})"
    evaluate_run = wh.last_run("evaluate")["run_id"]
    top1 = wh.query("SELECT value FROM metrics WHERE run_id = ? AND name = 'top1'", [evaluate_run]).iloc[0, 0]
    assert line_starting(lines, "evaluate  ").startswith(f"evaluate  test top-1 {top1:.3f}, macro-F1 ")
    flag_run = wh.last_run("flag")["run_id"]
    flagged = wh.query("SELECT value FROM metrics WHERE run_id = ? AND name IN ('assessed', 'flagged') "
                       "ORDER BY name", [flag_run])["value"].astype(int).tolist()
    assert line_starting(lines, "flag      ") == f"flag      assessed {flagged[0]}, flagged {flagged[1]}"
    assert line_starting(lines, "relabel   ").startswith("relabel   skipped: no Label Studio")
    retrain = wh.last_run("retrain")
    top1 = wh.query("SELECT value FROM metrics WHERE run_id = ? AND split = 'test' AND name = 'top1'",
                    [retrain["run_id"]]).iloc[0, 0]
    method = json.loads(retrain["config"])["method"]
    assert line_starting(lines, "retrain   ").startswith(f"retrain   {method}: test top-1 {top1:.3f}")
    trained = wh.query("SELECT value FROM metrics WHERE run_id = ? AND split = 'train' AND name = 'n'",
                       [retrain["run_id"]]).iloc[0, 0]
    assert trained == n_train  # the accepted pseudo-labels are training labels now (flagged: down-weighted)
    state = json.loads((p.runs_dir / "loop_state.json").read_text())
    assert set(state) == {"predict", "flag", "retrain"}
