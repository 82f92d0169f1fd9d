"""Noise benchmark: the tables the benchmarks wrote (the project's runs/benchmarks/*.csv and
the repository's benchmarks/results/*.csv)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from fieldguide.dashboards import context

REPO_RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"


def benchmark_tables(folders: list[Path]) -> list[tuple[Path, pd.DataFrame]]:
    """Every ``*.csv`` in ``folders`` (those that exist), read as a table, sorted by name."""
    tables = []
    for folder in folders:
        if folder.is_dir():
            for path in sorted(folder.glob("*.csv")):
                try:
                    tables.append((path, pd.read_csv(path)))
                except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
                    tables.append((path, pd.DataFrame()))
    return tables


def show_tables(tables, key: str) -> None:
    for i, (path, table) in enumerate(tables):
        st.subheader(path.stem)
        st.caption(str(path))
        if table.empty:
            st.warning(f"{path.name}: empty or not a CSV table")
            continue
        st.dataframe(table, hide_index=True, alt=f"{path.stem} table")


def main() -> None:
    ctx = context.current()
    st.title("Noise benchmark")
    folder = ctx.project.runs_dir / "benchmarks"
    tables = benchmark_tables([folder])
    if tables:
        st.caption(f"{len(tables)} tables from {folder}")
        show_tables(tables, "project_benchmark")
    else:
        st.info(f"No benchmark tables in this project yet: a benchmark writes its tables to {folder}/*.csv.")
        st.code(ctx.command("bench --help"), language="bash")
    shipped = benchmark_tables([REPO_RESULTS])
    if shipped:
        st.header("Reference results")
        st.caption(f"{len(shipped)} tables from {REPO_RESULTS}")
        show_tables(shipped, "repo_benchmark")


main()
