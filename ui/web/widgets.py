"""What several pages draw: the connection sidebar, the filter sidebar, errors, the thumbnail grid."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import streamlit as st

from ui.api.schemas import SearchFiltersIn, SearchHitOut

from . import session
from .client import ApiError, NotAvailable
from .logic import API_KEY_ENV, FILE_TYPES, MODERATION_VALUES, build_filters, caption, md_escape


def connection_sidebar() -> None:
    """API URL (fixed at start), the API-key field, the server's readiness and whether it wants a key."""
    with st.sidebar:
        st.text_input("API key", type="password", key=session.KEY_STATE,
                      help=f"X-API-Key sent with every request (`photodex apikey create NAME --scope write`); "
                           f"empty: the UI server's ${API_KEY_ENV}, if set. Needed for indexing and applying "
                           "moderation changes, and for reading when the server listens beyond loopback.")
        if session.api_key() and not session.typed_key():
            st.caption(f"Using the API key from ${API_KEY_ENV}.")
        try:
            ready = session.ready()
            st.caption(f"API {session.api_url()} · {ready.vectors} photos · encoder `{ready.encoder}`")
        except ApiError as exc:
            st.caption(f"API {session.api_url()}")
            show_error(exc)
            return
        if ready.reads_need_key and not session.api_key():
            st.warning(f"This server needs an API key for reads (it listens beyond loopback, or was told to). "
                       f"Enter one above (`photodex apikey create NAME --scope read`) or start the UI with "
                       f"${API_KEY_ENV} set.")


def filters_sidebar() -> SearchFiltersIn | None:
    """Metadata filters in the sidebar; ``None`` when none is set."""
    with st.sidebar.expander("Filters", expanded=False):
        after = st.date_input("Taken after", value=None, key="f_after")
        before = st.date_input("Taken before", value=None, key="f_before")
        path = st.text_input("Path (glob)", key="f_path", placeholder="*/2024/trip/*")
        make = st.text_input("Camera make", key="f_make")
        model = st.text_input("Camera model", key="f_model")
        gps = st.selectbox("Has GPS", ("any", "yes", "no"), key="f_gps")
        file_type = st.selectbox("File type", FILE_TYPES, key="f_type", format_func=lambda v: v or "any")
        tags = st.multiselect("Tags (all of)", _tag_labels(), key="f_tags")
        moderation = st.selectbox("Moderation", MODERATION_VALUES, key="f_moderation",
                                  format_func=lambda v: v or "default (hide quarantined and blocked)")
    return build_filters(taken_after=after, taken_before=before, path=path, camera_make=make,  # type: ignore[arg-type]
                         camera_model=model, has_gps=None if gps == "any" else gps == "yes",
                         file_type=file_type, tags=tags, moderation=moderation)


def _tag_labels() -> list[str]:
    try:
        return session.tag_labels()
    except ApiError:
        return []


def show_error(exc: ApiError, what: str = "") -> None:
    """One readable line for a failed call (with a hint for missing keys and unavailable routes)."""
    prefix = f"{what}: " if what else ""
    if isinstance(exc, NotAvailable):
        st.info(f"{prefix}not available on this server ({exc.message}).")
    elif exc.status == 0:
        st.error(f"{prefix}{exc.message}")
    elif exc.status in (401, 403):
        st.warning(f"{prefix}{exc.message}. Enter an API key with enough scope in the sidebar.")
    elif exc.status == 429:
        st.warning(f"{prefix}{exc.message}. Check the API key in the sidebar.")
    else:
        st.error(f"{prefix}{exc.message} ({exc.code})")


def unavailable(template: str, method: str = "GET") -> bool:
    """True (and a message shown) when the server lacks ``method template``."""
    if session.client().supports(template, method):
        return False
    st.info(f"`{method} /api/v1{template}` is not available on this server (it may be an older photodex).")
    return True


def thumbnail_grid(hits: Sequence[SearchHitOut], columns: int = 5, *, key: str = "grid",
                   on_similar: Callable[[int], None] | None = None, captions: Sequence[str] | None = None) -> None:
    """Thumbnails with id and score under each; an optional "Similar" button per photo."""
    cols = st.columns(columns)
    for i, hit in enumerate(hits):
        with cols[i % columns]:
            photo_caption(hit.id, captions[i] if captions else caption(hit), paths=hit.paths)
            if on_similar is not None and st.button("Similar", key=f"{key}_sim_{hit.id}_{i}",
                                                   help="photos like this one"):
                on_similar(hit.id)


def photo_caption(photo_id: int, text: str, paths: Sequence[str] = ()) -> None:
    """One photo's thumbnail (or a placeholder when its file is unavailable) with a caption."""
    data = session.thumbnail(photo_id)
    if data is None:
        st.markdown(f"*(no thumbnail)*  \n{md_escape(text)}")
    else:
        st.image(data, caption=text, width="stretch")
    if paths:
        st.caption(md_escape(os.path.basename(paths[0])))


def id_grid(photo_ids: Sequence[int], columns: int = 5, captions: Sequence[str] | None = None) -> None:
    """Thumbnails of photo ids (citations, moderation examples)."""
    cols = st.columns(columns)
    for i, pid in enumerate(photo_ids):
        with cols[i % columns]:
            photo_caption(pid, captions[i] if captions else f"#{pid}")
