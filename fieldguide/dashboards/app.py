"""The dashboards' entry point (``streamlit run app.py``; ``fieldguide dashboard`` does it for you).

The project comes from ``FIELDGUIDE_PROJECT``; every page reads only its DuckDB warehouse
(read-only, open, query, close) and, for thumbnails, the images by path.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from fieldguide.dashboards import context
from fieldguide.errors import FieldguideError

SECTIONS = Path(__file__).resolve().parent / "sections"


def main() -> None:
    st.set_page_config(page_title="fieldguide dashboards", layout="wide")
    nav = st.navigation(
        [
            # the default page is served at / only (Streamlit reserves its url_path and serves nothing
            # there), so the same page, hidden from the menu, answers a link or bookmark to /health
            st.Page(SECTIONS / "health.py", title="Dataset health", url_path="home", default=True),
            st.Page(SECTIONS / "health.py", title="Dataset health", url_path="health", visibility="hidden"),
            st.Page(SECTIONS / "review.py", title="Review queue", url_path="review"),
            st.Page(SECTIONS / "relabel.py", title="Relabeling", url_path="relabel"),
            st.Page(SECTIONS / "where_when.py", title="Where and when", url_path="where-when"),
            st.Page(SECTIONS / "models.py", title="Models", url_path="models"),
            st.Page(SECTIONS / "benchmarks.py", title="Benchmarks", url_path="benchmarks"),
            st.Page(SECTIONS / "backbones.py", title="Backbones", url_path="backbones"),
        ]
    )
    ctx = context.current()
    st.sidebar.markdown(f"**{ctx.project.config.project.name}**")
    st.sidebar.caption(str(ctx.root))
    if not ctx.warehouse.path.exists():
        st.sidebar.caption("no warehouse yet")
    try:
        nav.run()
    except FieldguideError as e:  # e.g. the CLI held the warehouse longer than the retries
        st.warning(f"{e}. Reload the page in a moment.")


main()
