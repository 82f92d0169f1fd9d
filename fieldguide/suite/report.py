"""A run over collections, its CSVs, and the side-by-side table that marks where a default loses."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fieldguide.errors import FieldguideError
from fieldguide.platform import bench_results
from fieldguide.platform.warehouse import Warehouse
from fieldguide.suite.plan import FAMILIES, ROLES, COLUMNS, Plan
from fieldguide.suite.collections import Collection, collection_features
from fieldguide.suite.compare import run_comparisons

log = logging.getLogger(__name__)


# ---- the run -------------------------------------------------------------------------------------------
@dataclass
class SuiteResult:
    tables: dict[str, pd.DataFrame]  # family -> rows of this run
    paths: dict[str, Path]  # family -> its CSV
    seconds: dict[str, float]  # collection -> seconds (features + comparisons)
    splits: dict[str, str]  # collection -> where its test split came from
    sizes: dict[str, tuple[int, int, int]]  # collection -> (classes, train, test)


def run_suite(collections: list[Collection], *, cache: Path, results: Path, plan: Plan | None = None,
              backbone: str | None = None, weights: str | None = None, progress: bool = True,
              families: Iterable[str] = FAMILIES, warehouse: Warehouse | None = None) -> SuiteResult:
    """Features and comparisons for each collection; each family's rows go to ``results/suite_<family>.csv``
    (rows of other collections already there are kept, this run's collections replaced; a family
    not run leaves its file alone).

    With ``warehouse`` (a project's), the run is a ``bench_suite`` run there and each family's rows of
    this run are its table ``suite_<family>`` in ``bench_results`` (the dashboards show, per table and
    collection, the newest completed run's rows: what the CSV holds)."""
    plan = plan or Plan()
    names = [c.name for c in collections]
    if len(set(names)) != len(names):
        raise FieldguideError(f"collections named twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    families = list(dict.fromkeys(families))
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise FieldguideError(f"families {', '.join(unknown) or '(none)'}: use some of {', '.join(FAMILIES)}")
    if warehouse is None:
        return _run_suite(collections, cache=cache, results=results, plan=plan, backbone=backbone,
                          weights=weights, progress=progress, families=families)
    config = {"collections": names, "families": families, "plan": asdict(plan),
              "backbone": backbone, "results": str(results)}
    with warehouse.run("bench_suite", config) as run_id:
        out = _run_suite(collections, cache=cache, results=results, plan=plan, backbone=backbone,
                         weights=weights, progress=progress, families=families)
        for family, df in out.tables.items():
            bench_results.record(warehouse, run_id, f"suite_{family}", bench_results.long_rows(df))
    return out


def _run_suite(collections: list[Collection], *, cache: Path, results: Path, plan: Plan, backbone: str | None,
               weights: str | None, progress: bool, families: list[str]) -> SuiteResult:
    from tqdm.auto import tqdm

    frames: dict[str, list[pd.DataFrame]] = {family: [] for family in families}
    seconds, splits, sizes = {}, {}, {}
    bar = tqdm(total=len(collections) * (1 + len(families)), desc="suite", unit="step",
               disable=None if progress else True)
    for c in collections:
        start = time.perf_counter()
        bar.set_postfix_str(f"{c.name}: ingest, embed")
        f = collection_features(c, cache, backbone=backbone, weights=weights)
        splits[c.name], sizes[c.name] = f.split, (f.n_classes, len(f.y_train), len(f.y_test))
        log.info("%s: %d classes, %d train, %d test (split: %s)", c.name, f.n_classes, len(f.y_train),
                 len(f.y_test), f.split)
        bar.update()

        def step(family: str, secs: float, name=c.name) -> None:
            log.info("%s: %s in %.0f s", name, family, secs)
            bar.update()

        bar.set_postfix_str(f"{c.name}: comparisons")
        for family, df in run_comparisons(f, plan, families=families, on_step=step).items():
            frames[family].append(df)
        seconds[c.name] = time.perf_counter() - start
    bar.close()
    tables = {family: pd.concat(dfs, ignore_index=True) for family, dfs in frames.items()}
    paths = {family: write_results(df, Path(results) / f"suite_{family}.csv") for family, df in tables.items()}
    return SuiteResult(tables, paths, seconds, splits, sizes)


def write_results(rows: pd.DataFrame, path: Path) -> Path:
    """Write ``rows`` to ``path``, keeping the rows of other collections that the file holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        old = pd.read_csv(path)
        rows = pd.concat([old[~old["collection"].isin(rows["collection"].unique())], rows], ignore_index=True)
    rows[COLUMNS].to_csv(path, index=False)  # full precision: a table made from the file marks what the run marked
    return path


# ---- side by side -------------------------------------------------------------------------------------
def side_by_side(rows: pd.DataFrame) -> pd.DataFrame:
    """Each default beside each baseline of its setting, per metric, one column group per collection.

    Returns one row per (setting, metric, default method, baseline method) with, for each
    collection C, ``C`` (the default's value), ``C baseline`` and ``C loses`` (True where the
    default is below the baseline; every metric here is higher-is-better). A default metric that
    no baseline has (e.g. the number of pseudo-labels) gets one row with an empty baseline.
    """
    bad = set(rows["role"]) - set(ROLES)
    if bad:
        raise ValueError(f"roles {sorted(bad)}: use {ROLES}")
    collections = list(dict.fromkeys(rows["collection"]))
    settings = list(dict.fromkeys(rows["setting"]))
    value = rows.set_index(["collection", "setting", "method", "metric"])["value"]
    out = []
    for setting in settings:
        here = rows[rows["setting"] == setting]
        defaults = list(dict.fromkeys(here.loc[here["role"] == "default", "method"]))
        baselines = list(dict.fromkeys(here.loc[here["role"] == "baseline", "method"]))
        for d in defaults:
            for metric in dict.fromkeys(here.loc[here["method"] == d, "metric"]):
                against = [b for b in baselines if ((here["method"] == b) & (here["metric"] == metric)).any()]
                for b in against or [None]:
                    row = {"setting": setting, "metric": metric, "default": d, "baseline": b or ""}
                    for c in collections:
                        dv = value.get((c, setting, d, metric), np.nan)
                        bv = value.get((c, setting, b, metric), np.nan) if b else np.nan
                        row[c] = dv
                        row[f"{c} baseline"] = bv
                        row[f"{c} loses"] = bool(dv < bv)  # NaN compares False: nothing to lose against
                    out.append(row)
    return pd.DataFrame(out)


COUNTS = {"pseudo_labels", "abstained"}  # metrics that count things (shown as whole numbers)


def fmt(v: float, metric: str = "", digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{int(v)}" if metric in COUNTS else f"{v:.{digits}f}"


def fmt_pair(default: float, baseline: float | None, metric: str = "") -> str:
    """``default | baseline``; with 4 decimals where 3 would show a difference as a tie."""
    if baseline is None:
        return fmt(default, metric)
    digits = 3
    if fmt(default, metric) == fmt(baseline, metric) and default != baseline:
        digits = 4
    return f"{fmt(default, metric, digits)} | {fmt(baseline, metric, digits)}"


def render(table: pd.DataFrame, title: str):
    """A rich Table: per collection "default | baseline", a cell where the default loses marked ✗ (red)."""
    from rich.table import Table

    collections = [c[: -len(" loses")] for c in table.columns if c.endswith(" loses")]
    t = Table(title=title, show_lines=False)
    for name in ("setting", "metric", "default", "baseline"):
        t.add_column(name, overflow="fold")
    for c in collections:
        t.add_column(f"{c}\ndefault | baseline", justify="right")
    for _, r in table.iterrows():
        cells = []
        for c in collections:
            text = fmt_pair(r[c], r[f"{c} baseline"] if r["baseline"] else None, r["metric"])
            cells.append(f"[red]{text} ✗[/red]" if r[f"{c} loses"] else text)
        t.add_row(r["setting"], r["metric"], r["default"], r["baseline"] or "–", *cells)
    return t
