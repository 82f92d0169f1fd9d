"""Benchmark results in the warehouse: each benchmark's table in long form, under its ``bench_<name>`` run.

A benchmark writes its CSV (``benchmarks/results/*.csv``, ``PROJECT/runs/benchmarks/*.csv``) and,
with a project, the same table to ``bench_results``: one row per (row of the table, metric), with
what the dashboards need to chart it (``collection``, ``setting``, ``method``, ``role``: default,
baseline or none, ``better``: higher, lower or none) and the row's other cells in ``params``.
:func:`long_form` turns a wide table (one column per metric) into those rows, :func:`long_rows` an
already long one (the suite's ``collection, setting, method, role, metric, value``);
:func:`record` writes them for one run, replacing what that run wrote for that table before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pandas as pd

from fieldguide.platform.warehouse import Warehouse

COLUMNS = ["row", "collection", "setting", "method", "role", "metric", "value", "better", "params"]
ROLES = ("default", "baseline")
#: metrics where less is better (times, calibration error); every other score: more is better
LOWER_IS_BETTER = {"seconds", "fit_seconds", "wall_seconds", "time_vs_bare", "ece"}
#: metrics that count or describe things rather than score them (no better or worse)
NOT_SCORES = {"abstained", "added", "cached", "embedded", "flagged", "images", "pseudo_labels",
              "pseudo_selected", "temperature", "weight", "with_metadata", "samples"}


def better(metric: str) -> str | None:
    """``higher``, ``lower`` (times, ``ece``) or None (a count) for a metric's name."""
    if metric in NOT_SCORES:
        return None
    return "lower" if metric in LOWER_IS_BETTER or metric.endswith("_seconds") else "higher"


def _cell(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def _column(value, n: int) -> list:
    """A key as a list of ``n`` cells: a Series (aligned with the table) or one value for every row."""
    if isinstance(value, pd.Series):
        return [_cell(v) for v in value.tolist()]
    return [value] * n


def long_form(table: pd.DataFrame, *, metrics: Sequence[str], method, collection, setting=None, role=None,
              params: Sequence[str] = ()) -> pd.DataFrame:
    """The rows of a wide table (one column per metric) in long form (:data:`COLUMNS`).

    ``method``, ``collection``, ``setting`` and ``role``: each a Series aligned with ``table`` or
    one value for every row; ``params``: the columns kept in each row's ``params`` JSON. Each cell
    of a ``metrics`` column is one row (an empty cell: value NULL), in the table's row order.
    """
    missing = [c for c in [*metrics, *params] if c not in table.columns]
    if missing:
        raise ValueError(f"columns {missing} are not in the table (it has {list(table.columns)})")
    n = len(table)
    keys = {"collection": _column(collection, n), "setting": _column(setting, n), "method": _column(method, n),
            "role": _column(role, n)}
    extra = [json.dumps({p: _cell(v) for p, v in zip(params, cells)}, default=str) if params else None
             for cells in (zip(*(table[p].tolist() for p in params)) if params else [()] * n)]
    out = []
    for i in range(n):
        for m in metrics:
            value = _cell(table[m].iloc[i])
            out.append({"row": i, **{k: v[i] for k, v in keys.items()}, "metric": m,
                        "value": None if value is None else float(value), "better": better(m), "params": extra[i]})
    return pd.DataFrame(out, columns=COLUMNS)


def long_rows(rows: pd.DataFrame, *, params: Sequence[str] = ()) -> pd.DataFrame:
    """An already long table (``collection, setting, method, role, metric, value``) as :data:`COLUMNS`,
    ``row`` numbering its (collection, setting, method, role) in order of appearance; ``params``: the
    columns kept in each row's ``params`` JSON."""
    keys = ["collection", "setting", "method", "role"]
    out = rows.reindex(columns=[*keys, "metric", "value"]).reset_index(drop=True)
    # one row per (collection, setting, method, role), its metrics the row's cells: the wide table
    out.insert(0, "row", out.groupby(keys, sort=False, dropna=False).ngroup())
    out["better"] = [better(m) for m in out["metric"]]
    out["params"] = ([json.dumps({p: _cell(v) for p, v in zip(params, cells)}, default=str)
                      for cells in zip(*(rows[p].tolist() for p in params))] if params else None)
    out["role"] = out["role"].astype(object).where(out["role"].notna(), None)
    return out[COLUMNS]


def record(warehouse: Warehouse, run_id: str, bench: str, rows: pd.DataFrame) -> int:
    """Write ``rows`` (:data:`COLUMNS`) as table ``bench`` of run ``run_id``, in place of what the run
    wrote for it before (one transaction); returns the number of rows."""
    bad = set(rows["role"].dropna()) - set(ROLES)
    if bad:
        raise ValueError(f"roles {sorted(bad)}: use {ROLES} or None")
    df = rows[COLUMNS].assign(run_id=run_id, bench=bench)
    df["value"] = df["value"].astype(float)
    df["row"] = df["row"].astype("int32")
    with warehouse.connect() as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM bench_results WHERE run_id = ? AND bench = ?", [run_id, bench])
        con.register("_rows", df)
        con.execute("INSERT INTO bench_results BY NAME SELECT * FROM _rows")
        con.unregister("_rows")
        con.execute("COMMIT")
    return len(df)


def record_run(warehouse: Warehouse, kind: str, tables: dict[str, pd.DataFrame], config: dict | None = None) -> str:
    """One completed run ``kind`` (``bench_<name>``) holding ``tables`` (table name -> rows, :data:`COLUMNS`),
    for a benchmark script that measured before it records; returns the run id."""
    with warehouse.run(kind, config) as run_id:
        for bench, rows in tables.items():
            record(warehouse, run_id, bench, rows)
    return run_id


def record_in_project(root, kind: str, tables: dict[str, pd.DataFrame], config: dict | None = None) -> str:
    """:func:`record_run` in the warehouse of the project at ``root``; returns a line saying where."""
    from fieldguide.config import open_project

    from fieldguide.platform.lock import project_lock

    project = open_project(root)
    with project_lock(project, kind):  # a bench script's write waits for (or on) the project's other writers
        run_id = record_run(Warehouse(project.warehouse_path), kind, tables, config)
    return f"recorded as run {run_id} in {project.warehouse_path}"
