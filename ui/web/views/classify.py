"""Zero-shot classification of an upload or a catalogued photo against your labels; tag counts."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from .. import session
from ..client import ApiError
from ..logic import parse_labels
from ..widgets import show_error

DEFAULT_LABELS = "dog, cat, person, car, beach, mountain, food, document"


def render() -> None:
    st.title("Classify & tags")
    classify_tab, tags_tab = st.tabs(["Classify", "Tags"])
    with classify_tab:
        _classify()
    with tags_tab:
        _tags()


def _classify() -> None:
    source = st.radio("Photo", ("Upload", "Photo id"), horizontal=True, key="c_source")
    upload = photo_id = None
    if source == "Upload":
        upload = st.file_uploader("Image", type=["jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "heic",
                                                 "heif"], key="c_upload")
    else:
        photo_id = st.number_input("Photo id", min_value=1, step=1, value=None, key="c_photo_id")
    labels_text = st.text_area("Labels (comma-separated or one per line)", DEFAULT_LABELS, key="c_labels")
    left, right = st.columns(2)
    templates = left.text_input("Template set", "photos", key="c_templates",
                                help="a built-in prompt template set (the server lists them if the name is unknown)")
    k = right.slider("Top labels", 1, 20, 5, key="c_k")
    labels = parse_labels(labels_text)
    if (upload is None and photo_id is None) or not labels:
        st.caption("Choose a photo and give at least one label.")
        return
    try:
        resp = session.client().classify(labels, data=upload.getvalue() if upload else None,
                                         filename=upload.name if upload else "photo.jpg",
                                         photo_id=int(photo_id) if photo_id else None, templates=templates, k=k)
    except ApiError as exc:
        show_error(exc, "classify")
        return
    img, chart = st.columns([1, 2])
    with img:
        if upload is not None:
            st.image(upload.getvalue(), width="stretch")
        elif (data := session.thumbnail(int(photo_id))) is not None:  # type: ignore[arg-type]
            st.image(data, caption=f"#{photo_id}", width="stretch")
    with chart:
        frame = pd.DataFrame({"label": [x.label for x in resp.labels], "score": [x.score for x in resp.labels]})
        st.bar_chart(frame, x="label", y="score", horizontal=True, sort="-score")
        st.dataframe(frame, hide_index=True, width="stretch")


def _tags() -> None:
    taxonomy = st.text_input("Taxonomy (empty: all)", key="t_taxonomy")
    try:
        tags = session.client().tags(taxonomy.strip() or None)
    except ApiError as exc:
        show_error(exc, "tags")
        return
    if not tags:
        st.info("No tags stored yet (tag the library with `photodex classify --all`).")
        return
    frame = pd.DataFrame([t.model_dump() for t in tags]).sort_values("photos", ascending=False)
    st.dataframe(frame, hide_index=True, width="stretch")
    st.caption("Use a tag as a search filter from the sidebar of the Search page.")
