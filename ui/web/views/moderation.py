"""Moderation: a concept's threshold slider with a dry-run preview (counts and example thumbnails of what
would change) before applying it, the calibration curve, calibration, checking one photo, decisions.

The API's dry run (``POST /moderate/rescan``) evaluates a *stored* policy version, so a threshold
other than the stored one is previewed by storing it as a new, inactive version first (a write
key); applying activates that version and runs the real rescan.
"""

from __future__ import annotations

from typing import get_args

import altair as alt
import pandas as pd
import streamlit as st

from ui.api.moderation_schemas import CalibrationEntryOut, Outcome, PRCurveOut, RescanReportOut

from .. import session
from ..client import ApiError
from ..logic import curve_at, parse_labels, threshold_range, with_threshold
from ..models import PolicyVersion
from ..widgets import id_grid, show_error, unavailable

EXAMPLES = 5
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


def render() -> None:
    st.title("Moderation")
    if unavailable("/policies"):
        return
    try:
        versions = session.client().policies(curves=True)
    except ApiError as exc:
        show_error(exc, "policies")
        return
    thresholds, calibrate, check, decisions = st.tabs(["Thresholds", "Calibrate", "Check a photo", "Decisions"])
    with check:
        _check()
    with decisions:
        _decisions()
    if not versions:
        with thresholds:
            st.info("No moderation policy is stored yet: `photodex policy set FILE --activate` "
                    "(or `POST /api/v1/policies?activate=true`).")
        return
    with thresholds:
        record, concept = _thresholds(versions)
    with calibrate:
        _calibrate(record, concept)


# ---- thresholds -------------------------------------------------------------------------------
def _choose(versions: list[PolicyVersion]) -> tuple[PolicyVersion, str]:
    names = sorted({v.name for v in versions})
    active = next((v for v in versions if v.active), None)
    left, mid, right = st.columns(3)
    name = left.selectbox("Policy", names, index=names.index(active.name) if active else 0, key="m_policy")
    mine = sorted((v for v in versions if v.name == name), key=lambda v: v.version)
    default = next((v for v in mine if v.active), mine[-1])
    number = mid.selectbox("Version", [v.version for v in mine], index=mine.index(default), key=f"m_version_{name}",
                           format_func=lambda n: f"{n} (active)" if any(v.active and v.version == n for v in mine)
                           else str(n))
    record = next(v for v in mine if v.version == number)
    concept = right.selectbox("Concept", [c.name for c in record.policy.concepts], key=f"m_concept_{name}_{number}")
    return record, concept


def _thresholds(versions: list[PolicyVersion]) -> tuple[PolicyVersion, str]:
    record, concept = _choose(versions)
    c = record.policy.concept(concept)
    entry = record.calibration.get(concept)
    ends = (entry.curve.thresholds[0], entry.curve.thresholds[-1]) if isinstance(entry, CalibrationEntryOut) \
        and entry.curve.thresholds else ()
    lo, hi = threshold_range(c.threshold, (c.review_threshold, *ends))
    threshold = st.slider(f"Threshold for “{concept}” (action: {c.action})", lo, hi, float(c.threshold), step=0.005,
                          format="%.3f", key=f"m_thr_{record.name}_{record.version}_{concept}",
                          help="photos whose score for the concept reaches this are hits; "
                               f"stored: {c.threshold:.3f}" + (f", review from {c.review_threshold:.3f}"
                                                              if c.review_threshold is not None else ""))
    _curve(record, concept, threshold)
    moved = abs(threshold - c.threshold) > 1e-9
    try:
        base = _dry_run(record.name, record.version)
        report = _dry_run(record.name, record.version, concept, threshold) if moved else base
    except ApiError as exc:
        show_error(exc, "dry run")
        return record, concept
    _report(report, base, concept, moved)
    _apply(record, concept, threshold if moved else None, report)
    return record, concept


@st.cache_data(show_spinner="Dry run…", ttl=30, max_entries=64)
def _dry_run_cached(url: str, key: str | None, policy: str, version: int, epoch: int,
                    concept: str | None, threshold: float | None) -> RescanReportOut:
    moved = {concept: threshold} if concept is not None and threshold is not None else None
    return session.client_for(url, key).rescan(policy, version, dry_run=True, thresholds=moved)


def _dry_run(policy: str, version: int, concept: str | None = None, threshold: float | None = None) -> RescanReportOut:
    """What applying the version would change; with ``concept``/``threshold`` moved, still writing nothing."""
    return _dry_run_cached(session.api_url(), session.api_key(), policy, version, st.session_state.get("m_epoch", 0),
                           concept, None if threshold is None else round(threshold, 6))


def _report(report: RescanReportOut, base: RescanReportOut, concept: str, moved: bool) -> None:
    counts, now = report.by_concept.get(concept), base.by_concept.get(concept)
    cols = st.columns(4)
    cols[0].metric("Photos", report.photos)
    if counts is not None and now is not None:
        cols[1].metric(f"{concept}: hits", counts.hit, delta=counts.hit - now.hit if moved else None,
                       delta_color="off")
        cols[2].metric(f"{concept}: review", counts.review, delta=counts.review - now.review if moved else None,
                       delta_color="off")
    cols[3].metric("Decisions that would change", report.changed)
    st.caption("Outcomes after applying: " + ", ".join(f"{a} {report.by_action.get(a, 0)}" for a in OUTCOMES
                                                        if report.by_action.get(a)))
    if not report.changes:
        st.success("Applying this would change no stored decision.")
        return
    st.dataframe(pd.DataFrame([{"change": k, "photos": v} for k, v in report.changes.items()]), hide_index=True)
    for change, ids in report.examples.items():
        if "->" in change:
            st.markdown(f"**{change}** — examples")
            id_grid(ids[:EXAMPLES], columns=EXAMPLES)


def _apply(record: PolicyVersion, concept: str, threshold: float | None, report: RescanReportOut) -> None:
    """Store the moved threshold as a new version (only now), activate it and re-decide the library."""
    what = f"{record.name} with {concept} at {threshold:.3f}" if threshold is not None else \
        f"{record.name} v{record.version}"
    label = (f"Apply: activate {what} and re-decide {report.changed} photos" if report.changed
             else f"Activate {what}")
    if not st.button(label, type="primary", key=f"m_apply_{record.name}_{record.version}_{concept}"):
        return
    client = session.client()
    try:
        version = record.version
        if threshold is not None:
            body = with_threshold(record.policy.model_dump(), concept, threshold)
            version = client.create_policy(body, activate=False).version
        client.activate_policy(record.name, version)
        done = client.rescan(record.name, version, dry_run=False)
    except ApiError as exc:
        show_error(exc, "apply")
        return
    st.session_state["m_epoch"] = st.session_state.get("m_epoch", 0) + 1
    st.success(f"{record.name} v{version} is active; {done.changed} decisions changed (run {done.run_id}).")


def _curve(record: PolicyVersion, concept: str, threshold: float) -> None:
    entry = record.calibration.get(concept)
    if not isinstance(entry, CalibrationEntryOut):  # none, or a summary without its curve
        st.caption("No calibration curve stored for this concept: calibrate it in the Calibrate tab.")
        return
    p = curve_at(entry.curve.thresholds, entry.curve.precision, threshold)
    r = curve_at(entry.curve.thresholds, entry.curve.recall, threshold)
    st.caption(f"Calibrated on version {entry.calibrated_on_version} ({entry.curve.positives} positive, "
               f"{entry.curve.negatives} negative examples): at {threshold:.3f} precision "
               f"{'–' if p is None else f'{p:.2f}'}, recall {'–' if r is None else f'{r:.2f}'}")
    curve_chart(entry.curve, threshold, entry.point.threshold)


def curve_chart(curve: PRCurveOut, threshold: float, chosen: float | None = None) -> None:
    """Precision and recall against the threshold, with the slider's threshold (and the calibrated one) marked."""
    frame = pd.DataFrame({"threshold": curve.thresholds * 2, "value": curve.precision + curve.recall,
                          "metric": ["precision"] * len(curve.thresholds) + ["recall"] * len(curve.thresholds)})
    # a threshold between two stored points selects what the higher one selects: step before each point
    lines = alt.Chart(frame).mark_line(interpolate="step-before").encode(
        x=alt.X("threshold:Q", scale=alt.Scale(zero=False)), y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1])),
        color="metric:N")
    marks = pd.DataFrame({"threshold": [threshold] + ([chosen] if chosen is not None else []),
                          "mark": ["slider"] + (["calibrated"] if chosen is not None else [])})
    rules = alt.Chart(marks).mark_rule(strokeDash=[4, 3]).encode(x="threshold:Q", color=alt.value("#888"),
                                                                  tooltip=["mark", "threshold"])
    st.altair_chart(lines + rules, width="stretch")


# ---- calibrate --------------------------------------------------------------------------------
def _ids(text: str) -> list[int]:
    return [int(x) for x in parse_labels(text) if x.isdigit()]


def _calibrate(record: PolicyVersion, concept: str) -> None:
    st.caption(f"Label catalogued photos for **{concept}** of {record.name} v{record.version}; the threshold that "
               "reaches your target is chosen from their precision-recall curve.")
    with st.form("m_calibrate"):
        pos = st.text_area("Photo ids that show it (comma-separated)", key="m_pos")
        neg = st.text_area("Photo ids that do not", key="m_neg")
        kind = st.radio("Target", ("precision", "recall"), horizontal=True, key="m_target_kind")
        value = st.slider("Target value", 0.5, 1.0, 0.9, step=0.01, key="m_target")
        write = st.checkbox("Store the threshold as a new policy version (write key)", key="m_write")
        submitted = st.form_submit_button("Calibrate")
    if not submitted:
        return
    try:
        result = session.client().calibrate(
            concept, _ids(pos), _ids(neg), policy=record.name, version=record.version, write=write,
            target_precision=value if kind == "precision" else None, target_recall=value if kind == "recall" else None)
    except ApiError as exc:
        show_error(exc, "calibrate")
        return
    pt = result.point
    st.success(f"Threshold {pt.threshold:.3f}: precision {pt.precision:.2f}, recall {pt.recall:.2f}, F1 {pt.f1:.2f} "
               f"(AP {result.curve.average_precision:.2f})"
               + (f"; stored as version {result.written_version}" if result.written_version else ""))
    curve_chart(result.curve, pt.threshold, pt.threshold)
    if result.written_version:
        st.session_state["m_epoch"] = st.session_state.get("m_epoch", 0) + 1


# ---- check a photo / decisions ------------------------------------------------------------------
def _check() -> None:
    source = st.radio("Photo", ("Photo id", "Upload"), horizontal=True, key="m_check_source")
    upload = photo_id = None
    if source == "Upload":
        upload = st.file_uploader("Image", key="m_check_upload")
    else:
        photo_id = st.number_input("Photo id", min_value=1, step=1, value=None, key="m_check_id")
    if upload is None and photo_id is None:
        return
    try:
        decision = session.client().moderate(data=upload.getvalue() if upload else None,
                                             filename=upload.name if upload else "photo.jpg",
                                             photo_id=int(photo_id) if photo_id else None)
    except ApiError as exc:
        show_error(exc, "moderate")
        return
    st.markdown(f"**{decision.action}** under {decision.policy} v{decision.version}"
                + (" (special-care adjustment applied)" if decision.adjusted else ""))
    st.dataframe(pd.DataFrame([c.model_dump() for c in decision.concepts]), hide_index=True, width="stretch")


def _decisions() -> None:
    action = st.selectbox("Current decision", OUTCOMES, index=3, key="m_dec_action")
    try:
        page = session.client().decisions(action=action, limit=50)
    except ApiError as exc:
        show_error(exc, "decisions")
        return
    if not page.results:
        st.caption(f"No photo is currently decided {action}.")
        return
    id_grid([d.photo_id for d in page.results],
            captions=[f"#{d.photo_id} · {', '.join(d.hits) or d.action} · {d.policy} v{d.version}"
                      for d in page.results])
