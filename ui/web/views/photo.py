"""One photo (metadata, tags, moderation decision) and the photos like it; or upload an image for similar."""

from __future__ import annotations

import streamlit as st

from .. import nav, session
from ..client import ApiError
from ..logic import md_escape
from ..widgets import filters_sidebar, show_error, thumbnail_grid


def render() -> None:
    st.title("Photo & similar")
    filters = filters_sidebar()
    with st.sidebar:
        k = st.slider("Similar photos", 5, 100, 20, step=5, key="p_k")
    by_id, by_upload = st.tabs(["By photo id", "Upload a photo"])
    with by_upload:
        upload = st.file_uploader("A photo to find similar ones", type=["jpg", "jpeg", "png", "webp", "gif", "bmp",
                                                                         "tif", "tiff", "heic", "heif"], key="p_upload")
        if upload is not None:
            st.image(upload.getvalue(), caption="query", width=256)
            try:
                resp = session.client().search_image(upload.getvalue(), upload.name, k=k, filters=filters)
            except ApiError as exc:
                show_error(exc, "image search")
            else:
                st.subheader(f"{resp.count} similar photos")
                thumbnail_grid(resp.results, key="upload", on_similar=_open)
    with by_id:
        photo_id = st.number_input("Photo id", min_value=1, step=1, value=None, key="photo_id")
        if photo_id is None:
            st.caption("Enter a photo id, or press *Similar* under a search result.")
            return
        _photo(int(photo_id), k, filters)


def _open(photo_id: int) -> None:
    nav.go("photo", photo_id=photo_id)


def _photo(photo_id: int, k: int, filters) -> None:
    client = session.client()
    try:
        photo = client.photo(photo_id)
    except ApiError as exc:
        show_error(exc, f"photo {photo_id}")
        return
    left, right = st.columns([1, 2])
    with left:
        data = session.thumbnail(photo_id, 512)
        if data is not None:
            st.image(data, caption=f"#{photo.id}", width="stretch")
        else:
            st.info("The photo's file is not readable unchanged on the server; index its folder again.")
    with right:
        meta = {"paths": photo.paths, "format": photo.format, "size": f"{photo.width}×{photo.height}",
                "bytes": photo.size, "taken": photo.taken_at, "camera": " ".join(
                    x for x in (photo.camera_make, photo.camera_model) if x) or None,
                "gps": (photo.gps_lat, photo.gps_lon) if photo.gps_lat is not None else None, "status": photo.status}
        st.json({k: (str(v) if k == "taken" and v else v) for k, v in meta.items() if v not in (None, "", [])},
                expanded=True)
        if photo.tags:
            st.markdown("**Tags** " + ", ".join(f"`{md_escape(t.label)}` {t.score:.2f}" for t in photo.tags))
        if photo.moderation is not None:
            m = photo.moderation
            st.markdown(f"**Moderation** {m.action}" + (f" · hits: {', '.join(m.hits)}" if m.hits else "")
                        + (f" · review: {', '.join(m.review)}" if m.review else ""))
    try:
        resp = client.similar(photo_id, k=k, filters=filters)
    except ApiError as exc:
        show_error(exc, "similar photos")
        return
    st.subheader(f"Photos like #{photo_id}")
    thumbnail_grid(resp.results, key="similar", on_similar=_open)
