"""What a Label Studio task holds: the labeling config, each sample's payload, its answer.

The labeling config is a single choice among the project's classes plus "none of these /
unsure" (:data:`UNSURE`). A task's payload is the image, served from the project's own files
(``/data/local-files/?d=...``, no copies, no base64; which folders are served is
:mod:`.storages`' business), the sample's metadata, its given label and noise score, and the
model's prediction as a pre-annotation. :func:`choice` reads an annotation's answer back.
"""

from __future__ import annotations

import xml.sax.saxutils as sax
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from fieldguide.config import Project
from fieldguide.errors import NotReadyError, ServiceError
from fieldguide.platform import store

UNSURE = "none of these / unsure"
FROM_NAME = "label"
TO_NAME = "image"


def label_config(classes: Sequence[str]) -> str:
    """The single-choice labeling config: the image, its facts, one choice per class + unsure."""
    if not classes:
        raise NotReadyError("the project has no classes yet (ingest labelled images first)")
    choices = "\n".join(f"    <Choice value={sax.quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>\n'
        '  <Text name="facts" value="$info"/>\n'
        f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="false" required="true">\n'
        f"{choices}\n"
        f"    <Choice value={sax.quoteattr(UNSURE)}/>\n"
        "  </Choices>\n"
        "</View>"
    )


def project_title(project: Project) -> str:
    """The Label Studio project's title (at most 50 characters): the FiftyOne dataset's name."""
    return project.dataset_name[:50]


def choice(result: Sequence[dict] | None) -> str | None:
    """The choice an annotation's ``result`` made in the config's choices, or None."""
    for r in result or []:
        if r.get("from_name") == FROM_NAME and r.get("type") == "choices":
            picked = (r.get("value") or {}).get("choices") or []
            if picked:
                return picked[0]
    return None


def task_rows(project: Project, view, document_root: str) -> tuple[list[dict], set[Path]]:
    """One task payload per sample of ``view`` (in view order) and the folders holding them."""
    schema = view.get_field_schema()
    want = ["id", "filepath", "ground_truth.label", "tags"]
    optional = [f for f in ("noise_score", "observer", "observed_at", "location") if f in schema]
    has_pred = "prediction" in schema
    fields = want + optional + (["prediction.label", "prediction.confidence"] if has_pred else [])
    values = dict(zip(fields, view.values(fields)))
    root = Path(document_root)
    rows, folders, outside = [], set(), []
    for i, sid in enumerate(values["id"]):
        path = Path(values["filepath"][i])
        try:
            rel = path.relative_to(root)
        except ValueError:
            outside.append(str(path))
            continue
        if len(rel.parts) < 2:
            outside.append(str(path))
            continue
        folders.add(path.parent)
        get = lambda f: values[f][i] if f in values else None  # noqa: E731
        given, noise = get("ground_truth.label"), get("noise_score")
        pred, conf = get("prediction.label"), get("prediction.confidence")
        facts = [f"given label: {given or '(none)'}"]
        if pred is not None:
            facts.append(f"model: {pred}" + (f" ({conf:.2f})" if conf is not None else ""))
        if noise is not None:
            facts.append(f"noise score: {noise:.3f}")
        split = store.split_of(get("tags") or [])
        if split:
            facts.append(f"split: {split}")
        if get("observer"):
            facts.append(f"observer: {get('observer')}")
        if get("observed_at"):
            facts.append(f"observed: {get('observed_at'):%Y-%m-%d}")
        loc = get("location")
        if loc is not None and getattr(loc, "point", None):
            facts.append(f"location: {loc.point[1]:.4f}, {loc.point[0]:.4f}")
        facts.append(f"file: {path.name}")
        data = {
            "image": "/data/local-files/?d=" + quote(rel.as_posix()),
            "sample_id": sid,
            "filepath": str(path),
            "given_label": given,
            "noise_score": None if noise is None else float(noise),
            "predicted_label": pred,
            "confidence": None if conf is None else float(conf),
            "split": split,
            "observer": get("observer"),
            "observed_at": None if get("observed_at") is None else get("observed_at").isoformat(),
            "info": "  ·  ".join(facts),
        }
        rows.append({"data": data, "prediction": (pred, conf)})
    if outside:
        raise ServiceError(
            f"{len(outside)} image(s) lie outside the Label Studio server's file root {document_root} "
            f"(e.g. {outside[0]}): restart the project's server ('fieldguide labelstudio stop', then "
            "'start') or set labelstudio.files_root"
        )
    return rows, folders


def decision_result(label: str) -> list[dict]:
    """An annotation's ``result`` that chooses ``label`` (a curator's decision closing a task)."""
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]


def pre_annotation(label: str, confidence: float | None, model_version: str) -> dict:
    """The model's prediction as a Label Studio pre-annotation (a choice of the config)."""
    return {
        "model_version": model_version,
        "score": None if confidence is None else float(confidence),
        "result": decision_result(label),
    }
