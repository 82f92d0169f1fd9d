"""Benchmarks: every benchmark recorded in the project's warehouse (table ``bench_results``), charted.

Per table (``suite_heads``, ``noise``, ``heads``, ...) and collection the page shows the rows of the
newest completed run that holds them, as the table's CSV does (a re-run supersedes, a run of other
collections adds). Each table gets a grouped horizontal bar chart of one metric (its headline metric
first) by setting, method and collection, with the baselines in grey, a tick on each default's bar
at its best baseline and a default below its baseline in red (✗, listed under the chart), then the
table.
"""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from fieldguide.dashboards import context

# ---- SQL ------------------------------------------------------------------------------------------------
HAS_TABLE_SQL = "SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'bench_results'"

# the newest completed run's rows of each (table, collection)
LATEST_CTE = """
WITH ranked AS (
    SELECT b.*, b.rowid AS position, r.kind, coalesce(r.finished, r.started) AS recorded,
           dense_rank() OVER (PARTITION BY b.bench, b.collection
                              ORDER BY coalesce(r.finished, r.started) DESC, b.run_id DESC) AS newest
    FROM bench_results b JOIN runs r USING (run_id)
    WHERE r.status = 'completed'
), latest AS (SELECT * EXCLUDE (newest) FROM ranked WHERE newest = 1)
"""

LATEST_SQL = LATEST_CTE + """
SELECT bench, run_id, kind, recorded, row, collection, setting, method, role, metric, value, better, params
FROM latest ORDER BY bench, collection, row, position
"""

# each default below a baseline of its cell (same run, table, collection, setting and metric)
LOSING_SQL = LATEST_CTE + """
SELECT d.bench, d.collection, d.setting, d.metric, d.method, d.value, b.method AS baseline,
       b.value AS baseline_value
FROM latest d JOIN latest b
  ON d.run_id = b.run_id AND d.bench = b.bench AND d.metric = b.metric
 AND d.collection IS NOT DISTINCT FROM b.collection AND d.setting IS NOT DISTINCT FROM b.setting
WHERE d.role = 'default' AND b.role = 'baseline'
  AND ((d.better = 'higher' AND d.value < b.value) OR (d.better = 'lower' AND d.value > b.value))
ORDER BY d.bench, d.collection, d.setting, d.metric, d.method, b.method
"""

# ---- what to chart first -----------------------------------------------------------------------------------
HEADLINE = {
    "suite_heads": "top1", "suite_noise": "auroc", "suite_train": "top1", "suite_pseudolabel": "top1",
    "noise": "auroc", "heads": "test_top1", "pseudolabel": "test_top1", "closed_loop": "test_top1",
    "embed": "images_per_s", "ingest": "images_per_s", "demo": "wall_seconds",
}
TITLES = {
    "suite_heads": "Suite: heads (predict.head vs plain logistic regression)",
    "suite_noise": "Suite: label-noise detection (flag vs cleanlab)",
    "suite_train": "Suite: training on noisy labels",
    "suite_pseudolabel": "Suite: pseudo-labeling with k labels per class",
    "noise": "Noise benchmark: each signal finding injected label noise",
    "heads": "Heads on frozen embeddings", "pseudolabel": "Pseudo-labeling with few labels",
    "closed_loop": "Closed loop: noise-tolerant training and curation", "embed": "Embedding throughput",
    "ingest": "Ingest rate", "demo": "What the demo measured", "heads_ensemble": "Ensemble members",
}
ORDER = ["suite_heads", "suite_noise", "suite_train", "suite_pseudolabel", "noise", "closed_loop", "heads",
         "heads_ensemble", "pseudolabel", "embed", "ingest", "demo"]
STATUS = ["default", "default, below its baseline", "baseline", "measured"]
COLORS = ["#1f77b4", "#d62728", "#9e9e9e", "#a9c4e0"]
KEYS = ["collection", "setting", "method", "role"]


def latest_results(wh) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(rows, losing)``: the newest completed rows of every table, and each default below its baseline."""
    has = wh.query(HAS_TABLE_SQL)
    if has.empty or not int(has.iloc[0, 0]):
        return pd.DataFrame(), pd.DataFrame()
    return wh.query(LATEST_SQL), wh.query(LOSING_SQL)


def chart_data(rows: pd.DataFrame, losing: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One bar per (collection, setting, method) of ``metric``: its value, its status (a colour), the best
    baseline of its cell and the label printed beside it (the value, ✗ where the default loses)."""
    data = rows[(rows["metric"] == metric) & rows["value"].notna()].copy()
    data[["collection", "setting"]] = data[["collection", "setting"]].fillna("")
    lost = losing[losing["metric"] == metric].fillna({"collection": "", "setting": ""})
    lost_keys = set(zip(lost["collection"], lost["setting"], lost["method"]))
    data["loses"] = [k in lost_keys for k in zip(data["collection"], data["setting"], data["method"])]
    data["status"] = [("default, below its baseline" if lo else "default") if role == "default"
                      else role if role == "baseline" else "measured" for role, lo in zip(data["role"], data["loses"])]
    base = data[data["role"] == "baseline"]
    lower = (data["better"] == "lower").any()
    best = base.groupby(["collection", "setting"])["value"].agg("min" if lower else "max").rename("baseline_value")
    data = data.join(best, on=["collection", "setting"])
    data["label"] = [f"{v:.4g}" + (" ✗" if lo else "") for v, lo in zip(data["value"], data["loses"])]
    return data


def bar_chart(data: pd.DataFrame, metric: str) -> alt.FacetChart:
    """Horizontal bars of ``metric``: a row of the chart per setting, in it a bar per collection and method
    (a collection's methods side by side); a black tick on a default's bar marks its best baseline."""
    settings = list(dict.fromkeys(data["setting"]))
    collections = list(dict.fromkeys(data["collection"]))
    named, shown = len(collections) > 1, set(data["status"])
    data = data.assign(bar=[f"{c} · {m}" if named else m for c, m in zip(data["collection"], data["method"])])
    order = list(dict.fromkeys(data.sort_values("collection", key=lambda c: c.map(collections.index),
                                                kind="stable")["bar"]))
    y = alt.Y("bar:N", title=None, sort=order, axis=alt.Axis(labelLimit=380, labelFontSize=12))
    bars = alt.Chart().mark_bar().encode(
        x=alt.X("value:Q", title=metric),
        y=y,
        color=alt.Color("status:N", scale=alt.Scale(domain=[s for s in STATUS if s in shown],
                                                    range=[c for s, c in zip(STATUS, COLORS) if s in shown]),
                        legend=alt.Legend(title=None, orient="top", labelFontSize=12)),
        tooltip=["collection:N", "setting:N", "method:N", "role:N", alt.Tooltip("value:Q", format=".4f"),
                 alt.Tooltip("baseline_value:Q", title="best baseline", format=".4f")],
    )
    labels = alt.Chart().mark_text(align="left", dx=4, fontSize=11).encode(
        x="value:Q", y=y, text="label:N",
        color=alt.condition("datum.loses", alt.value("#d62728"), alt.value("#333333")))
    layers = [bars, labels]
    if data["baseline_value"].notna().any():
        layers.append(alt.Chart().mark_tick(color="black", thickness=2, size=16).encode(x="baseline_value:Q", y=y)
                      .transform_filter("datum.role == 'default' && isValid(datum.baseline_value)"))
    chart = alt.layer(*layers, data=data).properties(width=440, height=alt.Step(20))
    return chart.facet(
        row=alt.Row("setting:N", sort=settings, title=None,
                    header=alt.Header(labelAngle=0, labelAlign="left", labelFontWeight="bold", labelFontSize=12)),
    ).resolve_scale(y="independent")


def wide_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The table's rows as the benchmark wrote them: one row per row, one column per metric, then its params."""
    keyed = rows.assign(**{k: rows[k].fillna("") for k in KEYS})
    metrics = list(dict.fromkeys(keyed["metric"]))
    wide = keyed.pivot(index=["row", *KEYS], columns="metric", values="value")[metrics].reset_index()
    params = keyed.drop_duplicates("row").set_index("row")["params"].dropna()
    if len(params):
        extra = pd.DataFrame([json.loads(p) for p in params], index=params.index)
        wide = wide.join(extra, on="row")
    wide = wide.sort_values("row").drop(columns="row")
    return wide[[c for c in wide.columns if c not in KEYS or wide[c].astype(bool).any()]]


def show_bench(bench: str, rows: pd.DataFrame, losing: pd.DataFrame) -> None:
    st.subheader(TITLES.get(bench, bench))
    runs = rows.drop_duplicates(["run_id", "collection"]).fillna({"collection": "–"})
    st.caption(" · ".join(f"run {run} ({g['kind'].iloc[0]}, {g['recorded'].iloc[0]:%Y-%m-%d %H:%M}): "
                          + ", ".join(g["collection"]) for run, g in runs.groupby("run_id", sort=False))
               + f" · table {bench}")
    metrics = list(dict.fromkeys(rows.loc[rows["value"].notna(), "metric"]))
    if not metrics:
        st.warning(f"{bench}: no values recorded")
        return
    scored = [m for m in metrics if (rows.loc[rows["metric"] == m, "better"].notna()).any()]
    first = HEADLINE.get(bench) if HEADLINE.get(bench) in metrics else (scored or metrics)[0]
    metric = st.selectbox("metric", metrics, index=metrics.index(first), key=f"metric-{bench}")
    data = chart_data(rows, losing, metric)
    st.altair_chart(bar_chart(data, metric), width="content")
    lost = losing[losing["metric"] == metric]
    if len(lost):
        sign = ">" if (data["better"] == "lower").any() else "<"
        lines = [f"- {r.collection} · {r.setting}: **{r.method}** {r.value:.4f} {sign} **{r.baseline}** "
                 f"{r.baseline_value:.4f}" for r in lost.itertuples()]
        st.error(f"✗ {len(lost)} comparison(s) where the default is worse than a baseline on {metric}:\n" + "\n".join(lines))
    elif (rows["role"] == "baseline").any():
        st.success(f"On {metric}, no default is below its baseline.")
    others = losing[losing["metric"] != metric]["metric"].value_counts()
    if len(others):
        st.caption("Below its baseline on other metrics: " + ", ".join(f"{m} ({n})" for m, n in others.items()))
    st.dataframe(wide_table(rows), hide_index=True, alt=f"{bench} table")


def main() -> None:
    ctx = context.current()
    st.title("Benchmarks")
    rows, losing = latest_results(ctx.warehouse)
    if rows.empty:
        st.info("No benchmark recorded yet: run `fieldguide bench suite --quick` (the suite on the bundled "
                "collections) or `fieldguide bench noise` (label noise injected into this project's labels).")
        st.code(ctx.command("bench suite --quick"), language="bash")
        st.code(ctx.command("bench noise"), language="bash")
        return
    benches = sorted(rows["bench"].unique(), key=lambda b: (ORDER.index(b) if b in ORDER else len(ORDER), b))
    st.caption(f"{len(benches)} benchmark tables from {rows['run_id'].nunique()} run(s) in {ctx.warehouse.path}; "
               f"{len(losing)} comparison(s) where a default is worse than a baseline.")
    for bench in benches:
        show_bench(bench, rows[rows["bench"] == bench], losing[losing["bench"] == bench])


main()
