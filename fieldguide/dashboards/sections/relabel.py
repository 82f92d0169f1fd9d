"""Relabeling: tasks pushed to Label Studio, answered and pending; how often curators kept or
changed the label; per-annotator agreement and quality from the multi-annotator signal."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from fieldguide.dashboards import charts, context, queries

#: ``relabel_tasks`` statuses shown (fieldguide.platform.labelstudio.records); ``closed``: a curator
#: decided in the App or the CLI and fieldguide closed the task
STATUSES = ("pushed", "answered", "skipped", "closed")


def per_project(tasks: pd.DataFrame) -> pd.DataFrame:
    """Tasks per Label Studio project: total, answered, pending, skipped, closed by a curator."""
    counts = tasks.groupby(["project", "status"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=list(STATUSES), fill_value=0)
    out = pd.DataFrame({
        "project": counts.index,
        "tasks": counts.sum(axis=1).to_numpy(),
        "answered": counts["answered"].to_numpy(),
        "pending": counts["pushed"].to_numpy(),
        "skipped": counts["skipped"].to_numpy(),
        "closed by a curator": counts["closed"].to_numpy(),
    })
    return out.sort_values("project").reset_index(drop=True)


def tasks_section(tasks: pd.DataFrame, outcomes: pd.DataFrame) -> None:
    status = tasks["status"].value_counts()
    cols = st.columns(6)
    cols[0].metric("Tasks pushed", len(tasks))
    cols[1].metric("Answered", int(status.get("answered", 0)))
    cols[2].metric("Pending", int(status.get("pushed", 0)))
    cols[3].metric("Skipped", int(status.get("skipped", 0)))
    cols[4].metric("Closed by a curator", int(status.get("closed", 0)),
                   help="decided in the App or with 'fieldguide review'; fieldguide closed the task")
    known = outcomes[outcomes["outcome"] != "unknown"] if not outcomes.empty else outcomes
    changed = float((known["outcome"] == "changed").mean()) if len(known) else None
    cols[5].metric("Labels changed", "n/a" if changed is None else f"{changed:.0%}",
                   help="answered tasks whose answer differs from the label at push time")

    st.subheader("Tasks per project")
    st.dataframe(per_project(tasks), hide_index=True, alt="tasks per project")

    timeline = pd.concat([
        pd.DataFrame({"day": pd.to_datetime(tasks["pushed"]).dt.floor("D"), "event": "pushed"}),
        pd.DataFrame({"day": pd.to_datetime(tasks["answered"]).dt.floor("D"),
                      "event": tasks["status"].map({"closed": "closed"}).fillna("answered")}),
    ]).dropna()
    if not timeline.empty:
        per_day = timeline.groupby(["day", "event"], as_index=False).size().rename(columns={"size": "tasks"})
        per_day["day"] = per_day["day"].dt.strftime("%Y-%m-%d")
        base = alt.Chart(per_day).encode(  # a pair of labelled bars per day: pushed, answered
            y=alt.Y("day:N", title=None, sort="ascending"), yOffset=alt.YOffset("event:N", sort=["pushed", "answered", "closed"]),
            x=alt.X("tasks:Q", axis=alt.Axis(format="d", tickMinStep=1)), tooltip=["day", "event", "tasks"],
        )
        bars = base.mark_bar().encode(color=alt.Color("event:N", title=None, sort=["pushed", "answered", "closed"]))
        labels = base.mark_text(align="left", dx=4, color="#333").encode(text="tasks:Q")
        st.altair_chart(alt.layer(bars, labels).properties(height=alt.Step(charts.BAR_STEP // 2)), width="stretch")

    st.subheader("Kept or changed")
    if known.empty:
        st.caption("No answered task yet (pull the answers from Label Studio).")
        return
    kept = known.groupby("outcome", as_index=False).size().rename(columns={"size": "tasks"})
    left, right = st.columns([1, 2])
    with left:
        st.altair_chart(alt.Chart(kept).mark_arc(innerRadius=40).encode(
            theta="tasks:Q", color=alt.Color("outcome:N", scale=alt.Scale(
                domain=["kept", "changed"], range=["#4c78a8", "#f58518"])),
            tooltip=["outcome", "tasks"],
        ).properties(height=220), width="stretch")
        st.dataframe(kept, hide_index=True, alt="outcomes")
    with right:
        changes = known[known["outcome"] == "changed"]
        if not changes.empty:
            moves = (changes.groupby(["label_at_push", "answer"], as_index=False).size()
                     .rename(columns={"label_at_push": "from", "answer": "to", "size": "tasks"})
                     .sort_values(["tasks", "from"], ascending=[False, True]))
            st.markdown("Most frequent changes:")
            moves["change"] = moves["from"] + " → " + moves["to"]
            st.altair_chart(charts.count_bars(moves.head(20), "change", "tasks", title="tasks"), width="stretch")
            st.dataframe(moves[["from", "to", "tasks"]], hide_index=True, alt="label changes")


def annotators_section(people: pd.DataFrame) -> None:
    st.subheader("Annotators")
    if people.empty:
        st.caption("No annotator scores yet: the multi-annotator signal needs crowd votes "
                   "(ingest --votes), then flag.")
        return
    st.caption(f"From run `{people['run_id'].iloc[0]}`: quality and agreement with the consensus.")
    cols = st.columns(3)
    cols[0].metric("Annotators", len(people))
    weights = people["num_labels"].fillna(0)
    mean_agreement = (people["agreement"] * weights).sum() / weights.sum() if weights.sum() else people["agreement"].mean()
    cols[1].metric("Agreement (label-weighted)", f"{mean_agreement:.2f}")
    worst = people.sort_values("quality").iloc[0]
    cols[2].metric("Lowest quality", f"{worst['quality']:.2f}", help=f"annotator {worst['annotator']}")
    left, right = st.columns(2)
    with left:
        st.altair_chart(alt.Chart(people).mark_circle().encode(
            x=alt.X("agreement:Q", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("quality:Q", scale=alt.Scale(domain=[0, 1])),
            size=alt.Size("num_labels:Q", title="labels"),
            tooltip=["annotator", "quality", "agreement", "num_labels"],
        ).properties(height=300), width="stretch")
    with right:
        st.dataframe(people[["annotator", "quality", "agreement", "num_labels"]], hide_index=True,
                     alt="annotators")


def main() -> None:
    ctx = context.current()
    st.title("Relabeling")
    wh = ctx.warehouse
    tasks = queries.relabel_tasks(wh)
    people = queries.annotators(wh)
    events = queries.label_events(wh)
    if tasks.empty and people.empty and events.empty:
        context.show_empty(ctx, "No relabeling yet: push flagged samples to Label Studio.", "relabel push")
        return
    if tasks.empty:
        st.info("No task pushed to Label Studio yet.")
        st.code(ctx.command("relabel push"), language="bash")
    else:
        tasks_section(tasks, queries.relabel_outcomes(wh))
    annotators_section(people)
    if not events.empty:
        st.subheader("Label changes")
        by_source = events.groupby("source", as_index=False).size().rename(columns={"size": "changes"})
        st.altair_chart(charts.count_bars(by_source, "source", "changes", title="label changes"), width="stretch")
        st.dataframe(events, hide_index=True, alt="label events")


main()
