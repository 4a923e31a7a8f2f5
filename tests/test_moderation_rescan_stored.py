"""Re-evaluation from stored scores: reads vectors only for what changed, and equals a full re-score."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from sqlalchemy import delete, select, update

from indexer.catalog.models import ModerationState
from indexer.collection import Collection
from retrieval.moderation import rescan as rescan_module
from retrieval.moderation.decide import score_keys
from retrieval.moderation.policy import parse_policy
from retrieval.moderation.rescan import decide_in_session, rescan
from retrieval.moderation.store import save_policy
from ui.demo.world import UNSAFE_CONCEPT

TEMPLATES = ["a photo of a {}", "a picture of a {}", "an image of a {}"]
REPORT_KEYS = ("photos", "changed", "by_action", "by_concept", "changes", "changed_by_concept", "examples")


def two_concepts(skull: float, circle: float, *, circle_prompt: str = "red circle", action: str = "flag",
                 skull_name: str = UNSAFE_CONCEPT) -> dict:
    return {"name": "fast", "special_care_adjustment": 0.02, "concepts": [
        {"name": skull_name, "prompts": [UNSAFE_CONCEPT], "templates": TEMPLATES, "threshold": skull,
         "review_threshold": skull - 0.1, "action": "quarantine", "special_care": True},
        {"name": "circle", "prompts": [circle_prompt, "blue circle"], "contrast": ["a square"],
         "templates": TEMPLATES, "threshold": circle, "action": action}]}


@pytest.fixture
def coll(world, tmp_path):
    c = world.private_copy(tmp_path / "coll")
    yield c
    c.close()


@pytest.fixture(scope="module")
def stored(world):
    with world.open() as c:
        return c.load_vectors()


@pytest.fixture(scope="module")
def base_weights(world):
    """Prompt vectors of the two-concept policy, computed once (thresholds do not change them)."""
    from retrieval.moderation.decide import build_policy_weights

    return build_policy_weights(parse_policy(two_concepts(0.5, 0.5)), world.encoder.encode_texts)


def _save(coll, body: dict, weights=None, encoder=None):
    return save_policy(coll, parse_policy(body), encoder, weights=weights, activate=True)


def _no_vectors(monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise AssertionError("stored vectors were read")
    monkeypatch.setattr(rescan_module, "_vector_chunks", refuse)


def _state(coll) -> dict[int, tuple]:
    with coll.catalog.session() as s:
        return {r.photo_id: (r.action, r.hits, r.review, r.scores_policy_id, r.scores)
                for r in s.scalars(select(ModerationState))}


def _report(r) -> dict:
    return {k: getattr(r, k) for k in REPORT_KEYS}


def _thresholds(stored, weights, body_a) -> tuple[float, float]:
    """Skull and circle thresholds from the actual score distribution (no ties near them)."""
    scores = parse_and_score(body_a, weights, stored[1])
    return float(np.quantile(scores[:, 0], 0.9)), float(np.quantile(scores[:, 1], 0.7))


def parse_and_score(body, weights, vecs):
    from retrieval.moderation.decide import CompiledPolicy

    return CompiledPolicy(parse_policy(body), weights).scores(vecs)


def test_threshold_only_change_reads_no_vector_and_equals_a_full_rescore(coll, stored, base_weights, monkeypatch):
    ids, vecs = stored
    t_skull, t_circle = _thresholds(stored, base_weights, two_concepts(0.5, 0.5))
    v1 = _save(coll, two_concepts(t_skull, t_circle), base_weights)
    first = rescan(coll, v1)
    assert first.rescored == first.photos == len(ids)  # nothing stored yet: every photo from its vector

    # v2 moves both thresholds, an action and the special-care adjustment; prompts are unchanged
    scores = v1.compiled().scores(vecs)
    new_circle = float(np.sort(scores[:, 1])[len(ids) // 2] + np.sort(scores[:, 1])[len(ids) // 2 + 1]) / 2
    body = two_concepts(t_skull - 0.03, new_circle, action="block")
    body["special_care_adjustment"] = 0.05
    v2 = _save(coll, body, base_weights)
    _no_vectors(monkeypatch)
    dry = rescan(coll, v2, dry_run=True)
    real = rescan(coll, v2)
    assert real.rescored == dry.rescored == 0 and real.changed > 0
    assert _report(real) == _report(dry)  # the dry run predicts the real run exactly
    # ... and equals deciding every photo directly from its stored vector
    direct = v2.compiled().decide(vecs)
    state = _state(coll)
    from retrieval.outcomes import OUTCOMES

    assert [state[int(i)][0] for i in ids] == [OUTCOMES[k] for k in direct.outcome]
    assert real.by_concept["circle"]["hit"] == int((direct.levels[:, 1] == 2).sum())
    assert real.by_action == {a: int((direct.outcome == k).sum()) for k, a in enumerate(OUTCOMES)
                              if (direct.outcome == k).any()}
    # the stored scores are the exact float32 scores of the stored vectors
    blobs = np.stack([np.frombuffer(state[int(i)][4], "<f4") for i in ids])
    np.testing.assert_allclose(blobs, v2.compiled().scores(vecs), rtol=0, atol=1e-6)


def test_fast_path_report_equals_the_report_from_vectors(coll, stored, base_weights, tmp_path, monkeypatch):
    """The same re-evaluation on a copy whose stored scores were wiped (so every photo is scored from its
    vector) gives the same report and the same stored decisions."""
    t_skull, t_circle = _thresholds(stored, base_weights, two_concepts(0.5, 0.5))
    rescan(coll, _save(coll, two_concepts(t_skull, t_circle), base_weights))
    v2 = _save(coll, two_concepts(t_skull + 0.02, t_circle - 0.04), base_weights)
    coll.close()
    shutil.copytree(coll.path, tmp_path / "wiped")
    slow = Collection.open(tmp_path / "wiped")
    with slow.catalog.session() as s, s.begin():
        s.execute(update(ModerationState).values(scores=None, scores_policy_id=None))
    from_vectors = rescan(slow, v2)
    assert from_vectors.rescored == from_vectors.photos
    fast_coll = Collection.open(coll.path)
    _no_vectors(monkeypatch)
    fast = rescan(fast_coll, v2)
    assert fast.rescored == 0 and fast.changed > 0
    assert _report(fast) == _report(from_vectors)
    assert {k: v[:3] for k, v in _state(fast_coll).items()} == {k: v[:3] for k, v in _state(slow).items()}
    # the run from vectors stored the scores it computed: the next run needs no vector
    again = rescan(slow, _save(slow, two_concepts(t_skull, t_circle), base_weights))
    assert again.rescored == 0
    slow.close()
    fast_coll.close()


def test_vectors_are_read_only_for_photos_and_concepts_that_need_them(coll, world, stored, base_weights):
    ids, vecs = stored
    t_skull, t_circle = _thresholds(stored, base_weights, two_concepts(0.5, 0.5))
    v1 = _save(coll, two_concepts(t_skull, t_circle), base_weights)
    rescan(coll, v1)
    # photos without a current decision (e.g. indexed while no policy was active) are scored from vectors
    gone = [int(i) for i in ids[:7]]
    with coll.catalog.session() as s, s.begin():
        s.execute(delete(ModerationState).where(ModerationState.photo_id.in_(gone)))
    report = rescan(coll, v1)
    assert report.rescored == 7 and report.changed == 7
    # a renamed concept with the same prompt vectors keeps its stored scores
    renamed = _save(coll, two_concepts(t_skull, t_circle, skull_name="skulls"), base_weights)
    assert score_keys(renamed.policy, renamed.weights)[0] == score_keys(v1.policy, v1.weights)[0]
    r = rescan(coll, renamed, dry_run=True)
    assert r.rescored == 0
    # a changed prompt changes that concept's key: every photo is scored from its vector
    changed = _save(coll, two_concepts(t_skull, t_circle, circle_prompt="green circle"), encoder=world.encoder)
    keys_old, keys_new = score_keys(v1.policy, v1.weights), score_keys(changed.policy, changed.weights)
    assert keys_old[0] == keys_new[0] and keys_old[1] != keys_new[1]
    dry = rescan(coll, changed, dry_run=True)
    real = rescan(coll, changed)
    assert dry.rescored == real.rescored == len(ids) and _report(dry) == _report(real)
    direct = changed.compiled().decide(vecs)
    state = _state(coll)
    blobs = np.stack([np.frombuffer(state[int(i)][4], "<f4") for i in ids])
    np.testing.assert_allclose(blobs, direct.scores, rtol=0, atol=1e-6)
    assert {state[int(i)][3] for i in ids} == {changed.id}  # unchanged decisions got fresh scores too
    assert rescan(coll, changed, dry_run=True).rescored == 0


def test_ingest_scores_equal_scores_of_the_stored_vectors(coll, world, stored, base_weights):
    """The ingest hook scores vectors as they will be stored (float16), so a later rescan agrees exactly."""
    ids, vecs = stored
    record = _save(coll, two_concepts(0.3, 0.2), base_weights)
    raw = world.encoder.encode_texts(["a photo of a skull"])  # any float32 vector that float16 rounding moves
    fresh = np.repeat(raw, 3, axis=0) + np.linspace(0, 1e-3, 3)[:, None]
    pick = ids[:3]
    with coll.catalog.session() as s, s.begin():
        s.execute(delete(ModerationState))
        decide_in_session(s, pick, fresh)
    state = _state(coll)
    from indexer.core.vectors import decode_vectors, encode_vector

    as_read = decode_vectors([encode_vector(v) for v in fresh], coll.dim)  # what a rescan reads back
    expected = record.compiled().scores(as_read)
    got = np.stack([np.frombuffer(state[int(i)][4], "<f4") for i in pick])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
