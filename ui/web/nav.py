"""The app's pages (``st.Page`` per view module) and moving between them."""

from __future__ import annotations

import streamlit as st

# name → (title, icon); the view module of the same name in ui.web.views has render()
PAGES: dict[str, tuple[str, str]] = {
    "search": ("Search", ":material/search:"),
    "photo": ("Photo & similar", ":material/image_search:"),
    "classify": ("Classify & tags", ":material/label:"),
    "moderation": ("Moderation", ":material/shield:"),
    "ask": ("Ask", ":material/chat:"),
    "indexing": ("Indexing", ":material/sync:"),
}


def page(name: str) -> st.Page:  # type: ignore[name-defined]
    from importlib import import_module

    title, icon = PAGES[name]
    render = import_module(f"ui.web.views.{name}").render
    return st.Page(render, title=title, icon=icon, url_path=name, default=name == "search")


def all_pages() -> list[st.Page]:  # type: ignore[name-defined]
    return [page(name) for name in PAGES]


PENDING = "_nav_pending"


def go(name: str, **state: object) -> None:
    """Switch to page ``name`` with session-state values (e.g. a widget's value) set before it draws."""
    st.session_state[PENDING] = state
    st.switch_page(page(name))


def apply_pending() -> None:
    """Set the values :func:`go` left (call first thing in a run, before any widget exists)."""
    for key, value in st.session_state.pop(PENDING, {}).items():
        st.session_state[key] = value
