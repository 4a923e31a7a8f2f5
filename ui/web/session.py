"""The API connection of a browser session: its URL, the API key (sidebar, else ``$PHOTODEX_API_KEY``), a cached client.

Clients are shared per (URL, key) across sessions (``st.cache_resource``); thumbnails and search
answers are cached briefly (``st.cache_data``) so moving a slider does not ask the server again.
"""

from __future__ import annotations

import sys

import streamlit as st

from ui.api.schemas import ReadyOut, SearchFiltersIn, SearchResponse

from .client import PhotodexClient
from .logic import api_key as resolve_api_key
from .logic import api_url as resolve_api_url

THUMB_SIZE = 256
KEY_STATE = "api_key"


def api_url() -> str:
    """The API base URL this app was started with (``--api`` or ``PHOTODEX_API_URL``); never from the browser."""
    return resolve_api_url(sys.argv[1:])


def api_key() -> str | None:
    """The key typed into the sidebar, else the UI server's ``$PHOTODEX_API_KEY``."""
    return resolve_api_key(st.session_state.get(KEY_STATE))


def typed_key() -> bool:
    """Whether the key in use was typed into the sidebar (not taken from the environment)."""
    return bool((st.session_state.get(KEY_STATE) or "").strip())


@st.cache_resource(show_spinner=False, max_entries=64)
def client_for(url: str, key: str | None) -> PhotodexClient:
    return PhotodexClient.connect(url, key)


def client() -> PhotodexClient:
    """The client of this session's API URL and key."""
    return client_for(api_url(), api_key())


@st.cache_data(show_spinner=False, ttl=600, max_entries=4096)
def _thumbnail(url: str, key: str | None, photo_id: int, size: int) -> bytes | None:
    from .client import ApiError

    try:
        return client_for(url, key).thumbnail(photo_id, size)
    except ApiError:
        return None  # file gone or changed since indexing: shown as a placeholder


def thumbnail(photo_id: int, size: int = THUMB_SIZE) -> bytes | None:
    """JPEG bytes of a photo's thumbnail, or None when the server cannot read its file."""
    return _thumbnail(api_url(), api_key(), int(photo_id), size)


@st.cache_data(show_spinner="Searching…", ttl=120, max_entries=256)
def _search(url: str, key: str | None, text: str, k: int, collapse: float | None, filters_json: str) -> SearchResponse:
    filters = SearchFiltersIn.model_validate_json(filters_json) if filters_json else None
    return client_for(url, key).search(text, k=k, collapse=collapse, filters=filters)


def search(text: str, k: int, collapse: float | None, filters: SearchFiltersIn | None) -> SearchResponse:
    """``POST /search`` without a minimum score (the page filters by score itself), cached briefly."""
    return _search(api_url(), api_key(), text, k, collapse, filters.model_dump_json() if filters else "")


@st.cache_data(show_spinner=False, ttl=15, max_entries=16)
def _ready(url: str, key: str | None) -> ReadyOut:
    return client_for(url, key).ready()


def ready() -> ReadyOut:
    """``GET /readyz`` (collection open, encoder warm, vector count), cached for a few seconds."""
    return _ready(api_url(), api_key())


@st.cache_data(show_spinner=False, ttl=60, max_entries=16)
def _tag_labels(url: str, key: str | None) -> list[str]:
    return sorted({t.label for t in client_for(url, key).tags()})


def tag_labels() -> list[str]:
    """The stored tags' labels (for the tag filter), cached for a minute."""
    return _tag_labels(api_url(), api_key())
