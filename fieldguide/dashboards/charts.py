"""The chart shapes the pages share: labelled horizontal bars for categories, runs on a time axis."""

from __future__ import annotations

import altair as alt
import pandas as pd

BAR_STEP = 26  # pixels per bar: room for the category's name beside it
BAR_COLOR = "#4c78a8"


def count_bars(df: pd.DataFrame, category: str, value: str = "n", *, title: str = "samples",
               sort: str | list[str] = "-x", color: alt.Color | None = None) -> alt.LayerChart:
    """One horizontal bar per ``category`` (its name on the left), the count written at its end."""
    base = alt.Chart(df).encode(
        y=alt.Y(f"{category}:N", sort=sort, title=None, axis=alt.Axis(labelLimit=260)),
        x=alt.X(f"{value}:Q", title=title, axis=alt.Axis(format="d", tickMinStep=1)),
        tooltip=[category, value],
    )
    bars = base.mark_bar(color=BAR_COLOR) if color is None else base.mark_bar().encode(color=color)
    labels = base.mark_text(align="left", dx=4, color="#333").encode(text=f"{value}:Q")
    return alt.layer(bars, labels).properties(height=alt.Step(BAR_STEP))


def time_format(times: pd.Series) -> str:
    """A d3 time format that tells the runs in ``times`` apart: seconds when they are minutes
    apart, the day when they are days apart."""
    times = pd.to_datetime(times)
    span = times.max() - times.min() if len(times) else pd.Timedelta(0)
    if span < pd.Timedelta(hours=1):
        return "%H:%M:%S"
    if span < pd.Timedelta(days=2):
        return "%b %d %H:%M"
    return "%b %d"


def runs_over_time(df: pd.DataFrame, value: str, *, title: str, time: str = "started") -> alt.LayerChart:
    """``value`` of each run at the time it started: a line with a labelled point per run."""
    base = alt.Chart(df).encode(
        x=alt.X(f"{time}:T", title="run started", axis=alt.Axis(format=time_format(df[time]), labelAngle=-30)),
        y=alt.Y(f"{value}:Q", title=title, scale=alt.Scale(zero=True), axis=alt.Axis(format="d", tickMinStep=1)),
        tooltip=["run_id", "kind", alt.Tooltip(f"{time}:T", format="%Y-%m-%d %H:%M:%S"), value],
    )
    line = base.mark_line(point=alt.OverlayMarkDef(size=80))
    labels = base.mark_text(dy=-12, color="#333").encode(text=f"{value}:Q")
    return alt.layer(line, labels).properties(height=240)
