"""Dataset health: samples per class (long tail, scarce classes), what filling added per scarce
class, split and origin; rejects, near-duplicates and outliers."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from fieldguide.dashboards import context, queries

SCARCE_COLOR, COMMON_COLOR = "#d62728", "#4c78a8"


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


def long_tail_chart(per_class: pd.DataFrame, scarce_below: int) -> alt.Chart:
    order = per_class["class"].tolist()
    data = per_class.assign(kind=per_class["scarce"].map({True: "scarce", False: "enough"}))
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("class:N", sort=order, title="class (most samples first)",
                axis=alt.Axis(labels=len(order) <= 60, labelAngle=-60)),
        y=alt.Y("samples:Q", title="samples"),
        color=alt.Color("kind:N", scale=alt.Scale(domain=["scarce", "enough"],
                                                   range=[SCARCE_COLOR, COMMON_COLOR]),
                        title=None),
        tooltip=["class", "samples", "train"],
    )
    rule = alt.Chart(pd.DataFrame({"y": [scarce_below]})).mark_rule(strokeDash=[4, 4]).encode(y="y:Q")
    return (bars + rule).properties(height=320)


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
        x=alt.X("samples:Q", stack="zero", title="samples"),
        y=alt.Y("class:N", sort=table["class"].tolist(), title=None),
        color=alt.Color("kind:N", scale=alt.Scale(domain=FILL_KINDS, range=FILL_COLORS), title=None),
        order=alt.Order("kind_order:Q"),
        tooltip=["class", "kind", "samples"],
    ).transform_calculate(kind_order=f"indexof({FILL_KINDS}, datum.kind)")
    rule = alt.Chart(pd.DataFrame({"x": [scarce_below]})).mark_rule(strokeDash=[4, 4]).encode(x="x:Q")
    return (bars + rule).properties(height=max(120, 22 * len(table)))


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


def count_chart(df: pd.DataFrame, field: str) -> alt.Chart:
    return alt.Chart(df).mark_bar().encode(
        x=alt.X("n:Q", title="samples"), y=alt.Y(f"{field}:N", sort="-x", title=None),
        tooltip=[field, "n"],
    ).properties(height=max(80, 32 * len(df)))


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
    dup_flags = queries.latest_signal(wh, "near_duplicate")
    dups = dup_flags[dup_flags["value"] >= 0.5] if not dup_flags.empty else dup_flags
    outlier_scores = queries.latest_signal(wh, "outlier_score")

    cols = st.columns(6)
    cols[0].metric("Samples", int(counts["n"].sum()) if not counts.empty else 0)
    cols[1].metric("Classes", len(per_class))
    cols[2].metric("Scarce classes", int(per_class["scarce"].sum()),
                   help=f"fewer than {scarce_below} training samples (curation.scarce_class_count)")
    cols[3].metric("Rejects (last ingest)", len(last_rejects))
    cols[4].metric("Near-duplicates", len(dups))
    threshold = ctx.project.config.dashboards.outlier_threshold
    outliers = outlier_scores[outlier_scores["value"] <= threshold] if not outlier_scores.empty else outlier_scores
    cols[5].metric("Outliers", len(outliers), help=f"outlier_score at most {threshold} (lower: more atypical; dashboards.outlier_threshold)")

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
            st.altair_chart(count_chart(by_split, "split"), width="stretch")
            st.dataframe(by_split, hide_index=True, alt="per split")
        with right:
            st.subheader("Per origin")
            st.altair_chart(count_chart(by_origin, "origin"), width="stretch")
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
        if dups.empty:
            st.caption("No near-duplicate signal yet (run flag)." if dup_flags.empty
                       else "No near-duplicates found.")
        else:
            st.dataframe(dups[["sample_id", "label", "filepath"]], hide_index=True, alt="near duplicates")
    with right:
        st.subheader("Outliers")
        if outlier_scores.empty:
            st.caption("No outlier_score signal yet (run flag).")
        else:
            lowest = outlier_scores.sort_values(["value", "sample_id"]).head(20)
            st.caption("Lowest outlier_score first (cleanlab: lower means more atypical).")
            st.dataframe(lowest[["sample_id", "value", "label", "filepath"]]
                         .rename(columns={"value": "outlier_score"}), hide_index=True, alt="outliers")


main()
