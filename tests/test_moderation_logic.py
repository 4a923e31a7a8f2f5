"""Moderation's pure logic on plain arrays: policy validation, scores, decisions, special care, calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.core.errors import InputError
from retrieval.moderation.calibrate import CalibrationError, choose_threshold, pr_curve
from retrieval.moderation.decide import (
    LEVEL_HIT,
    LEVEL_NONE,
    LEVEL_REVIEW,
    CompiledPolicy,
    concept_scores_from_similarities,
    decide_arrays,
    explain_row,
)
from retrieval.moderation.history import concept_masks
from retrieval.outcomes import OUTCOMES
from retrieval.moderation.policy import STARTER_POLICY, load_policy, parse_policy

FLAG, QUARANTINE, BLOCK = (OUTCOMES.index(a) for a in ("flag", "quarantine", "block"))


def _concept(**kw):
    return {"name": "skull", "prompts": ["a photo of a skull"], "threshold": 0.24, **kw}


def _policy(*concepts, **kw):
    return {"name": "default", "concepts": list(concepts) or [_concept()], **kw}


# ---- policy validation --------------------------------------------------------------------------

def test_issue_example_policy_is_valid():
    p = parse_policy(_policy(_concept(templates="photos", contrast=["a photo of a circle"], review_threshold=0.20,
                                      action="quarantine", special_care=False), special_care_adjustment=0.01))
    c = p.concepts[0]
    assert (c.threshold, c.review_threshold, c.action) == (0.24, 0.20, "quarantine")
    assert len(c.template_list()) > 1 and all("{}" in t for t in c.template_list())
    assert parse_policy(_policy()).concepts[0].template_list() == ("{}",)  # no templates: prompts verbatim


@pytest.mark.parametrize("concept, needle", [
    (_concept(threshold=1.5), "threshold"),
    (_concept(threshold=-1.01), "threshold"),
    (_concept(review_threshold=0.3), "review_threshold 0.3 is above threshold 0.24"),
    (_concept(prompts=[]), "prompts"),
    (_concept(prompts=["  "]), "empty"),
    (_concept(prompts=["skull", "Skull"]), "duplicate"),
    (_concept(action="delete"), "unknown action 'delete'"),
    (_concept(templates="no-such-set"), "unknown template set"),
    (_concept(contrast=["a photo of a skull"]), "both positive and contrast"),
    (_concept(name="a,b"), "concept name"),
    (_concept(colour="red"), "unknown field"),
])
def test_bad_concepts_are_one_clear_input_error(concept, needle):
    with pytest.raises(InputError, match="invalid policy") as err:
        parse_policy(_policy(concept))
    assert needle in str(err.value)


def test_bad_policies_are_one_clear_input_error(tmp_path):
    with pytest.raises(InputError, match="given twice"):
        parse_policy(_policy(_concept(), _concept(name="Skull")))
    with pytest.raises(InputError, match="concepts"):
        parse_policy({"name": "x", "concepts": []})
    with pytest.raises(InputError, match="special_care_adjustment"):
        parse_policy(_policy(special_care_adjustment=-0.1))
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_policy(bad)
    with pytest.raises(InputError, match="cannot read"):
        load_policy(tmp_path / "missing.json")
    with pytest.raises(InputError, match="unknown concept 'gore'"):
        parse_policy(_policy()).concept("gore")


def test_yaml_policy_loads_like_json(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "p.yaml"
    path.write_text("name: default\nconcepts:\n  - name: skull\n    prompts: [a photo of a skull]\n"
                    "    threshold: 0.24\n    review_threshold: 0.2\n    action: block\n")
    assert load_policy(path) == parse_policy(_policy(_concept(review_threshold=0.2, action="block")))


def test_starter_policy_loads_and_says_its_thresholds_are_starting_points():
    policy = load_policy(STARTER_POLICY)
    names = {c.name for c in policy.concepts}
    assert {"sexual content", "nudity", "gore", "weapons", "drugs", "self-harm", "hate symbols"} <= names
    assert "STARTING POINTS" in policy.description and "not guarantees" in policy.description
    assert policy.encoder is None  # not tied to an encoder: must be calibrated per collection
    assert json.loads(STARTER_POLICY.read_text())["name"] == "starter"


# ---- scores ---------------------------------------------------------------------------------------

def test_concept_score_is_max_over_ensembles_minus_best_contrast():
    sims = np.array([[0.1, 0.3, 0.2, 0.05, 0.25],
                     [0.4, 0.0, 0.1, 0.35, 0.0]], np.float32)
    # concept A: 2 positive ensembles, no contrast; concept B: 1 positive, 2 contrasts
    scores = concept_scores_from_similarities(sims, [(2, 0), (1, 2)])
    np.testing.assert_allclose(scores, [[0.3, 0.2 - 0.25], [0.4, 0.1 - 0.35]], rtol=1e-6)
    with pytest.raises(ValueError):
        concept_scores_from_similarities(sims, [(2, 0)])


def test_compiled_policy_scores_unit_vectors_against_its_prompt_vectors():
    policy = parse_policy(_policy(_concept(prompts=["x", "y"], contrast=["z"], threshold=0.0)))
    w = np.eye(3, dtype=np.float32)  # prompt vectors x, y, z = the axes
    compiled = CompiledPolicy(policy, w)
    v = np.array([[0.8, 0.6, 0.0], [0.0, 0.6, 0.8]], np.float32)
    np.testing.assert_allclose(compiled.scores(v)[:, 0], [0.8 - 0.0, 0.6 - 0.8], atol=1e-6)
    assert compiled.decide(v).outcome.tolist() == [FLAG, 0]
    with pytest.raises(InputError, match="needs 3 prompt vectors"):
        CompiledPolicy(policy, np.eye(2, 3, dtype=np.float32))


# ---- decisions ------------------------------------------------------------------------------------

def test_threshold_review_band_and_strongest_action():
    scores = np.array([[0.30, 0.10, 0.10],   # A hit (flag)
                       [0.21, 0.10, 0.10],   # A in review band
                       [0.19, 0.10, 0.10],   # nothing
                       [0.30, 0.50, 0.10],   # A flag + B quarantine -> quarantine
                       [0.30, 0.50, 0.90],   # + C block -> block
                       [0.10, 0.39, 0.10]], np.float32)  # B below its threshold, no band -> allow
    d = decide_arrays(scores, [0.24, 0.40, 0.80], [0.20, None, 0.70], [FLAG, QUARANTINE, BLOCK],
                      [False, False, False])
    assert [OUTCOMES[o] for o in d.outcome] == ["flag", "review", "allow", "quarantine", "block", "allow"]
    assert d.levels[1].tolist() == [LEVEL_REVIEW, LEVEL_NONE, LEVEL_NONE]
    assert d.levels[4].tolist() == [LEVEL_HIT, LEVEL_HIT, LEVEL_HIT]
    assert not d.adjusted.any()
    # exactly at the threshold counts as a hit; float32 scores are compared exactly with float64 thresholds
    assert decide_arrays(np.array([[0.25]], np.float32), [0.25], [None], [FLAG], [False]).outcome.tolist() == [FLAG]
    above, below = np.float32(0.1), np.nextafter(np.float32(0.1), np.float32(0))  # 0.1 lies between them
    for thr, expected in ((0.1, [FLAG, 0]), (float(above), [FLAG, 0]), (float(below), [FLAG, FLAG]),
                          (float(above) + 1e-12, [0, 0])):
        got = decide_arrays(np.array([[above], [below]], np.float32), [thr], [None], [FLAG], [False]).outcome
        assert got.tolist() == expected, thr


def test_special_care_hit_lowers_every_other_threshold_by_the_adjustment():
    # concept 0 is special care (threshold 0.5), concept 1 an ordinary one (threshold 0.30, review 0.25)
    scores = np.array([[0.60, 0.295],   # special hit -> 1's threshold becomes 0.29: hit
                       [0.40, 0.295],   # no special hit -> 1 stays below 0.30: review
                       [0.60, 0.285],   # special hit, below 0.29 -> review (band lowered to 0.24)
                       [0.60, 0.245],   # review band 0.24..0.29 after adjustment -> review
                       [0.40, 0.245],   # without adjustment 0.245 < 0.25 -> allow
                       [0.49, 0.30]], np.float32)  # special care itself is not adjusted: 0.49 < 0.50
    args = ([0.5, 0.30], [None, 0.25], [BLOCK, QUARANTINE], [True, False])
    d = decide_arrays(scores, *args, adjustment=0.01)
    assert d.adjusted.tolist() == [True, False, True, True, False, False]
    assert d.levels[:, 1].tolist() == [LEVEL_HIT, LEVEL_REVIEW, LEVEL_REVIEW, LEVEL_REVIEW, LEVEL_NONE, LEVEL_HIT]
    assert [OUTCOMES[o] for o in d.outcome] == ["block", "review", "block", "block", "allow", "quarantine"]
    plain = decide_arrays(scores, *args, adjustment=0.0)
    assert plain.levels[0, 1] == LEVEL_REVIEW  # the adjustment alone made row 0's hit
    # special-care concepts are judged at their own thresholds: one's hit does not lower another's
    two = decide_arrays(np.array([[0.6, 0.495]], np.float32), [0.5, 0.5], [None, None], [FLAG, BLOCK],
                        [True, True], adjustment=0.01)
    assert two.levels.tolist() == [[LEVEL_HIT, LEVEL_NONE]] and OUTCOMES[two.outcome[0]] == "flag"


def test_explain_row_reports_effective_threshold_and_margin():
    policy = parse_policy(_policy(_concept(name="care", threshold=0.5, special_care=True, action="block"),
                                  _concept(name="other", prompts=["y"], threshold=0.3, review_threshold=0.25),
                                  special_care_adjustment=0.01))
    compiled = CompiledPolicy(policy, np.eye(2, dtype=np.float32))
    arrays = compiled.decide_scores(np.array([[0.6, 0.295]], np.float32))
    d = explain_row(compiled, arrays, 0, "x.jpg", version=3)
    other = d.concepts[1]
    assert (d.action, d.adjusted, d.version, d.hits) == ("block", True, 3, ["care", "other"])
    assert other.threshold == pytest.approx(0.29) and other.review_threshold == pytest.approx(0.24)
    assert other.margin == pytest.approx(0.005, abs=1e-6) and other.level == "hit"
    assert d.to_dict()["concepts"][0]["name"] == "care"


def test_concept_masks_pack_one_bit_per_concept():
    levels = np.array([[LEVEL_HIT, LEVEL_NONE, LEVEL_REVIEW], [LEVEL_NONE, LEVEL_HIT, LEVEL_HIT]], np.int8)
    hit, review = concept_masks(levels)
    assert hit.tolist() == [0b001, 0b110] and review.tolist() == [0b100, 0]


# ---- calibration ----------------------------------------------------------------------------------

def test_pr_curve_counts_every_distinct_threshold():
    scores = [0.9, 0.8, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    labels = [1, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0]
    c = pr_curve(scores, labels)
    assert c.thresholds.tolist() == [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]  # 0.8 tie merged
    assert c.tp.tolist() == [1, 2, 3, 4, 4, 5, 5, 5, 5, 5] and c.fp.tolist() == [0, 1, 1, 1, 2, 2, 3, 4, 5, 6]
    assert c.precision[1] == pytest.approx(2 / 3) and c.recall[-1] == 1.0
    assert 0 < c.average_precision() <= 1


def test_choose_threshold_for_target_precision_takes_the_highest_recall_reaching_it():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.3, 0.05, 200), rng.normal(0.2, 0.05, 800)
    scores, labels = np.r_[pos, neg], np.r_[np.ones(200, bool), np.zeros(800, bool)]
    curve = pr_curve(scores, labels)
    for target in (0.8, 0.9, 0.95):
        point = choose_threshold(curve, target_precision=target)
        predicted = scores >= point.threshold  # the decision at the chosen threshold
        tp, fp = int((predicted & labels).sum()), int((predicted & ~labels).sum())
        assert (tp, fp) == (point.tp, point.fp)
        assert tp / (tp + fp) == pytest.approx(point.precision) and point.precision >= target
        # no other threshold meeting the target keeps more positives
        assert point.recall == pytest.approx(curve.recall[curve.precision >= target].max())
    r = choose_threshold(curve, target_recall=0.9)
    assert r.recall >= 0.9 and ((scores >= r.threshold) & labels).sum() == r.tp
    assert (r.tp, r.recall) == (180, 0.9)  # the highest threshold reaching it keeps exactly 90 % of 200


def test_calibration_bad_inputs():
    with pytest.raises(CalibrationError, match="one class only"):
        pr_curve([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 1, 1, 1, 1, 1])
    with pytest.raises(CalibrationError, match="too few"):
        pr_curve([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0])
    curve = pr_curve(np.r_[np.linspace(0, 1, 10), np.linspace(0, 1, 10)], np.r_[np.ones(10), np.zeros(10)])
    with pytest.raises(CalibrationError, match="no threshold reaches precision 0.9"):
        choose_threshold(curve, target_precision=0.9)  # identical score distributions: precision stays 0.5
    with pytest.raises(CalibrationError, match="one of them"):
        choose_threshold(curve, target_precision=0.5, target_recall=0.5)
    with pytest.raises(CalibrationError, match=r"\(0, 1\]"):
        choose_threshold(curve, target_recall=1.5)
    assert isinstance(CalibrationError("x"), InputError)
