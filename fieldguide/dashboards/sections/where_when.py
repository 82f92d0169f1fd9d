"""Where and when: per class, the season of its observations (a histogram over the year, a class x
month overview) and, when samples have coordinates, where they were observed; flagged samples
(the review queue's label issues) in red."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from fieldguide.dashboards import charts, context, observations

ALL = "All classes"
FLAGGED_COLOR = "#d62728"
STATUS = ["not flagged", "flagged"]
STATUS_COLORS = [charts.BAR_COLOR, FLAGGED_COLOR]
STATUS_SHAPES = ["circle", "cross"]
# day of the year each month starts (a common year): the season axis' ticks
MONTH_STARTS = [1, 32, 60, 91, 121, 152, 182, 213, 244, 274, 305, 335]
HEAT_STEP = charts.BAR_STEP  # pixels per class row of the overview


def status_color() -> alt.Color:
    return alt.Color("status:N", scale=alt.Scale(domain=STATUS, range=STATUS_COLORS), title=None,
                     legend=alt.Legend(orient="top"))


def season_chart(weeks: pd.DataFrame) -> alt.Chart:
    """Samples per week of the year, flagged ones stacked in red, months on the axis."""
    data = weeks.rename(columns={"flagged": "status"}).assign(end=lambda d: d["last_day"] + 1)
    month_of = f"{observations.MONTHS}[indexof({MONTH_STARTS}, datum.value)]"
    return alt.Chart(data).mark_bar(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("first_day:Q", bin="binned", title=None, scale=alt.Scale(domain=[1, 367], nice=False),
                axis=alt.Axis(values=MONTH_STARTS, labelExpr=month_of, grid=True)),
        x2="end:Q",
        y=alt.Y("samples:Q", stack="zero", title="samples per week", axis=alt.Axis(format="d", tickMinStep=1)),
        color=status_color(),
        order=alt.Order("status_order:Q"),
        tooltip=[alt.Tooltip("first_day:Q", title="from day"), alt.Tooltip("last_day:Q", title="to day"),
                 "status", "samples"],
    ).transform_calculate(status_order=f"indexof({STATUS}, datum.status)").properties(height=220)


def heatmap(counts: pd.DataFrame) -> alt.LayerChart:
    """Classes x months, the count in each cell; a cell with flagged samples has a red frame."""
    base = alt.Chart(counts).encode(
        x=alt.X("month:N", sort=observations.MONTHS, title=None, axis=alt.Axis(orient="top", labelAngle=0)),
        y=alt.Y("class:N", title=None, axis=alt.Axis(labelLimit=260)),
        tooltip=["class", "month", "samples", "flagged"],
    )
    top = max(int(counts["samples"].max()), 1)
    cells = base.mark_rect().encode(  # the count is written in the cell: no legend; empty cells grey
        color=alt.condition("datum.samples > 0", alt.Color("samples:Q", scale=alt.Scale(scheme="blues", domain=[0, top]),
                                                           legend=None), alt.value("#f2f2f2")),
        stroke=alt.condition("datum.flagged > 0", alt.value(FLAGGED_COLOR), alt.value(None)),
        strokeWidth=alt.condition("datum.flagged > 0", alt.value(2.5), alt.value(0)),
    )
    labels = base.mark_text(fontSize=11).encode(
        text=alt.condition("datum.samples > 0", "samples:Q", alt.value("")),
        color=alt.condition(f"datum.samples > {top / 2}", alt.value("white"), alt.value("#333")),
    )
    return alt.layer(cells, labels).properties(height=alt.Step(HEAT_STEP))


def map_chart(points: pd.DataFrame) -> alt.Chart:
    """Each observation at its longitude and latitude (degrees, no base map: nothing is fetched),
    flagged ones as red crosses drawn on top."""
    data = points.assign(
        status=points["flagged"].map({True: STATUS[1], False: STATUS[0]}),
        date=points["observed_at"].dt.strftime("%Y-%m-%d"),
    ).sort_values("flagged", kind="stable")[["sample_id", "label", "status", "date", "review_state",
                                            "latitude", "longitude"]]
    return alt.Chart(data).mark_point(filled=True, opacity=0.85).encode(
        x=alt.X("longitude:Q", title="longitude (°)", scale=alt.Scale(zero=False, padding=12),
                axis=alt.Axis(tickCount=8)),
        y=alt.Y("latitude:Q", title="latitude (°)", scale=alt.Scale(zero=False, padding=12),
                axis=alt.Axis(tickCount=6)),
        color=status_color(),
        shape=alt.Shape("status:N", scale=alt.Scale(domain=STATUS, range=STATUS_SHAPES), legend=None),
        size=alt.Size("status:N", scale=alt.Scale(domain=STATUS, range=[60, 160]), legend=None),
        tooltip=["sample_id", "label", "status", "date", "review_state",
                 alt.Tooltip("latitude:Q", format=".4f"), alt.Tooltip("longitude:Q", format=".4f")],
    ).properties(height=420).interactive()


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def month_table(obs: pd.DataFrame) -> pd.DataFrame:
    """:func:`observations.by_month` turned on its side: a row of samples and one of flagged."""
    months = observations.by_month(obs).set_index("month").T
    return months.rename_axis("count").reset_index()


def section_rows(title: str, has, obs: pd.DataFrame, selection: pd.DataFrame, chosen: str, *, what: str,
                 fields: str, columns: str) -> pd.DataFrame | None:
    """A section's heading, then the rows of ``selection`` that ``has`` keeps (those with a ``what``,
    stored as ``fields``); None, said plainly, when no sample at all has one."""
    st.subheader(title)
    if has(obs).empty:
        st.info(f"No sample has a {what} ({fields}): {what}s come with CSV ({columns}), iNaturalist and "
                "Darwin Core ingests.")
        return None
    mine = has(selection)
    if mine.empty:
        st.caption(f"No sample of {chosen} has a {what}.")
    return mine


def season_section(obs: pd.DataFrame, selection: pd.DataFrame, chosen: str) -> None:
    mine = section_rows("Season", observations.dated, obs, selection, chosen, what="date", fields="observed_at",
                        columns="observed_on, date")
    if mine is None:
        return
    if not mine.empty:
        flagged = int(mine["flagged"].sum())
        st.markdown(f"**{chosen}**: {plural(len(mine), 'dated sample')}, {flagged} flagged (red), by week of the year.")
        st.altair_chart(season_chart(observations.by_week(mine)), width="stretch")
        st.dataframe(month_table(mine), hide_index=True, alt="season by month")
    undated = len(selection) - len(mine)
    if undated:
        st.caption(f"{plural(undated, 'sample')} without a date left out.")
    dated = observations.dated(obs)
    if dated["label"].nunique() > 1:
        st.markdown("**All classes by month** (a red frame: the cell holds flagged samples)")
        st.altair_chart(heatmap(observations.class_by_month(dated)), width="stretch")


def place_section(obs: pd.DataFrame, selection: pd.DataFrame, chosen: str) -> None:
    mine = section_rows("Place", observations.placed, obs, selection, chosen, what="place",
                        fields="latitude and longitude", columns="latitude, longitude")
    if mine is None or mine.empty:
        return
    flagged = int(mine["flagged"].sum())
    st.markdown(f"**{chosen}**: {plural(len(mine), 'observation')} with a place, {flagged} flagged (red crosses).")
    st.altair_chart(map_chart(mine), width="stretch")
    unplaced = len(selection) - len(mine)
    st.caption(("" if not unplaced else f"{plural(unplaced, 'sample')} without a place left out. ")
               + "Longitude and latitude in degrees, without a base map (the dashboards fetch nothing); "
               "drag to pan, scroll to zoom.")


def main() -> None:
    ctx = context.current()
    st.title("Where and when")
    obs = observations.observations(ctx.warehouse)
    if obs is None:
        st.info("This warehouse was written before samples carried their date and place: the next step "
                "that writes the samples (ingest, predict, flag) fills them in.")
        st.code(ctx.command("flag"), language="bash")
        return
    if obs.empty:
        context.show_empty(ctx, "No labeled samples in the warehouse yet: ingest images first.", "ingest")
        return

    cols = st.columns(4)
    cols[0].metric("Labeled samples", len(obs))
    cols[1].metric("With a date", len(observations.dated(obs)))
    cols[2].metric("With a place", len(observations.placed(obs)))
    cols[3].metric("Flagged", int(obs["flagged"].sum()),
                   help="samples with label_issue in the store's last snapshot (the review queue's label issues)")

    classes = sorted(obs["label"].unique())
    dated_per_class = observations.dated(obs).groupby("label").size()
    chosen = st.selectbox("Class", [ALL, *classes],
                          format_func=lambda c: c if c == ALL else f"{c} ({dated_per_class.get(c, 0)} dated)")
    selection = obs if chosen == ALL else obs[obs["label"] == chosen]
    season_section(obs, selection, chosen)
    place_section(obs, selection, chosen)


main()
