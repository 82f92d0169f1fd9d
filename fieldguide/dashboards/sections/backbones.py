"""Backbones: what ``fieldguide bench backbones`` measured, one row per backbone, and accuracy against cost.

Per collection (the project a run measured) and backbone, the newest completed ``bench_backbone``
run: its test accuracy (and at each taxonomy rank), embedding quality, cost and gradient activity
(the warehouse's ``metrics``), then test top-1 against MACs per image.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from fieldguide import names
from fieldguide.dashboards import context

# the newest completed bench_backbone run of each (collection, backbone), with every metric
LATEST_SQL = """
WITH bench AS (
    SELECT run_id, coalesce(finished, started) AS recorded,
           json_extract_string(config, '$.backbone') AS backbone,
           coalesce(json_extract_string(config, '$.collection'), '') AS collection,
           json_extract_string(config, '$.device') AS device
    FROM runs WHERE kind = ? AND status = 'completed'
), latest AS (
    SELECT * FROM bench QUALIFY row_number() OVER (PARTITION BY collection, backbone
                                                   ORDER BY recorded DESC, run_id DESC) = 1
)
SELECT l.collection, l.backbone, l.device, l.run_id, l.recorded, m.split, m.name, m.value
FROM latest l JOIN metrics m USING (run_id)
ORDER BY l.collection, l.backbone
"""

COLUMNS = [names.TOP1, names.TOP5, names.MACRO_F1, *names.EMBEDDING_METRICS, *names.BACKBONE_COST_METRICS,
           names.GRAD_NORM_MEAN, names.GRAD_EARLY_SHARE]
FORMATS = {names.PARAMS: "%.0f", names.MACS: "%.0f", names.FLOPS: "%.0f", names.IMAGES_PER_S: "%.1f",
           names.PEAK_MEMORY_MB: "%.1f"}


def backbone_table(wh) -> pd.DataFrame:
    """One row per (collection, backbone): collection, backbone, the metrics (a rank's as
    ``<rank>_top1`` / ``<rank>_macro_f1``), device, run_id; best test top-1 first in each collection."""
    has = wh.query("SELECT count(*) FROM information_schema.tables WHERE table_name IN ('runs', 'metrics')")
    if has.empty or int(has.iloc[0, 0]) < 2:
        return pd.DataFrame()
    long = wh.query(LATEST_SQL, [names.BENCH_BACKBONE])
    if long.empty:
        return long
    rank = long["split"].str.startswith("test:")
    long["column"] = long["name"].where(~rank, long["split"].str.slice(5) + "_" + long["name"])
    keys = ["collection", "backbone", "device", "run_id"]
    wide = long.pivot_table(index=keys, columns="column", values="value", aggfunc="first").reset_index()
    ranked = sorted(c for c in wide.columns if c not in keys and c not in COLUMNS and c not in (names.N, names.ECE))
    order = [c for c in [names.TOP1, names.TOP5, names.MACRO_F1, names.ECE, *ranked, *COLUMNS[3:]] if c in wide]
    wide = wide.sort_values(["collection", names.TOP1], ascending=[True, False])
    return wide[["collection", "backbone", *order, "device", "run_id"]].reset_index(drop=True)


def scatter(table: pd.DataFrame) -> alt.LayerChart:
    """Test top-1 against GMACs per image, a labelled point per backbone."""
    df = table.assign(gmacs=table[names.MACS] / 1e9)
    base = alt.Chart(df).encode(
        x=alt.X("gmacs:Q", title="GMACs per image (less is cheaper)", scale=alt.Scale(zero=False, nice=True, padding=130)),  # room for the labels
        y=alt.Y(f"{names.TOP1}:Q", title="test top-1", scale=alt.Scale(zero=False, nice=True, padding=30)),
        tooltip=["backbone", names.TOP1, names.MACRO_F1, "gmacs", names.IMAGES_PER_S, names.PARAMS],
    )
    points = base.mark_circle(size=160, opacity=0.85).encode(color=alt.Color("backbone:N", legend=None))
    labels = base.mark_text(align="left", dx=10, color="#333").encode(text="backbone:N")
    return alt.layer(points, labels).properties(height=320, title="accuracy against cost")


def main() -> None:
    ctx = context.current()
    st.title("Backbones")
    table = backbone_table(ctx.warehouse)
    if table.empty:
        # the loop's next step first (a new project ingests before it can measure backbones)
        context.show_empty(ctx, "No backbone benchmark recorded yet: measure the backbones on this project's data.",
                           "bench backbones --backbones efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
        return
    collections = list(dict.fromkeys(table["collection"]))
    chosen = st.selectbox("Collection", collections, key="backbones_collection") if len(collections) > 1 \
        else collections[0]
    shown = table[table["collection"] == chosen].drop(columns="collection").dropna(axis=1, how="all")
    st.caption(f"{len(shown)} backbones on {chosen or 'this project'}, best test top-1 first. Test: a head on "
               "each backbone's train embeddings. Embedding: kNN top-1, silhouette (higher better), alignment, "
               "uniformity, within/between distance ratio (lower better). Cost on the device shown; gradient "
               "activity over a short fine-tune (the plot per block: runs/backbones/gradient_norms.png).")
    fmt = {c: st.column_config.NumberColumn(c, format=FORMATS.get(c, "%.3f")) for c in shown.columns
           if c not in ("backbone", "device", "run_id")}
    st.dataframe(shown, hide_index=True, alt="backbones", column_config=fmt)
    if shown[[names.TOP1, names.MACS]].notna().all(axis=None):
        st.altair_chart(scatter(shown), width="stretch")


main()
