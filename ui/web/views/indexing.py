"""Start index jobs (a write key) and follow their progress (``GET /index/jobs/{id}``, polled every second)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui.api.schemas import IndexJobOut

from .. import session
from ..client import ApiError
from ..logic import parse_paths, progress_fraction
from ..widgets import show_error

POLL_SECONDS = 1.0
JOB_STATE = "job_id"


def render() -> None:
    st.title("Indexing")
    with st.form("start_job"):
        paths = st.text_area("Folders to index (one per line, under the server's library roots)", key="i_paths")
        retry = st.checkbox("Retry files that failed before", key="i_retry")
        if st.form_submit_button("Start indexing", type="primary") and parse_paths(paths):
            try:
                job = session.client().start_index_job(parse_paths(paths), retry_errors=retry)
                st.session_state[JOB_STATE] = job.id
            except ApiError as exc:
                show_error(exc, "start indexing")
    try:
        jobs = session.client().index_jobs()
    except ApiError as exc:
        show_error(exc, "index jobs")
        return
    if not jobs:
        st.caption("No index jobs on this server process yet.")
        return
    ids = [j.id for j in jobs]
    current = st.session_state.get(JOB_STATE)
    job_id = st.selectbox("Job", ids, index=ids.index(current) if current in ids else 0,
                          format_func=lambda i: _label(next(j for j in jobs if j.id == i)))
    st.session_state[JOB_STATE] = job_id
    running = next(j for j in jobs if j.id == job_id).status == "running"
    st.fragment(run_every=POLL_SECONDS if running else None)(_progress)(job_id, running)
    st.dataframe(pd.DataFrame([{"id": j.id[:8], "status": j.status, "phase": j.phase, "done": j.done,
                                "total": j.total, "paths": ", ".join(j.paths), "started": j.created_at}
                               for j in jobs]), hide_index=True, width="stretch")


def _label(job: IndexJobOut) -> str:
    return f"{job.id[:8]} · {job.status} · {', '.join(job.paths)[:60]}"


def _progress(job_id: str, was_running: bool) -> None:
    """One job's progress; re-run every second while it runs, then the whole page once when it ends."""
    try:
        job = session.client().index_job(job_id)
    except ApiError as exc:
        show_error(exc, "job")
        return
    counts = f"{job.done} / {job.total}" if job.total else ("nothing new to index" if job.status != "running" else "…")
    text = f"{job.status} · {job.phase or 'starting'} · {counts}"
    st.progress(progress_fraction(job.done, job.total) if job.status == "running" else 1.0, text=text)
    if job.status == "running":
        if st.button("Cancel", key=f"cancel_{job.id}"):
            try:
                session.client().cancel_index_job(job.id)
            except ApiError as exc:
                show_error(exc, "cancel")
        return
    if job.error:
        st.error(job.error)
    if job.summary:
        with st.expander("Summary"):
            st.json(job.summary)
    if was_running:  # it finished while we polled: refresh the list and stop polling
        st.rerun(scope="app")
