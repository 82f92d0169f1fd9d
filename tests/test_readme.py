"""README.md quotes no result that a file does not hold (issue 13, acceptance 5).

1. Every table block (``<!-- table: CSV ... -->``, see ``benchmarks/readme_tables.py``) equals
   what its CSV gives, and no other Markdown table is in the README.
2. Every number in the prose that reads as a measurement is held by a CSV under
   ``benchmarks/results/``: each decimal (``0.944``), number with thousands separators
   (``5,902``), percentage (``95%``) and number with a unit (``18 s``, ``1.07x``, ``3 minutes``,
   ``2 points``). Plain small integers (``5-fold``, ``seed 0``, ``μ = 3``) are structure, not
   results, and are not checked. Prose is what is left outside fenced code, inline code, the
   generated tables and HTML comments.

   "Held" means: a cell of one of the CSVs of the table blocks nearest to the number (the one
   before and the one after it) or of a CSV the paragraph names by path equals the number as
   written, rounded to the decimals written (``0.878`` is held by ``0.8777``; ``95%`` by
   ``0.9453``; ``3 minutes`` by 180 ± 30 seconds). The sign is ignored (prose says "costs").

   ``ALLOWED`` lists the few numbers that are settings, not results (config defaults, the
   signal weights, the Python version), each with the README text around it and the value the
   code has: the test fails when the code's value changed or the text is gone.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fieldguide.config import default_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"


def _load_readme_tables():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


readme_tables = _load_readme_tables()


# ---- settings the prose may quote: README text around the number -> the code's value -----------
def _config(section: str, key: str):
    return lambda: getattr(getattr(default_config("readme"), section), key)


def _signal_weight(name: str):
    return lambda: default_config("readme").signals.weights[name]


def _pseudolabel_default(param: str):
    return _config("pseudolabel", param)


def _python_version() -> float:
    spec = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    return float(re.search(r">=\s*(\d+\.\d+)", spec)[1])


ALLOWED = {
    "need Python 3.11": _python_version,
    "waits `store.lock_timeout_s` (10 s)": _config("store", "lock_timeout_s"),
    "until `switch_at` (0.8)": _config("train", "switch_at"),
    "with probability α = 0.4": _config("augment", "alpha"),
    "cleanlab label quality 0.5": _signal_weight("label_quality"),
    "kNN disagreement 0.25": _signal_weight("knn_disagreement"),
    "crowd consensus quality 0.25": _signal_weight("consensus_quality"),
    "the latest training run 0.1": _signal_weight("entropy_aum"),
    "a second opinion with weight 0.1": _signal_weight("entropy_aum"),
    "with the default weight 0.1": _signal_weight("entropy_aum"),
    "decay 0.9999 per step": _pseudolabel_default("ema_decay"),
    "only confidences ≥ 0.7": _pseudolabel_default("threshold"),
    "(threshold 0.7,": _pseudolabel_default("threshold"),
}

# a number that may be a result: decimals, thousands separators, or a unit after it
NUMBER = re.compile(
    r"(?<![\w.,/-])(?P<num>\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)"
    r"(?P<unit>\s?%|x\b|\s(?:s|seconds|minutes|images/s|points)\b)?"
)
INLINE_CODE = re.compile(r"(`+).+?\1")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
CSV_PATH = re.compile(r"benchmarks/results/[\w.@=-]+\.csv")


@dataclass
class Paragraph:
    line: int  # 1-based, of its first line
    text: str  # whitespace collapsed
    csvs: set[str]  # the CSVs of the nearest table blocks before and after it


def paragraphs(text: str) -> list[Paragraph]:
    """The README's prose paragraphs, each with the CSVs of the table blocks around it."""
    lines = text.splitlines()
    blocks = readme_tables.parse_blocks(lines)
    prose = list(lines)
    for block in blocks:
        prose[block.line - 1:block.end + 1] = [""] * (block.end - block.line + 2)
    fenced = False
    for i, line in enumerate(prose):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            prose[i] = ""
        elif fenced or line.lstrip().startswith("<!--"):
            prose[i] = ""
    out, start = [], None
    for i, line in enumerate(prose + [""]):
        if line.strip() and start is None:
            start = i
        elif not line.strip() and start is not None:
            before = [b.path for b in blocks if b.end < start]
            after = [b.path for b in blocks if b.line - 1 >= i]
            csvs = set(before[-1:] + after[:1])
            out.append(Paragraph(start + 1, " ".join(" ".join(prose[start:i]).split()), csvs))
            start = None
    return out


def csv_values(path: Path) -> np.ndarray:
    """Every number a CSV holds: numeric cells and numbers written inside text cells, as absolute values."""
    df = pd.read_csv(path)
    values = [df.select_dtypes("number").to_numpy(dtype=float).ravel()]
    for column in df.select_dtypes(exclude="number").columns:
        found = df[column].dropna().astype(str).str.findall(r"\d+(?:\.\d+)?").explode().dropna()
        values.append(found.astype(float).to_numpy())
    values.append(np.array([float(v) for c in df.columns for v in re.findall(r"\d+(?:\.\d+)?", str(c))]))
    values = np.abs(np.concatenate(values))
    return values[~np.isnan(values)]


def is_held(number: str, unit: str | None, values: np.ndarray) -> bool:
    """Whether ``values`` holds ``number`` (as written, with its unit) to the decimals it has."""
    digits = number.replace(",", "")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    x, tolerance = float(digits), 0.5 * 10 ** -decimals
    unit = (unit or "").strip()
    if unit in ("%", "points"):
        x, tolerance = x / 100, tolerance / 100
    elif unit == "minutes":
        x, tolerance = x * 60, tolerance * 60
    return bool(np.any(np.abs(values - x) <= tolerance + 1e-9))


def unheld_numbers(text: str, results: Path, allowed: dict[str, float]) -> tuple[list[str], list[str]]:
    """(numbers in the prose no CSV holds, as ``line N: 'context'``; allowed snippets not in the prose)."""
    values = {p.relative_to(results.parent.parent).as_posix(): csv_values(p) for p in sorted(results.rglob("*.csv"))}
    unheld, seen = [], set()
    for para in paragraphs(text):
        body = para.text
        for snippet in allowed:
            if snippet in body:
                seen.add(snippet)
                body = body.replace(snippet, " ")
        names = para.csvs | set(CSV_PATH.findall(body))
        body = LINK_TARGET.sub("]", INLINE_CODE.sub(" ", body))
        pool = np.concatenate([values[n] for n in names if n in values] or [np.array([])])
        for m in NUMBER.finditer(body):
            num, unit = m["num"], m["unit"]
            if "." not in num and "," not in num and not unit:
                continue  # a plain integer: structure, not a result
            if not is_held(num, unit, pool):
                context = body[max(0, m.start() - 40):m.end() + 20]
                unheld.append(f"line {para.line}: {m[0]!r} in '...{context}...' "
                              f"(looked in: {', '.join(sorted(names)) or 'no CSV near it'})")
    return unheld, sorted(set(allowed) - seen)


# ---- the README -------------------------------------------------------------------------------
def test_readme_tables_equal_their_csvs(capsys):
    assert readme_tables.main(["--readme", str(README), "--check"]) == 0, capsys.readouterr().out


def test_readme_has_no_hand_typed_table():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    generated = {i for b in readme_tables.parse_blocks(lines) for i in range(b.line - 1, b.end + 1)}
    fenced, typed = False, []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and i not in generated and re.match(r"^\s*\|.*\|\s*$", line):
            typed.append(f"line {i + 1}: {line.strip()[:60]}")
    assert not typed, "tables typed by hand (make them <!-- table: ... --> blocks):\n" + "\n".join(typed)


def test_allowed_numbers_are_the_codes_values():
    wrong = []
    for snippet, get in ALLOWED.items():
        (number,) = [m["num"] for m in NUMBER.finditer(snippet)]
        if float(number) != float(get()):
            wrong.append(f"README says {snippet!r}; the code has {get()}")
    assert not wrong, "\n".join(wrong)


def test_every_number_in_the_readme_prose_is_held_by_a_results_file():
    unheld, stale = unheld_numbers(README.read_text(encoding="utf-8"), RESULTS, ALLOWED)
    assert not stale, f"ALLOWED names text the README no longer has: {stale}"
    assert not unheld, "numbers in README.md that no file under benchmarks/results/ holds:\n" + "\n".join(unheld)


# ---- the two checks can fail --------------------------------------------------------------------
@pytest.fixture
def toy(tmp_path):
    """A README folder with one results CSV and one block over it (not yet generated)."""
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    pd.DataFrame({"arm": ["a", "b"], "top1": [0.8777, 0.9453], "seconds": [12.04, None]}).to_csv(
        results / "toy.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text("# toy\n\nText before.\n\n<!-- table: benchmarks/results/toy.csv where=arm == 'a' -->\n"
                      "| old |\n<!-- /table -->\n\nAfter: top-1 0.878 and 95% of the gap in 12 s.\n",
                      encoding="utf-8")
    return readme


def test_check_names_the_block_that_differs_and_a_rewrite_fixes_it(toy, capsys):
    assert readme_tables.main(["--readme", str(toy), "--check"]) == 1
    assert "line 5" in capsys.readouterr().out
    assert readme_tables.main(["--readme", str(toy)]) == 0
    body = readme_tables.parse_blocks(toy.read_text(encoding="utf-8").splitlines())[0].body
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in body]
    assert rows[0] == ["arm", "top1", "seconds"] and rows[2:] == [["a", "0.878", "12.040"]]
    assert readme_tables.main(["--readme", str(toy), "--check"]) == 0

    pd.DataFrame({"arm": ["a"], "top1": [0.5], "seconds": [1.0]}).to_csv(
        toy.parent / "benchmarks" / "results" / "toy.csv", index=False)
    assert readme_tables.main(["--readme", str(toy), "--check"]) == 1


def test_a_block_over_a_missing_file_is_one_error_line(toy, capsys):
    toy.write_text(toy.read_text(encoding="utf-8").replace("toy.csv", "gone.csv"), encoding="utf-8")
    assert readme_tables.main(["--readme", str(toy), "--check"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "gone.csv" in err[0]


def test_numbers_the_csv_holds_pass_and_others_fail(toy):
    results = toy.parent / "benchmarks" / "results"
    text = toy.read_text(encoding="utf-8")
    assert unheld_numbers(text, results, {}) == ([], [])
    for claim in ("top-1 0.879", "96% of the gap", "in 13 s", "1.25x faster", "took 2,000 images"):
        bad = text.replace("Text before.", f"Text before: {claim}.")
        unheld, _ = unheld_numbers(bad, results, {})
        assert len(unheld) == 1 and "line 3" in unheld[0], (claim, unheld)
    # a number is looked up only in the tables next to it, not in every CSV
    far = text + "\n<!-- table: benchmarks/results/other.csv -->\n<!-- /table -->\n\nFar: 0.878 here.\n"
    pd.DataFrame({"x": [0.1]}).to_csv(results / "other.csv", index=False)
    assert len(unheld_numbers(far, results, {})[0]) == 1
    # settings are allowed only as written, and a snippet the text lost is reported
    assert unheld_numbers(bad, results, {"took 2,000 images": 2000, "gone 1.5": 1.5}) == ([], ["gone 1.5"])
    # code, links and plain integers are not prose numbers
    quiet = text.replace("Text before.", "Run `bench --rate 0.37` ([x](a/1.2.png)) with 5-fold, seed 7.")
    assert unheld_numbers(quiet, results, {}) == ([], [])
