"""Where and when the samples were observed: the date and place of each labeled sample in the
warehouse's snapshot, and the counts the "Where and when" page shows (per class and month, per
week of the year).

Dates and places come from the store's ``observed_at`` and ``location`` (CSV, iNaturalist and
Darwin Core ingests), mirrored by every step that snapshots the samples. A flagged sample is one
the last flag run put in the review queue (``label_issue``), as on the review page.
"""

from __future__ import annotations

import calendar

import duckdb
import pandas as pd

from fieldguide.platform.warehouse import Warehouse

MONTHS = list(calendar.month_abbr)[1:]  # Jan .. Dec
WEEK_DAYS = 7


def observations(wh: Warehouse) -> pd.DataFrame | None:
    """One row per labeled sample: sample_id, label, split, flagged (bool), review_state,
    observed_at, day_of_year (1-366), month (1-12), latitude, longitude; date and place NULL where
    the sample has none. None for a warehouse written before samples carried their date and place
    (schema 5); an empty frame for one without samples."""
    try:
        df = wh.query(
            """
            SELECT sample_id, label, split, coalesce(label_issue, false) AS flagged, review_state,
                   observed_at, dayofyear(observed_at) AS day_of_year, month(observed_at) AS month,
                   latitude, longitude
            FROM samples WHERE label IS NOT NULL ORDER BY label, observed_at NULLS LAST, sample_id
            """
        )
    except duckdb.CatalogException:  # a warehouse file no step has written samples to yet
        return pd.DataFrame()
    except duckdb.BinderException:  # a warehouse from before dates and places were mirrored
        return None
    return df


def dated(obs: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`observations` with a date."""
    return obs[obs["observed_at"].notna()] if not obs.empty else obs


def placed(obs: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`observations` with a place (both latitude and longitude)."""
    return obs[obs["latitude"].notna() & obs["longitude"].notna()] if not obs.empty else obs


def by_month(obs: pd.DataFrame) -> pd.DataFrame:
    """Dated samples of ``obs`` per month, all twelve in order: month (Jan..Dec), samples, flagged."""
    rows = dated(obs)
    months = pd.RangeIndex(1, 13, name="month")
    samples = rows.groupby("month").size().reindex(months, fill_value=0)
    flagged = rows[rows["flagged"]].groupby("month").size().reindex(months, fill_value=0)
    return pd.DataFrame({"month": MONTHS, "samples": samples.to_numpy(int), "flagged": flagged.to_numpy(int)})


def class_by_month(obs: pd.DataFrame) -> pd.DataFrame:
    """Dated samples per class and month (one row per class with any, every month listed):
    class, month (Jan..Dec), month_number, samples, flagged."""
    rows = dated(obs)
    if rows.empty:
        return pd.DataFrame(columns=["class", "month", "month_number", "samples", "flagged"])
    grid = pd.MultiIndex.from_product([sorted(rows["label"].unique()), range(1, 13)], names=["class", "month_number"])
    keys = [rows["label"].rename("class"), rows["month"].astype(int).rename("month_number")]
    counts = pd.DataFrame({
        "samples": rows.groupby(keys).size(),
        "flagged": rows["flagged"].groupby(keys).sum(),
    }).reindex(grid, fill_value=0).astype(int).reset_index()
    counts.insert(1, "month", [MONTHS[m - 1] for m in counts["month_number"]])
    return counts


def by_week(obs: pd.DataFrame) -> pd.DataFrame:
    """Dated samples of ``obs`` per week of the year and flag: first_day (day of year the week
    starts), last_day, flagged ("flagged" or "not flagged"), samples; weeks without samples left out."""
    rows = dated(obs)
    if rows.empty:
        return pd.DataFrame(columns=["first_day", "last_day", "flagged", "samples"])
    first = (rows["day_of_year"].astype(int) - 1) // WEEK_DAYS * WEEK_DAYS + 1
    out = (pd.DataFrame({"first_day": first, "flagged": rows["flagged"].map({True: "flagged", False: "not flagged"})})
           .groupby(["first_day", "flagged"]).size().rename("samples").reset_index())
    out.insert(1, "last_day", (out["first_day"] + WEEK_DAYS - 1).clip(upper=366))
    return out
