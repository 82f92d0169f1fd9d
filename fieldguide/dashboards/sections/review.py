"""Review queue: flagged samples over runs, the top of the queue with thumbnails, the signals
behind each flag, and the command that opens the same view in the FiftyOne App."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pandas as pd
import streamlit as st

from fieldguide import names
from fieldguide.dashboards import charts, context, queries

GRID_COLUMNS = 4


def caption(row: pd.Series) -> str:
    score = "n/a" if pd.isna(row["noise_score"]) else f"{row['noise_score']:.2f}"
    return f"{row['label']} → {row['predicted_label']} · noise {score}"


def thumbnails(top: pd.DataFrame) -> None:
    for start in range(0, len(top), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, (_, row) in zip(cols, top.iloc[start:start + GRID_COLUMNS].iterrows()):
            with col:
                path = Path(str(row["filepath"]))
                if path.is_file():
                    st.image(str(path), caption=caption(row), width="stretch")
                else:
                    st.caption(f"{caption(row)} (image missing: {path})")


def main() -> None:
    ctx = context.current()
    st.title("Review queue")
    wh = ctx.warehouse
    history = queries.flagged_over_runs(wh)
    total = queries.flagged_total(wh)
    if history.empty and total == 0:
        context.show_empty(ctx, "Nothing flagged yet: the review queue fills in when label-issue "
                                "signals are computed.", "flag")
        return

    cols = st.columns(4)
    cols[0].metric("Flagged now", total, help="samples with label_issue in the store's last snapshot; the "
                                             "review queue leaves out decided and test samples")
    states = queries.review_states(wh)
    if not states.empty:
        queued = int(states[states["state"].isin(names.QUEUED_STATES)]["samples"].sum())
        cols[3].metric("In the review queue", queued, help="samples waiting for a decision (to_review, pushed, "
                                                          "answered): the App's to_review view")
    if not history.empty:
        last = int(history["flagged"].iloc[-1])
        delta = last - int(history["flagged"].iloc[-2]) if len(history) > 1 else None
        cols[1].metric("Flagged by the last run", last, delta=delta, delta_color="inverse")
        cols[2].metric("Flag runs", len(history))

        st.subheader("Flagged samples over runs")
        if len(history) > 1:
            st.altair_chart(charts.runs_over_time(history, "flagged", title="flagged samples"), width="stretch")
        else:
            st.caption(f"One flag run so far ({history['run_id'].iloc[0]}): the next one draws the trend.")
    review_states_section(wh)

    st.subheader("Open it in the FiftyOne App")
    st.code(ctx.command("app --view to_review"), language="bash")
    app_url = f"http://127.0.0.1:{ctx.project.config.app.port}/datasets/{quote(ctx.project.dataset_name)}?view=to_review"
    st.markdown(f"Then: [{app_url}]({app_url})")

    limit = st.slider("Samples shown", min_value=4, max_value=96, value=12, step=4)
    top = queries.flagged_samples(wh, limit)
    if top.empty:
        st.caption("The store's snapshot has no sample marked label_issue.")
        return
    st.subheader(f"Top {len(top)} flagged samples")
    thumbnails(top)

    signals_section(wh, top)


def review_states_section(wh) -> None:
    """Samples per review state, where the snapshot has them (``review_state``)."""
    states = queries.review_states(wh)
    if states.empty:
        return
    st.subheader("Review states")
    left, right = st.columns([2, 1])
    left.altair_chart(charts.count_bars(states, "state", "samples"), width="stretch")
    right.dataframe(states, hide_index=True, alt="review states")


def signals_section(wh, top: pd.DataFrame) -> None:
    st.subheader("Per-signal breakdown")
    signals = queries.latest_signals(wh, top["sample_id"].tolist())
    table = top[["sample_id", "label", "predicted_label", "confidence", "noise_score"]]
    if not signals.empty:
        table = table.merge(signals.drop(columns=["noise_score"], errors="ignore"), on="sample_id", how="left")
    st.dataframe(table, hide_index=True, alt="flagged signals",
                 column_config={"noise_score": st.column_config.ProgressColumn(
                     "noise_score", min_value=0.0, format="%.2f",
                     max_value=float(max(1.0, table["noise_score"].max(skipna=True) or 0.0)))})
    summary = queries.signal_summary(wh)
    if summary.empty:
        return
    flags = summary[summary["flagged"].notna()]
    scores = summary[summary["flagged"].isna()]
    if not flags.empty:
        st.markdown(f"**Flags** of the latest flag run (`{flags['run_id'].iloc[0]}`): samples each 0/1 signal sets.")
        flags = flags.assign(flagged=flags["flagged"].astype(int))
        left, right = st.columns([2, 1])
        left.altair_chart(charts.count_bars(flags, "signal", "flagged", title="flagged samples"), width="stretch")
        right.dataframe(flags[["signal", "flagged", "samples"]], hide_index=True, alt="signal flags")
    if not scores.empty:
        st.markdown("**Scores**: each score signal over its latest run.")
        st.dataframe(scores.drop(columns="flagged"), hide_index=True, alt="signal scores",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in ("mean", "min", "max")})


main()
