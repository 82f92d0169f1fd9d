"""What a Label Studio task holds: the labeling config, each sample's payload, its answer.

The labeling config is built for fine-grained work, hundreds to thousands of classes. Beside
the image (kept in view: a side-by-side layout with the image sticky) the annotator sees:

- the candidates (:data:`FROM_NAME`): a short single-choice list, per task, of the given label,
  the model's top-k classes and the crowd's votes, deduplicated, with hotkeys 1, 2, ..., and
  "none of these / unsure" (:data:`UNSURE`); they are the task's ``candidates`` (Label Studio's
  dynamic choices, ``value="$candidates"``);
- every class (:data:`FULL_NAME`), searchable: a ``Taxonomy`` over the class tree (the warehouse's
  ``taxa``) when the classes carry ranks, else the same ``Taxonomy`` flat (its dropdown has a search
  box; a ``Choices`` list with a ``Filter`` is as tall as the class list until one types); its genus
  and family nodes can be chosen too, so a curator who cannot tell the species answers at the genus;
- "new species / not in list" (:data:`NEW_NAME`): a free-text name of a class no choice covers;
- the facts: given label, model, noise score, split, observer, date, place, file.

A task's payload is the image, served from the project's own files (``/data/local-files/?d=...``,
no copies, no base64; which folders are served is :mod:`.storages`' business), the candidates,
the facts, and the curation columns as numbers where they are numbers (``noise_score`` and
``confidence`` rounded to 3 decimals). The model's prediction becomes a pre-annotation only at or
above ``labelstudio.preselect_confidence`` (:func:`preselected`). :func:`choice` reads an
annotation's answer back: a new name wins over the full list, the full list over the candidates,
a ``Taxonomy`` answer's last node is the answer (a class, or a genus, a family, ...).
"""

from __future__ import annotations

import xml.sax.saxutils as sax
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from fieldguide.config import Project
from fieldguide.errors import NotReadyError, ServiceError
from fieldguide.platform import store
from fieldguide.platform.tree import class_tree

UNSURE = "none of these / unsure"
FROM_NAME = "label"  # the candidates
FULL_NAME = "species"  # every class, searchable
NEW_NAME = "new_class"  # "new species / not in list": a free-text name
#: the longest new class name an answer may give
NEW_NAME_MAX = 200
TO_NAME = "image"
#: the candidates' hotkeys, in order; "none of these / unsure" is 0
HOTKEYS = "123456789"
UNSURE_HOTKEY = "0"
#: decimals of the numbers in a task's data (noise score, confidence)
DECIMALS = 3

ClassPaths = Mapping[str, Sequence[str]]


def label_config(classes: Sequence[str], paths: ClassPaths | None = None) -> str:
    """The labeling config: the image (sticky) beside the candidates, the full class list and the facts.

    ``paths`` (class -> names from the coarsest rank down to the class, :func:`class_paths`)
    makes the full list a tree; classes without a path sit at its top level.
    """
    if not classes:
        raise NotReadyError("the project has no classes yet (ingest labelled images first)")
    paths = paths or {}
    tree: dict = {}
    for c in classes:
        node = tree
        for name in _path(c, paths):
            node = node.setdefault(name, {})
    leafs_only = "false" if _inner_names(tree) else "true"  # a genus, a family can be the answer
    return (
        '<View style="display:flex; gap:16px; align-items:flex-start">\n'
        '  <View style="flex:1 1 58%; min-width:0; position:sticky; top:0">\n'
        f'    <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true" maxHeight="78vh"/>\n'
        "  </View>\n"
        '  <View style="flex:1 1 42%; min-width:320px">\n'
        '    <Header value="Candidates (keys 1-9, 0: none of these / unsure)" size="5"/>\n'
        f'    <Choices name="{FROM_NAME}" toName="{TO_NAME}" value="$candidates" choice="single" showInline="false"/>\n'
        f'    <Header value={sax.quoteattr(f"Or any of the {len(classes)} classes (type to search)")} size="5"/>\n'
        f'    <Taxonomy name="{FULL_NAME}" toName="{TO_NAME}" leafsOnly="{leafs_only}" maxUsages="1" '
        'placeholder="type a class name">\n'
        f"{_choices_xml(tree, 3)}\n"
        "    </Taxonomy>\n"
        '    <Header value="New species / not in list: its name" size="5"/>\n'
        f'    <TextArea name="{NEW_NAME}" toName="{TO_NAME}" maxSubmissions="1" rows="1" '
        'placeholder="only when no class above fits"/>\n'
        '    <Text name="facts" value="$info"/>\n'
        "  </View>\n"
        "</View>"
    )


def _path(cls: str, paths: ClassPaths) -> list[str]:
    path = [n for n in paths.get(cls, ()) if n]
    return path if path and path[-1] == cls else [*path, cls]


def _inner_names(tree: dict) -> set[str]:
    out = set()
    for name, children in tree.items():
        if children:
            out |= {name} | _inner_names(children)
    return out


def _choices_xml(tree: dict, depth: int) -> str:
    pad = "  " * depth
    lines = []
    for name in sorted(tree):
        children = tree[name]
        if children:
            lines += [f"{pad}<Choice value={sax.quoteattr(name)}>", _choices_xml(children, depth + 1), f"{pad}</Choice>"]
        else:
            lines.append(f"{pad}<Choice value={sax.quoteattr(name)}/>")
    return "\n".join(lines)


def class_paths(project: Project) -> dict[str, list[str]]:
    """Each class's names from the coarsest rank down to the class (the warehouse's ``taxa``);
    empty when the classes carry no ranks."""
    return class_tree(project).paths()


def project_title(project: Project) -> str:
    """The Label Studio project's title (at most 50 characters): the FiftyOne dataset's name."""
    return project.dataset_name[:50]


def new_name(result: Sequence[dict] | None) -> str | None:
    """The "new species / not in list" name of an annotation's ``result`` (spaces collapsed), or None."""
    for r in result or []:
        if r.get("from_name") == NEW_NAME and r.get("type") == "textarea":
            text = " ".join(" ".join((r.get("value") or {}).get("text") or []).split())
            if text and text != UNSURE:
                return text[:NEW_NAME_MAX]
    return None


def choice(result: Sequence[dict] | None) -> str | None:
    """What an annotation's ``result`` chose, or None: a new name (:func:`new_name`) when given,
    else the full list's (a ``Taxonomy`` answer's last node: a class, or a genus, ...) when set,
    else the candidates'."""
    picked = {}
    for r in result or []:
        value = r.get("value") or {}
        if r.get("from_name") == NEW_NAME and new_name([r]):
            picked.setdefault(NEW_NAME, new_name([r]))
        elif r.get("from_name") == FULL_NAME and r.get("type") == "taxonomy":
            leaves = [p[-1] for p in value.get("taxonomy") or [] if p]
            if leaves:
                picked.setdefault(FULL_NAME, leaves[0])
        elif r.get("from_name") == FROM_NAME and r.get("type") == "choices":
            if value.get("choices"):
                picked.setdefault(FROM_NAME, value["choices"][0])
    return picked.get(NEW_NAME) or picked.get(FULL_NAME) or picked.get(FROM_NAME)


def candidates(given: str | None, predicted: str | None, probs: Mapping[str, float], votes: Sequence[str],
               *, top_k: int = 5) -> list[dict]:
    """A task's candidates: the given label, the model's ``top_k`` classes (by ``probs``, class ->
    probability; the predicted label when there are none), the crowd's ``votes``, deduplicated in
    that order, then "none of these / unsure". Each is Label Studio's dynamic choice, ``{"value":
    ..., "hotkey": ..., "html": ...}``; the html says where the candidate comes from."""
    top = sorted(probs, key=lambda c: -probs[c])[:top_k] if probs else [predicted] if predicted else []
    tally = Counter(v for v in votes if v)
    order = list(dict.fromkeys(c for c in [given, *top, *(c for c, _ in tally.most_common())] if c and c != UNSURE))
    out = []
    for i, c in enumerate(order):
        why = (["given"] if c == given else []) + ([f"model {probs[c]:.0%}"] if c in probs and c in top else
                                                   ["model"] if c == predicted and not probs else [])
        why += [f"{tally[c]} vote{'s' if tally[c] > 1 else ''}"] if tally[c] else []
        item = {"value": c, "html": f"{sax.escape(c)} <span style=\"color:#888\">{sax.escape(' · '.join(why))}</span>"}
        if i < len(HOTKEYS):
            item["hotkey"] = HOTKEYS[i]
        out.append(item)
    out.append({"value": UNSURE, "hotkey": UNSURE_HOTKEY})
    return out


def probabilities(logits: Sequence[float] | None, classes: Sequence[str]) -> dict[str, float]:
    """class -> softmax probability of a prediction's ``logits`` (aligned with the class list as
    predict saw it: its first ``len(logits)`` classes); empty without logits."""
    if logits is None or len(logits) == 0:
        return {}
    x = np.asarray(logits, dtype=float)[: len(classes)]
    p = np.exp(x - x.max())
    p /= p.sum()
    return dict(zip(classes[: len(x)], p.tolist()))


def preselected(confidence: float | None, threshold: float) -> bool:
    """Whether the prediction is pre-selected: only at or above ``threshold`` (no rubber stamps)."""
    return confidence is not None and confidence >= threshold


def _number(x) -> float | None:
    return None if x is None else round(float(x), DECIMALS)


def task_rows(project: Project, view, document_root: str, *,
              classes: Sequence[str] = ()) -> tuple[list[dict], set[Path]]:
    """One task payload per sample of ``view`` (in view order) and the folders holding them.

    The candidates take the model's top ``labelstudio.top_k`` classes from the prediction's logits
    (aligned with ``classes``, the project's class list) and the crowd's ``votes``."""
    schema = view.get_field_schema()
    want = ["id", "filepath", "ground_truth.label", "tags"]
    optional = [f for f in ("noise_score", "observer", "observed_at", "location") if f in schema]
    optional += ["votes.classifications.label"] if "votes" in schema else []
    has_pred = "prediction" in schema
    fields = want + optional + (["prediction.label", "prediction.confidence", "prediction.logits"] if has_pred else [])
    values = dict(zip(fields, view.values(fields)))
    top_k = project.config.labelstudio.top_k
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
        probs = probabilities(get("prediction.logits"), classes)
        data = {  # the curation columns first: the data manager shows data columns in this order
            "image": "/data/local-files/?d=" + quote(rel.as_posix()),
            "given_label": given,
            "noise_score": _number(noise),
            "predicted_label": pred,
            "confidence": _number(conf),
            "candidates": candidates(given, pred, probs, get("votes.classifications.label") or [], top_k=top_k),
            "sample_id": sid,
            "filepath": str(path),
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


def candidate_result(label: str) -> list[dict]:
    """An annotation's ``result`` that picks ``label`` among the candidates."""
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}]


def decision_result(label: str, paths: ClassPaths | None = None) -> list[dict]:
    """An annotation's ``result`` that picks ``label`` in the full class list (a curator's decision
    closing a task: the class need not be among the task's candidates)."""
    return [{"from_name": FULL_NAME, "to_name": TO_NAME, "type": "taxonomy",
             "value": {"taxonomy": [_path(label, paths or {})]}}]


def pre_annotation(label: str, confidence: float | None, model_version: str) -> dict:
    """The model's prediction as a Label Studio pre-annotation (a choice of the config)."""
    return {
        "model_version": model_version,
        "score": None if confidence is None else float(confidence),
        "result": candidate_result(label),
    }
