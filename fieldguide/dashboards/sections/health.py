"""Dataset health: samples per class (long tail, scarce classes), what filling added per scarce
class, split and origin; rejects, near-duplicates and outliers."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from fieldguide.dashboards import charts, context, queries

SCARCE_COLOR, COMMON_COLOR = "#d62728", "#4c78a8"
LABELLED_CLASSES = 60  # up to this many classes, one labelled bar each; above, the long tail's shape


def class_counts(counts: pd.DataFrame, scarce_below: int) -> pd.DataFrame:
    """Per labeled class: total, train and scarce (train count, or total without a train split,
    below ``scarce_below``); most samples first."""
    labeled = counts[counts["label"].notna()]
    total = labeled.groupby("label")["n"].sum()
    train = labeled[labeled["split"] == "train"].groupby("label")["n"].sum()
    out = pd.DataFrame({"samples": total, "train": train.reindex(total.index).fillna(0)})
    out = out.astype(int).rename_axis("class").reset_index()
    basis = out["train"] if out["train"].sum() > 0 else out["samples"]
    out["scarce"] = basis < scarce_below
    return out.sort_values(["samples", "class"], ascending=[False, True]).reset_index(drop=True)


def long_tail_chart(per_class: pd.DataFrame, scarce_below: int) -> alt.LayerChart:
    """Samples per class, most first, scarce ones red, the scarce line dashed: a labelled
    horizontal bar per class, or (over :data:`LABELLED_CLASSES`) the long tail's shape."""
    order = per_class["class"].tolist()
    data = per_class.assign(kind=per_class["scarce"].map({True: "scarce", False: "enough"}))
    color = alt.Color("kind:N", scale=alt.Scale(domain=["scarce", "enough"], range=[SCARCE_COLOR, COMMON_COLOR]),
                      title=None)
    if len(order) <= LABELLED_CLASSES:
        bars = charts.count_bars(data, "class", "samples", sort=order, color=color)
        rule = alt.Chart(pd.DataFrame({"x": [scarce_below]})).mark_rule(strokeDash=[4, 4]).encode(x="x:Q")
        return alt.layer(bars, rule).properties(height=alt.Step(charts.BAR_STEP))
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("class:N", sort=order, title="classes, most samples first", axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("samples:Q", title="samples"), color=color, tooltip=["class", "samples", "train"],
    )
    rule = alt.Chart(pd.DataFrame({"y": [scarce_below]})).mark_rule(strokeDash=[4, 4]).encode(y="y:Q")
    return alt.layer(bars, rule).properties(height=320)


FILL_KINDS = ["real", "synthetic", "pseudo_accepted", "pseudo_pending"]
FILL_COLORS = ["#4c78a8", "#f58518", "#54a24b", "#bab0ac"]
FILLED = FILL_KINDS[1:]  # what filling added (everything but the real images)


def fill_table(fill: pd.DataFrame, per_class: pd.DataFrame, scarce_below: int) -> pd.DataFrame:
    """The classes that are scarce or were filled: real / synthetic / accepted and pending
    pseudo-labels, the training labels they add up to, and whether the class is still scarce."""
    scarce = set(per_class.loc[per_class["scarce"], "class"]) if not per_class.empty else set()
    out = fill.copy() if not fill.empty else pd.DataFrame(columns=["class", *FILL_KINDS])
    out = out.set_index("class").reindex(sorted(set(out["class"]) | scarce)).fillna(0)
    out = out[FILL_KINDS].astype(int)
    out["train_labels"] = out["real"] + out["synthetic"] + out["pseudo_accepted"]
    out["still_scarce"] = out["train_labels"] < scarce_below
    filled = out[FILLED].sum(axis=1) > 0
    out = out[filled | out.index.isin(scarce)]
    return out.rename_axis("class").reset_index().sort_values(["train_labels", "class"]).reset_index(drop=True)


def fill_chart(table: pd.DataFrame, scarce_below: int) -> alt.Chart:
    data = table.melt(id_vars="class", value_vars=FILL_KINDS, var_name="kind", value_name="samples")
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("samples:Q", stack="zero", title="samples", axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("class:N", sort=table["class"].tolist(), title=None),
        color=alt.Color("kind:N", scale=alt.Scale(domain=FILL_KINDS, range=FILL_COLORS), title=None),
        order=alt.Order("kind_order:Q"),
        tooltip=["class", "kind", "samples"],
    ).transform_calculate(kind_order=f"indexof({FILL_KINDS}, datum.kind)")
    rule = alt.Chart(pd.DataFrame({"x": [scarce_below]})).mark_rule(strokeDash=[4, 4]).encode(x="x:Q")
    return (bars + rule).properties(height=alt.Step(charts.BAR_STEP))


def show_fill(wh, per_class: pd.DataFrame, scarce_below: int) -> None:
    st.subheader("Filling scarce classes")
    table = fill_table(queries.class_fill(wh), per_class, scarce_below)
    if table.empty:
        st.caption("No scarce class and nothing filled.")
        return
    if table[FILLED].to_numpy().sum() == 0:
        st.caption(f"Nothing filled yet: `fieldguide fill --min-per-class {scarce_below}` adds pseudo-labels "
                   "(for a curator to accept) and synthetic images to these classes.")
    else:
        pending = int(table["pseudo_pending"].sum())
        st.markdown(f"{int(table['still_scarce'].sum())} of {len(table)} classes still under {scarce_below} "
                    f"training labels; {pending} pseudo-labels wait for a curator "
                    "(App view `pseudo_labeled`; pending ones are not training labels).")
    st.altair_chart(fill_chart(table, scarce_below), width="stretch")
    st.dataframe(table, hide_index=True, alt="class fill")


def main() -> None:
    ctx = context.current()
    st.title("Dataset health")
    wh = ctx.warehouse
    counts = queries.sample_counts(wh)
    rejects = queries.ingest_rejects(wh)
    if counts.empty and rejects.empty:
        context.show_empty(ctx, "No samples in the warehouse yet: ingest images first.", "ingest")
        return

    scarce_below = ctx.project.config.curation.scarce_class_count
    per_class = class_counts(counts, scarce_below) if not counts.empty else pd.DataFrame(
        columns=["class", "samples", "train", "scarce"])
    last_rejects = rejects[rejects["run_id"] == rejects["run_id"].iloc[0]] if not rejects.empty else rejects
    dups = queries.datalab_issue(wh, "near_duplicate")
    outliers = queries.datalab_issue(wh, "outlier")

    cols = st.columns(6)
    cols[0].metric("Samples", int(counts["n"].sum()) if not counts.empty else 0)
    cols[1].metric("Classes", len(per_class))
    cols[2].metric("Scarce classes", int(per_class["scarce"].sum()),
                   help=f"fewer than {scarce_below} training samples (curation.scarce_class_count)")
    cols[3].metric("Rejects (last ingest)", len(last_rejects))
    cols[4].metric("Near-duplicates", "n/a" if dups is None else len(dups),
                   help="samples Datalab marks is_near_duplicate in the last flag run (the App's near_duplicates view)")
    cols[5].metric("Outliers", "n/a" if outliers is None else len(outliers),
                   help="samples Datalab marks is_outlier in the last flag run (the App's outliers view)")

    if not per_class.empty:
        st.subheader("Samples per class")
        st.altair_chart(long_tail_chart(per_class, scarce_below), width="stretch")
        scarce = per_class[per_class["scarce"]]
        if scarce.empty:
            st.caption(f"No scarce class: every class has at least {scarce_below} training samples.")
        else:
            st.markdown(f"**{len(scarce)} scarce classes** (fewer than {scarce_below} training samples), "
                        "candidates for pseudo-labels and synthetic images:")
            st.dataframe(scarce[["class", "samples", "train"]].sort_values(["train", "class"]),
                         hide_index=True, alt="scarce classes")

        show_fill(wh, per_class, scarce_below)

        left, right = st.columns(2)
        by_split = counts.groupby("split", as_index=False)["n"].sum().sort_values("n", ascending=False)
        by_origin = counts.groupby("origin", as_index=False)["n"].sum().sort_values("n", ascending=False)
        with left:
            st.subheader("Per split")
            st.altair_chart(charts.count_bars(by_split, "split"), width="stretch")
            st.dataframe(by_split, hide_index=True, alt="per split")
        with right:
            st.subheader("Per origin")
            st.altair_chart(charts.count_bars(by_origin, "origin"), width="stretch")
            st.dataframe(by_origin, hide_index=True, alt="per origin")

    st.subheader("Rejects at ingest")
    if rejects.empty:
        st.caption("No file was rejected at ingest.")
    else:
        run_id = rejects["run_id"].iloc[0]
        st.markdown(f"{len(last_rejects)} rejected in the last ingest run `{run_id}` "
                    f"({len(rejects)} over all runs).")
        reasons = last_rejects.groupby("reason", as_index=False).size().rename(columns={"size": "files"})
        st.dataframe(reasons.sort_values("files", ascending=False), hide_index=True, alt="reject reasons")
        st.dataframe(last_rejects[["path", "reason"]], hide_index=True, alt="rejects")

    left, right = st.columns(2)
    with left:
        st.subheader("Near-duplicates")
        issue_table(dups, "near_duplicate", "near duplicates")
    with right:
        st.subheader("Outliers")
        issue_table(outliers, "outlier", "outliers")


def issue_table(found: pd.DataFrame | None, issue: str, alt_text: str) -> None:
    """The samples Datalab marks with ``issue``, most severe first, or why there are none."""
    if found is None:
        st.caption(f"No {issue} signal yet (run flag).")
    elif found.empty:
        st.caption(f"Datalab found no {issue.replace('_', '-')} in the last flag run.")
    else:
        st.caption(f"Lowest {issue}_score first (cleanlab: lower is more severe); "
                   f"the App's view shows them with their images.")
        st.dataframe(found[["sample_id", "label", "score", "filepath"]].rename(columns={"score": f"{issue}_score"}),
                     hide_index=True, alt=alt_text,
                     column_config={f"{issue}_score": st.column_config.NumberColumn(format="%.3g")})


main()
