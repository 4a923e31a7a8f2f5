"""Text search: a thumbnail grid with scores, a min-score slider, filters in the sidebar."""

from __future__ import annotations

import hashlib

import streamlit as st

from retrieval.search.defaults import DEFAULT_COLLAPSE

from .. import nav, session
from ..client import ApiError
from ..logic import above, score_bounds
from ..widgets import filters_sidebar, show_error, thumbnail_grid


def render() -> None:
    st.title("Search")
    filters = filters_sidebar()
    with st.sidebar:
        k = st.slider("Results", 5, 200, 40, step=5, key="s_k", help="how many photos to fetch")
        collapse = st.checkbox("Collapse near-duplicates", value=True, key="s_collapse")
        columns = st.slider("Columns", 2, 8, 5, key="s_cols")
    text = st.text_input("Search", key="q", placeholder="beach +sunset -people",
                         help="words describe what should be in the photo; +word adds a concept, -word removes it")
    if not text.strip():
        st.caption("Type what you are looking for; results are ranked by CLIP similarity.")
        return
    try:
        resp = session.search(text.strip(), k, DEFAULT_COLLAPSE if collapse else None, filters)
    except ApiError as exc:
        show_error(exc, "search")
        return
    if not resp.results:
        st.info("No photos match (check the filters in the sidebar).")
        return
    lo, hi = score_bounds(resp.results)
    # one slider per result set: its range follows the scores, so a new query starts with everything shown
    digest = hashlib.sha1(f"{text}|{k}|{collapse}|{filters}".encode()).hexdigest()[:10]
    min_score = st.slider("Minimum score", lo, hi, lo, step=0.01, format="%.2f", key=f"min_score_{digest}",
                          help="hide photos whose similarity to the query is below this")
    hits = above(resp.results, min_score)
    st.caption(f"Showing {len(hits)} of {len(resp.results)} results (score ≥ {min_score:.2f})")
    thumbnail_grid(hits, columns, key="search", on_similar=lambda pid: nav.go("photo", photo_id=pid))
