"""Ask: a question answered by the VLM from the retrieved photos, streamed as it is generated, with the
thumbnails of the photos it cites (checked by the server against those it was shown)."""

from __future__ import annotations

import streamlit as st

from ui.api.ask_schemas import AskResponse

from .. import session
from ..client import ApiError
from ..widgets import filters_sidebar, id_grid, show_error, unavailable

ANSWER = "ask_answer"


def render() -> None:
    st.title("Ask")
    if unavailable("/ask", "POST"):
        return
    filters = filters_sidebar()
    with st.sidebar:
        k = st.slider("Photos to look at", 1, 20, 5, key="a_k")
    with st.form("ask"):
        question = st.text_input("Question", key="a_question",
                                 placeholder="is there a skull in any of the garden photos?")
        photo_id = st.number_input("About one photo only (id, optional)", min_value=1, step=1, value=None,
                                   key="a_photo_id")
        submitted = st.form_submit_button("Ask", type="primary")
    if submitted and question.strip():
        st.session_state[ANSWER] = _stream(question.strip(), k, filters, int(photo_id) if photo_id else None)
    elif isinstance(st.session_state.get(ANSWER), AskResponse):
        st.markdown(st.session_state[ANSWER].answer)
    result = st.session_state.get(ANSWER)
    if isinstance(result, AskResponse):
        _details(result)


def _stream(question: str, k: int, filters, photo_id: int | None) -> AskResponse | None:
    """Write the answer as its chunks arrive; the final result (citations, ...) or None on failure."""
    final: list[AskResponse] = []

    def chunks():
        for item in session.client().ask_stream(question, k=None if photo_id else k, filters=None if photo_id
                                                else filters, photo_id=photo_id):
            if isinstance(item, AskResponse):
                final.append(item)
            else:
                yield item

    try:
        with st.spinner("Looking at the photos…"):
            st.write_stream(chunks())
    except ApiError as exc:
        show_error(exc, "ask")
        return None
    return final[0] if final else None


def _details(result: AskResponse) -> None:
    if result.nothing_relevant:
        st.info("No retrieved photo was relevant enough; the model was not asked.")
    if result.citations:
        st.subheader("Cited photos")
        id_grid([c.id for c in result.citations])
    if result.invented:
        st.warning("The model cited photos it was not shown (left out): " + ", ".join(f"#{i}" for i in result.invented))
    with st.expander(f"Retrieved {len(result.retrieved)} · shown {len(result.shown)} · dropped {len(result.dropped)}"
                     f" · {result.strategy} · {result.model}"):
        shown = set(result.shown)
        id_grid([r.id for r in result.retrieved],
                captions=[f"#{r.id} · {r.score:.3f}" + ("" if r.id in shown else " · not shown")
                          for r in result.retrieved])
        for d in result.dropped:
            st.caption(f"#{d.id} dropped: {d.reason}")
        for p in result.per_photo:
            st.caption(f"#{p.id}: {p.answer} ({'supports' if p.supports else 'does not support'})")
