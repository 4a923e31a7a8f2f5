"""The API's response models have exactly the fields of the domain objects they are validated from.

The models stay plain pydantic (the web client imports them without loading numpy, the catalog or the moderation
code), so they are declared apart from the dataclasses; this test keeps the two in step. The routes build them
with ``Model.model_validate(obj.to_dict())`` (or ``Model(**obj.to_dict())``), which silently drops a key the model
lacks: here every key of a real domain object's ``to_dict()`` must be a field of the model and every field of the
model a key, down through nested models.
"""

from __future__ import annotations

import types
import typing
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from retrieval.moderation.calibrate import CalibrationResult, OperatingPoint, pr_curve
from retrieval.moderation.decide import ConceptResult, Decision
from retrieval.moderation.history import DecisionRecord
from retrieval.moderation.policy import STARTER_POLICY, load_policy
from retrieval.moderation.rescan import RescanReport
from retrieval.moderation.store import PolicyRecord
from retrieval.search.searcher import HybridHit, SearchHit
from ui.api.moderation_schemas import (
    CalibrationEntryOut,
    CalibrationOut,
    CalibrationSummaryOut,
    ConceptScoreOut,
    ModerationDecisionOut,
    OperatingPointOut,
    PolicyOut,
    PolicyVersionOut,
    PRCurveOut,
    RescanReportOut,
    StoredDecisionOut,
)
from ui.api.schemas import SearchHitOut

# keys of CalibrationResult.to_dict() the API leaves out on purpose: the API calibrates on photo ids (no example
# files to skip) and draws no plot file
CALIBRATION_CLI_ONLY = {"skipped", "plot"}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def shape_mismatches(model: type[BaseModel], data: dict[str, Any], where: str = "") -> list[str]:
    """Where ``data`` (a domain object's JSON form) and ``model`` differ in field names, recursively."""
    where = where or model.__name__
    fields = set(model.model_fields)
    out = [f"{where}: domain has {sorted(set(data) - fields)}, model has {sorted(fields - set(data))}"] \
        if set(data) != fields else []
    for name, info in model.model_fields.items():
        value, ann = data.get(name), info.annotation
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin in (typing.Union, types.UnionType):  # X | None: look at X
            inner = [a for a in args if a is not type(None)]
            ann = inner[0] if len(inner) == 1 else ann
            origin, args = typing.get_origin(ann), typing.get_args(ann)
        if (sub := _model_of(ann)) and isinstance(value, dict):
            out += shape_mismatches(sub, value, f"{where}.{name}")
        elif origin is list and args and (sub := _model_of(args[0])) and isinstance(value, list):
            for i, item in enumerate(value):
                out += shape_mismatches(sub, item, f"{where}.{name}[{i}]")
        elif origin is dict and len(args) == 2 and (sub := _model_of(args[1])) and isinstance(value, dict):
            for key, item in value.items():
                out += shape_mismatches(sub, item, f"{where}.{name}[{key!r}]")
    return out


def _check(model: type[BaseModel], data: dict[str, Any]) -> None:
    assert shape_mismatches(model, data) == []
    model.model_validate(data)  # and the values fit the declared types


def _hit(**extra: Any) -> dict[str, Any]:
    base = dict(id=3, score=0.5, paths=["/lib/a.jpg"], taken_at="2024-05-01T10:00:00", camera_make="Acme",
                camera_model="X1", width=640, height=480, format="JPEG", gps=(1.5, 2.5), tags=["beach"],
                duplicates=[4])
    return {**base, **extra}


def _calibration() -> CalibrationResult:
    curve = pr_curve([0.9, 0.8, 0.3, 0.2], [True, True, False, False], min_per_class=1)
    point = OperatingPoint(0.5, 1.0, 1.0, 1.0, 2, 0, 0, 2, "precision", 0.9)
    return CalibrationResult("nsfw", "starter", 1, curve, point, skipped=["gone.jpg"], written_version=2,
                             plot="/tmp/plot.png")


def test_search_hits_have_the_api_models_fields():
    _check(SearchHitOut, HybridHit(**_hit(), clip_score=0.4, caption_score=0.5, caption="a beach").to_dict())
    plain = SearchHit(**_hit()).to_dict()
    hybrid_only = {"clip_score", "caption_score", "caption"}
    assert set(SearchHitOut.model_fields) - set(plain) == hybrid_only  # the rest are optional, hybrid only
    SearchHitOut(**plain)


def test_moderation_decisions_have_the_api_models_fields():
    result = ConceptResult("nsfw", 0.31, 0.3, 0.25, 0.01, "hit", "quarantine")
    _check(ConceptScoreOut, result.to_dict())
    _check(ModerationDecisionOut, Decision("upload", "quarantine", [result], "starter", 1, True, 7).to_dict())
    when = datetime(2024, 5, 1, tzinfo=timezone.utc)
    older = DecisionRecord(1, 7, "ab" * 32, "allow", [], [], False, {"nsfw": 0.1}, "starter", 1, None, when)
    record = DecisionRecord(2, 7, "ab" * 32, "quarantine", ["nsfw"], [], True, {"nsfw": 0.31}, "starter", 2, 5,
                            when, current=True, history=[older])
    _check(StoredDecisionOut, record.to_dict())


def test_rescan_and_calibration_have_the_api_models_fields():
    report = RescanReport("starter", 2, True, photos=10, changed=1, by_action={"allow": 9, "quarantine": 1},
                          by_concept={"nsfw": {"hit": 1, "review": 0}}, changes={"allow -> quarantine": 1},
                          changed_by_concept={"nsfw": 1}, examples={"allow -> quarantine": [7]}, rescored=10,
                          run_id=5, seconds=0.1)
    _check(RescanReportOut, report.to_dict())
    result = _calibration()
    _check(OperatingPointOut, result.point.to_dict())
    _check(PRCurveOut, result.curve.to_dict())
    full = result.to_dict()
    assert CALIBRATION_CLI_ONLY <= set(full)
    _check(CalibrationOut, {k: v for k, v in full.items() if k not in CALIBRATION_CLI_ONLY})
    entry = result.entry()
    _check(CalibrationEntryOut, entry)
    _check(CalibrationSummaryOut, {k: v for k, v in entry.items() if k != "curve"})


@pytest.mark.parametrize("curves", [False, True])
def test_policy_versions_have_the_api_models_fields(curves):
    policy = load_policy(STARTER_POLICY)
    _check(PolicyOut, policy.to_dict())
    record = PolicyRecord(1, policy.name, 2, True, policy, "spec", datetime(2024, 5, 1, tzinfo=timezone.utc),
                          np.zeros((1, 4), np.float32), calibration={policy.concepts[0].name: _calibration().entry()},
                          note="calibrated")
    data = record.to_dict(curves=curves)
    _check(PolicyVersionOut, data)
    entry_model = CalibrationEntryOut if curves else CalibrationSummaryOut
    for entry in data["calibration"].values():  # a union in the model: checked against the one it should be
        _check(entry_model, entry)


def test_the_shape_check_sees_a_missing_and_an_extra_field():
    class Inner(BaseModel):
        a: int

    class Outer(BaseModel):
        x: int
        inner: list[Inner]
        by_name: dict[str, Inner] | None = None

    assert shape_mismatches(Outer, {"x": 1, "inner": [{"a": 1}], "by_name": {"k": {"a": 2}}}) == []
    assert shape_mismatches(Outer, {"x": 1, "y": 2, "inner": [{"a": 1, "b": 2}], "by_name": {"k": {}}}) == [
        "Outer: domain has ['y'], model has []",
        "Outer.inner[0]: domain has ['b'], model has []",
        "Outer.by_name['k']: domain has [], model has ['a']",
    ]
