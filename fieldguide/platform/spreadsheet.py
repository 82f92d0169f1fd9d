"""CSV files that people open in a spreadsheet: text cells that would run as formulas are defused."""

from __future__ import annotations

import pandas as pd

#: a text cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula_cells(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` where every text cell starting with ``=``, ``+``, ``-``, ``@``, tab or
    carriage return gets a leading ``'`` (OWASP CSV injection), so a spreadsheet shows it as text
    instead of running it. Only ``str`` cells change: numbers (``-0.5``), booleans and empty cells
    keep their values and types."""
    out = df.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):  # object or string columns
            out[col] = out[col].map(_neutralise)
    return out


def _neutralise(value):
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value
