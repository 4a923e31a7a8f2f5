"""Moderation end to end on the synthetic world (its unsafe concept is the skull), with real tiny-CLIP scores."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy import func, select

from indexer.catalog.models import (
    ModerationDecision,
    ModerationPolicy,
    ModerationRun,
    ModerationState,
    PhotoFile,
)
from indexer.collection import Collection
from indexer.core.errors import EncoderMismatchError, InputError, WriterBusyError
from retrieval.moderation.calibrate import Examples, calibrate_concept
from retrieval.moderation.history import decision_history, list_decisions
from retrieval.moderation.policy import parse_policy
from retrieval.moderation.rescan import decide_in_session, rescan
from retrieval.moderation.service import moderate_files, moderate_ids
from retrieval.moderation.store import activate_policy, get_policy, list_policies, save_policy
from retrieval.scoring import l2_normalize
from retrieval.search.filters import parse_filters
from retrieval.search.searcher import Searcher, SearchOptions
from tests.helpers import env_offline
from ui.demo.world import CLASSES, UNSAFE_CONCEPT, write_imagefolder

TEMPLATES = ["a photo of a {}", "a picture of a {}", "an image of a {}"]
MODERATION_TABLES = (ModerationPolicy, ModerationRun, ModerationDecision, ModerationState)


def skull_policy(threshold: float, review: float | None = None, action: str = "quarantine", name: str = "world",
                 **extra) -> dict:
    concept = {"name": UNSAFE_CONCEPT, "prompts": [UNSAFE_CONCEPT], "templates": TEMPLATES, "threshold": threshold,
               "review_threshold": review, "action": action}
    return {"name": name, "concepts": [concept], **extra}


@pytest.fixture
def coll(world, tmp_path):
    """A private copy of the world collection (tests change its moderation state)."""
    c = world.private_copy(tmp_path / "coll")
    yield c
    c.close()


@pytest.fixture(scope="module")
def truth(world):
    """Stored ids, vectors, unsafe flags and direct skull scores computed here from the text encoder."""
    with world.open() as c:
        ids, vecs = c.load_vectors()
        with c.catalog.session() as s:
            path_of = dict(s.execute(select(PhotoFile.photo_id, PhotoFile.path)).all())
    unsafe = np.array([world.truth[path_of[int(i)]].unsafe for i in ids])
    text = l2_normalize(l2_normalize(world.encoder.encode_texts([t.format(UNSAFE_CONCEPT) for t in TEMPLATES]))
                        .mean(axis=0))
    return ids, vecs, unsafe, vecs @ text


def _counts(c: Collection) -> dict[str, int]:
    with c.catalog.session() as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) for t in MODERATION_TABLES}


def _state(c: Collection) -> dict[int, str]:
    with c.catalog.session() as s:
        return dict(s.execute(select(ModerationState.photo_id, ModerationState.action)).all())


# ---- policies ----------------------------------------------------------------------------------------

def test_setting_a_policy_twice_keeps_version_1_and_one_version_is_active(coll, world):
    p1 = parse_policy(skull_policy(0.5))
    r1 = save_policy(coll, p1, world.encoder, activate=True)
    r2 = save_policy(coll, parse_policy(skull_policy(0.3)), world.encoder)
    assert (r1.version, r2.version) == (1, 2) and r1.active and not r2.active
    assert get_policy(coll).version == 1  # the active one
    assert get_policy(coll, "world").version == 2  # the newest
    assert get_policy(coll, "world", 1).policy == p1  # version 1 unchanged
    assert np.array_equal(get_policy(coll, "world", 1).weights, r1.weights)
    activate_policy(coll, "world", 2)
    assert [(r.version, r.active) for r in list_policies(coll)] == [(1, False), (2, True)]
    with coll.catalog.session() as s:
        assert s.scalar(select(func.count()).where(ModerationPolicy.active.is_(True))) == 1
    with pytest.raises(InputError, match="no version 7"):
        get_policy(coll, "world", 7)
    with pytest.raises(InputError, match="unknown policy 'nope'"):
        get_policy(coll, "nope")
    # a policy written for another encoder is refused and nothing is stored
    with pytest.raises(EncoderMismatchError, match="calibrate"):
        save_policy(coll, parse_policy(skull_policy(0.3, encoder="ViT-B-32|openai|512")), world.encoder)
    assert len(list_policies(coll)) == 2


# ---- re-evaluation ----------------------------------------------------------------------------------

def test_dry_run_writes_nothing_and_predicts_the_real_run(coll, world, truth):
    ids, _, unsafe, score = truth
    record = save_policy(coll, parse_policy(skull_policy(0.5, review=0.3)), world.encoder)
    before = _counts(coll)
    dry = rescan(coll, record, dry_run=True)
    assert _counts(coll) == before  # nothing written, not even a run row
    hit, band = score >= 0.5, (score >= 0.3) & (score < 0.5)
    assert dry.photos == len(ids) == dry.changed  # first evaluation: every photo gets a decision
    assert dry.by_concept[UNSAFE_CONCEPT] == {"hit": int(hit.sum()), "review": int(band.sum())}
    assert dry.changes["none -> quarantine"] == hit.sum() and (hit == unsafe).all()  # the skulls, exactly
    assert set(dry.examples["none -> quarantine"]) <= set(ids[hit].tolist())
    real = rescan(coll, record)
    assert {k: v for k, v in real.to_dict().items() if k not in ("dry_run", "run_id", "seconds")} == \
           {k: v for k, v in dry.to_dict().items() if k not in ("dry_run", "run_id", "seconds")}
    after = _counts(coll)
    assert after["moderation_decisions"] == after["moderation_state"] == len(ids) and after["moderation_runs"] == 1
    assert {i for i, a in _state(coll).items() if a == "quarantine"} == set(ids[hit].tolist())
    again = rescan(coll, record)  # nothing changed: no history row, only the run is recorded
    assert again.changed == 0 and _counts(coll)["moderation_decisions"] == len(ids)


def test_new_threshold_changes_exactly_the_decisions_whose_scores_cross_it(coll, world, truth):
    ids, _, _, score = truth
    v1 = save_policy(coll, parse_policy(skull_policy(0.5)), world.encoder)
    rescan(coll, v1)
    with coll.catalog.session() as s:
        history_v1 = s.execute(select(ModerationDecision.id, ModerationDecision.photo_id, ModerationDecision.action,
                                      ModerationDecision.scores)).all()
    below = np.sort(score[score < 0.5])
    new = float(below[-4] + below[-5]) / 2  # four photos below the old threshold lie above the new one
    v2 = save_policy(coll, v1.policy.with_concept(v1.policy.concepts[0].model_copy(update={"threshold": new})),
                     weights=v1.weights)
    assert v2.version == 2
    report = rescan(coll, v2)
    crossing = set(ids[(score >= new) & (score < 0.5)].tolist())
    assert len(crossing) == 4
    changed = {d.photo_id for d in list_decisions(coll) if d.version == 2}
    assert report.changed == len(changed) == len(crossing) and changed == crossing
    assert report.changes == {"allow -> quarantine": 4}
    with coll.catalog.session() as s:  # history is append-only: every earlier row is still there, unchanged
        assert s.execute(select(ModerationDecision.id, ModerationDecision.photo_id, ModerationDecision.action,
                                ModerationDecision.scores).where(ModerationDecision.id <= max(r[0] for r in history_v1))
                         ).all() == history_v1
    pid = sorted(crossing)[0]
    hist = decision_history(coll, pid)
    assert [(h.action, h.version, h.current) for h in hist] == [("allow", 1, False), ("quarantine", 2, True)]
    assert hist[1].scores[UNSAFE_CONCEPT] == pytest.approx(float(score[ids == pid][0]), abs=2e-3)
    listed = list_decisions(coll, photo_id=pid, history=True)
    assert len(listed) == 1 and [h.version for h in listed[0].history] == [1, 2]
    assert {d.photo_id for d in list_decisions(coll, action="quarantine")} == \
           {i for i, a in _state(coll).items() if a == "quarantine"}


def test_ingest_hook_decides_inside_the_callers_transaction(coll, world, truth):
    ids, vecs, unsafe, _ = truth
    with coll.catalog.session() as s, s.begin():
        assert decide_in_session(s, ids, vecs) == 0  # no active policy: nothing to do
    save_policy(coll, parse_policy(skull_policy(0.5)), world.encoder, activate=True)
    pick = np.r_[np.flatnonzero(unsafe)[:2], np.flatnonzero(~unsafe)[:8]]
    with pytest.raises(RuntimeError, match="batch failed"), coll.catalog.session() as s, s.begin():
        assert decide_in_session(s, ids[pick], vecs[pick]) == 10
        raise RuntimeError("batch failed")  # the decisions roll back with the caller's vectors
    assert _counts(coll)["moderation_decisions"] == 0
    with coll.catalog.session() as s, s.begin():
        assert decide_in_session(s, ids[pick][::-1], vecs[pick][::-1]) == 10  # any order
    assert _state(coll) == {int(i): ("quarantine" if unsafe[k] else "allow") for k, i in zip(pick, ids[pick])}
    with coll.catalog.session() as s, s.begin():
        assert decide_in_session(s, ids[pick], vecs[pick]) == 0  # unchanged decisions: no new rows
    assert rescan(coll, get_policy(coll)).changed == len(ids) - 10


def test_real_run_refuses_while_another_writer_holds_the_lock(coll, world):
    record = save_policy(coll, parse_policy(skull_policy(0.5)), world.encoder)
    with coll.writer_lock().acquire():
        before = _counts(coll)
        with pytest.raises(WriterBusyError):
            rescan(coll, record)
        assert rescan(coll, record, dry_run=True).changed > 0  # readers never wait for the writer
        assert _counts(coll) == before


def test_special_care_adjustment_changes_decisions_exactly_as_specified(coll, world, truth):
    """A skull hit (special care) lowers the other concept's threshold by the adjustment, nothing else."""
    ids, vecs, unsafe, skull = truth
    marker = {"name": "marker", "prompts": ["white skull"], "templates": TEMPLATES, "action": "flag"}
    care = {"name": "care", "prompts": [UNSAFE_CONCEPT], "templates": TEMPLATES, "threshold": 0.5,
            "action": "flag", "special_care": True}
    probe = save_policy(coll, parse_policy({"name": "probe", "concepts": [{**marker, "threshold": 0.0}]}),
                        world.encoder)
    m = probe.compiled().scores(vecs)[:, 0]
    t = float(np.median(m[unsafe]))  # the marker's threshold cuts through the skulls' scores
    adj = 0.05
    policy = parse_policy({"name": "care", "special_care_adjustment": adj,
                           "concepts": [care, {**marker, "threshold": t}]})
    record = save_policy(coll, policy, world.encoder)
    arrays = record.compiled().decide(vecs)
    care_hit = skull >= 0.5 - 1e-5
    expected = m >= np.where(care_hit, t - adj, t)
    assert (arrays.levels[:, 1] == 2).tolist() == expected.tolist()
    assert arrays.adjusted.tolist() == care_hit.tolist()
    flipped = expected & ~(m >= t)
    assert flipped.any() and care_hit[flipped].all()  # only special-care hits were made stricter
    no_care = save_policy(coll, parse_policy({"name": "care", "special_care_adjustment": 0.0,
                                              "concepts": [care, {**marker, "threshold": t}]}), world.encoder)
    assert ((no_care.compiled().decide(vecs).levels[:, 1] == 2) == (m >= t)).all()


# ---- search ----------------------------------------------------------------------------------------

def test_quarantined_photos_vanish_from_search_unless_asked_for(coll, world, truth):
    ids, _, unsafe, _ = truth
    rescan(coll, save_policy(coll, parse_policy(skull_policy(0.5)), world.encoder))
    quarantined = set(ids[unsafe].tolist())
    s = Searcher(coll, world.encoder)
    opts = {"k": 40, "collapse": None}
    default = {h.id for h in s.search_text("a photo of a skull", SearchOptions(**opts))}
    assert default and not default & quarantined
    asked = [h.id for h in s.search_text("a photo of a skull",
                                         SearchOptions(**opts, filters=parse_filters(["moderation=quarantine"])))]
    assert set(asked) == quarantined
    every = {h.id for h in s.search_text("a photo of a skull",
                                         SearchOptions(**opts, filters=parse_filters(["moderation=any"])))}
    assert quarantined <= every
    similar = {h.id for h in s.search_similar(photo_id=int(ids[unsafe][0]), options=SearchOptions(**opts))}
    assert similar and not similar & quarantined
    allowed = {h.id for h in s.search_text("a photo of a circle",
                                           SearchOptions(**opts, filters=parse_filters(["moderation=allow"])))}
    assert allowed and not allowed & quarantined


# ---- calibration ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Two labelled splits: positives are skulls, negatives the twelve shape classes."""
    out = {}
    for name, seed in (("calib", 5), ("heldout", 6)):
        root = tmp_path_factory.mktemp(name)
        write_imagefolder(root, 6, seed=seed, include_unsafe=True)
        negatives = root / "negatives"
        negatives.mkdir()
        for cls in CLASSES:
            (root / cls).rename(negatives / cls)
        out[name] = root
    return out


def test_calibration_reaches_target_precision_on_held_out_split(coll, world, splits, tmp_path):
    base = save_policy(coll, parse_policy(skull_policy(-0.5)), world.encoder)
    calib = splits["calib"]
    result = calibrate_concept(coll, base, UNSAFE_CONCEPT, Examples([str(calib / UNSAFE_CONCEPT)]),
                               Examples([str(calib / "negatives")]), world.encoder, target_precision=0.95,
                               write=True, activate=True)
    point = result.point
    assert point.precision >= 0.95 and point.tp + point.fn == 6 and point.fp + point.tn == 72
    stored = get_policy(coll)
    assert stored.version == base.version + 1 == result.written_version and stored.active
    assert stored.policy.concepts[0].threshold == point.threshold
    assert stored.calibration[UNSAFE_CONCEPT]["point"]["threshold"] == pytest.approx(point.threshold)
    assert len(stored.calibration[UNSAFE_CONCEPT]["curve"]["precision"]) >= 2
    assert get_policy(coll, "world", base.version).policy.concepts[0].threshold == -0.5  # old version kept
    # the decision at the chosen threshold matches the calibration counts
    pos = moderate_files(stored, world.encoder, Examples([str(calib / UNSAFE_CONCEPT)]).files())
    neg = moderate_files(stored, world.encoder, Examples([str(calib / "negatives")]).files())
    assert sum(d.action == "quarantine" for d in pos) == point.tp
    assert sum(d.action == "quarantine" for d in neg) == point.fp
    # and on the held-out split the precision target still holds
    held = splits["heldout"]
    hp = moderate_files(stored, world.encoder, Examples([str(held / UNSAFE_CONCEPT)]).files())
    hn = moderate_files(stored, world.encoder, Examples([str(held / "negatives")]).files())
    tp, fp = sum(d.action == "quarantine" for d in hp), sum(d.action == "quarantine" for d in hn)
    assert tp >= 5 and tp / (tp + fp) >= 0.95


def test_calibration_from_catalogued_ids_and_bad_inputs(coll, world, truth):
    ids, _, unsafe, score = truth
    base = save_policy(coll, parse_policy(skull_policy(0.5)), world.encoder)
    pos, neg = ids[unsafe].tolist(), ids[~unsafe].tolist()
    result = calibrate_concept(coll, base, UNSAFE_CONCEPT, Examples(ids=pos), Examples(ids=neg),
                               target_recall=1.0)
    assert result.point.recall == 1.0 and result.written_version is None
    lowest_positive = score[unsafe].min()
    highest_negative_below = score[~unsafe][score[~unsafe] < lowest_positive].max()
    assert result.point.threshold == pytest.approx((lowest_positive + highest_negative_below) / 2, abs=2e-3)
    versions = len(list_policies(coll))
    with pytest.raises(InputError, match="unknown concept 'gore'"):
        calibrate_concept(coll, base, "gore", Examples(ids=pos), Examples(ids=neg), target_precision=0.9)
    with pytest.raises(InputError, match="one class only"):
        calibrate_concept(coll, base, UNSAFE_CONCEPT, Examples(ids=pos), Examples(ids=[]), target_precision=0.9,
                          write=True)
    with pytest.raises(InputError, match="too few"):
        calibrate_concept(coll, base, UNSAFE_CONCEPT, Examples(ids=pos[:2]), Examples(ids=neg), target_precision=0.9,
                          write=True)
    with pytest.raises(InputError, match="not in the collection"):
        calibrate_concept(coll, base, UNSAFE_CONCEPT, Examples(ids=[10**6]), Examples(ids=neg), target_precision=0.9)
    assert len(list_policies(coll)) == versions  # a failed calibration stores nothing


def test_plot_is_a_png(coll, world, truth, tmp_path):
    pytest.importorskip("matplotlib")
    ids, _, unsafe, _ = truth
    base = save_policy(coll, parse_policy(skull_policy(0.5)), world.encoder)
    out = tmp_path / "pr.png"
    calibrate_concept(coll, base, UNSAFE_CONCEPT, Examples(ids=ids[unsafe].tolist()),
                      Examples(ids=ids[~unsafe].tolist()), target_precision=0.9, plot=out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_moderate_ids_uses_stored_vectors(coll, world, truth):
    ids, _, unsafe, score = truth
    record = save_policy(coll, parse_policy(skull_policy(0.5, review=0.3)), world.encoder)
    skull_id, other_id = int(ids[unsafe][0]), int(ids[~unsafe][0])
    d_skull, d_other = moderate_ids(coll, record, [skull_id, other_id])
    assert (d_skull.action, d_skull.photo_id, d_skull.hits) == ("quarantine", skull_id, [UNSAFE_CONCEPT])
    assert d_other.action in ("allow", "review") and d_other.concepts[0].margin < 0
    assert d_skull.concepts[0].score == pytest.approx(float(score[ids == skull_id][0]), abs=1e-4)
    with pytest.raises(InputError, match="not in the collection"):
        moderate_ids(coll, record, [10**6])
    assert _counts(coll)["moderation_decisions"] == 0  # checking an id stores nothing


# ---- CLI ---------------------------------------------------------------------------------------------

def _main(capsys, *args):
    from ui.cli.app import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_policy_moderate_decisions(coll, world, truth, tmp_path, capsys):
    ids, _, unsafe, _ = truth
    c = ["--collection", str(coll.path)]
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps(skull_policy(0.5)))
    code, out, err = _main(capsys, "policy", "set", str(policy), "--activate", "--json", *c)
    assert code == 0, err
    assert json.loads(out)["version"] == 1 and json.loads(out)["active"]
    code, out, _ = _main(capsys, "policy", "set", str(policy), *c)
    assert code == 0 and "world v2" in out
    code, out, _ = _main(capsys, "policy", "list", "--json", *c)
    assert [(r["version"], r["active"]) for r in json.loads(out)] == [(1, True), (2, False)]
    code, out, _ = _main(capsys, "policy", "activate", "world", "--version", "2", *c)
    assert code == 0 and out.startswith("* world v2")
    code, out, _ = _main(capsys, "moderate", "--all", "--dry-run", "--json", *c)
    report = json.loads(out)
    assert code == 0 and report["dry_run"] and report["changes"]["none -> quarantine"] == unsafe.sum()
    assert _counts(coll)["moderation_decisions"] == 0
    code, out, _ = _main(capsys, "moderate", "--all", *c)
    assert code == 0 and f"{len(ids)} decision(s) changed" in out
    code, out, _ = _main(capsys, "decisions", "--action", "quarantine", "--json", *c)
    assert {d["photo_id"] for d in json.loads(out)} == set(ids[unsafe].tolist())
    code, out, _ = _main(capsys, "moderate", "--id", str(int(ids[unsafe][0])), "--json", *c)
    assert json.loads(out)[0]["action"] == "quarantine"
    code, out, _ = _main(capsys, "decisions", "--id", str(int(ids[unsafe][0])), "--history", *c)
    assert "quarantine" in out and "(current)" in out
    skull_file = next(p for p, sample in world.truth.items() if sample.unsafe)
    code, out, err = _main(capsys, "moderate", skull_file, str(tmp_path / "p.json"), "--json", *c)
    decided = json.loads(out)
    assert code == 0 and decided[0]["action"] == "quarantine" and decided[0]["hits"] == [UNSAFE_CONCEPT]
    assert decided[1]["action"] == "error" and decided[1]["error"]  # not an image: reported, not fatal
    code, out, err = _main(capsys, "policy", "set", "starter", "--json", *c)
    assert code == 0 and json.loads(out)["name"] == "starter", err


def test_cli_bad_input_is_exit_2_and_changes_nothing(coll, world, tmp_path, capsys):
    c = ["--collection", str(coll.path)]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(skull_policy(0.5)))
    assert _main(capsys, "policy", "set", str(good), "--activate", *c)[0] == 0
    before = _counts(coll)
    cases = {
        "threshold.json": (skull_policy(1.5), "less than or equal to 1"),
        "review.json": (skull_policy(0.2, review=0.3), "review_threshold 0.3 is above threshold 0.2"),
        "action.json": (skull_policy(0.2, action="burn"), "unknown action 'burn'"),
        "prompts.json": ({"name": "x", "concepts": [{"name": "a", "prompts": [], "threshold": 0.2}]}, "prompts"),
        "encoder.json": (skull_policy(0.2, encoder="ViT-B-32|openai|512"), "was written for encoder"),
    }
    for name, (body, needle) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(body))
        code, _, err = _main(capsys, "policy", "set", str(path), "--activate", *c)
        assert code == 2 and needle in err and "Traceback" not in err, (name, err)
    for args, needle in [
        (("calibrate", "gore", "--positive-ids", "1,2", "--negative-ids", "3,4", "--target-precision", "0.9"),
         "unknown concept 'gore'"),
        (("calibrate", UNSAFE_CONCEPT, "--positive-ids", "1,2,3,4,5,6", "--negative-ids", "1", "--target-recall",
          "0.9", "--write"), "too few"),
        (("calibrate", UNSAFE_CONCEPT, "--positive-ids", "1,2"), "positive and negative examples"),
        (("policy", "activate", "world", "--version", "9"), "no version 9"),
        (("moderate", "--all", "--policy", "nope"), "unknown policy 'nope'"),
        (("decisions", "--action", "burn"), "unknown action 'burn'"),
        (("moderate", "--dry-run", "--id", "1"), "--dry-run goes with --all"),
    ]:
        code, _, err = _main(capsys, *args, *c)
        assert code == 2 and needle in err and "Traceback" not in err, (args, err)
    assert _counts(coll) == before
    assert get_policy(coll).version == 1  # an invalid policy never became active


def test_cli_subprocess_exit_code(coll, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(skull_policy(0.2, review=0.3)))
    r = subprocess.run([sys.executable, "-m", "ui.cli", "policy", "set", str(bad), "--collection", str(coll.path)],
                       env=env_offline(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "review_threshold" in r.stderr and "Traceback" not in r.stderr


# ---- PostgreSQL ------------------------------------------------------------------------------------

def test_policies_and_rescan_on_postgresql(world, truth, tmp_path, pg_database_url):
    """Migration 0003 on PostgreSQL: versions, one active, rescan history (vectors copied from the world)."""
    ids, vecs, unsafe, _ = truth
    pg = Collection.open_for_encoder(tmp_path / "pgcoll", world.encoder.spec, pg_database_url)
    try:
        with world.open() as src, src.catalog.session() as s:
            from indexer.catalog.models import Embedding, Photo

            photos = [{c.name: getattr(p, c.name) for c in Photo.__table__.columns} for p in s.scalars(select(Photo))]
            blobs = [{"photo_id": e.photo_id, "vector": e.vector} for e in s.scalars(select(Embedding))]
        with pg.catalog.session() as s, s.begin():
            s.execute(sa.insert(Photo), photos)
            s.execute(sa.insert(Embedding), blobs)
        r1 = save_policy(pg, parse_policy(skull_policy(0.5)), world.encoder, activate=True)
        r2 = save_policy(pg, parse_policy(skull_policy(0.5)), world.encoder, activate=True)
        assert (r1.version, r2.version) == (1, 2) and [r.active for r in list_policies(pg)] == [False, True]
        with pytest.raises(sa.exc.IntegrityError), pg.catalog.session() as s, s.begin():  # the database enforces it
            s.execute(sa.update(ModerationPolicy).values(active=True))
        report = rescan(pg, r2)
        assert report.changed == len(ids) and report.by_action["quarantine"] == unsafe.sum()
        assert {d.photo_id for d in list_decisions(pg, action="quarantine")} == set(ids[unsafe].tolist())
        again = rescan(pg, r2)  # re-decided from the scores stored with each decision: no vector read
        assert again.changed == 0 and again.rescored == 0 and again.by_action == report.by_action
        body = skull_policy(0.5)
        body["concepts"][0]["prompts"] = [UNSAFE_CONCEPT, "white skull"]  # new prompt vectors: scores are stale
        r3 = save_policy(pg, parse_policy(body), world.encoder, activate=True)
        assert rescan(pg, r3).rescored == len(ids)  # ... so every vector is read, and fresh scores are stored
        assert rescan(pg, r3, dry_run=True).rescored == 0
    finally:
        pg.close()


def test_index_run_decides_new_photos_with_the_active_policy(coll, world, truth, tmp_path, capsys):
    from ui.demo.world import write_library

    save_policy(coll, parse_policy(skull_policy(float(np.median(truth[3])))), world.encoder, activate=True)
    rescan(coll, get_policy(coll))  # the existing library is decided
    before = _counts(coll)["moderation_decisions"]
    write_library(tmp_path / "new", 24, 99)
    code, out, err = _main(capsys, "index", str(tmp_path / "new"), "--collection", str(coll.path), "--workers", "0",
                           "--json")
    assert code == 0 and json.loads(out)["encode"]["encoded"] == 24, err
    with coll.catalog.session() as s:
        new_ids = {pid for path, pid in s.execute(select(PhotoFile.path, PhotoFile.photo_id))
                   if path.startswith(str(tmp_path / "new"))}
    assert len(new_ids) == 24 and new_ids <= set(_state(coll))  # every new photo was decided at ingest
    assert _counts(coll)["moderation_decisions"] == before + 24
    assert rescan(coll, get_policy(coll), dry_run=True).changed == 0  # exactly what a rescan would decide


def test_threshold_preview_equals_storing_that_version_and_writes_nothing(coll, world, truth):
    save_policy(coll, parse_policy(skull_policy(0.9, review=0.85)), world.encoder, activate=True)
    active = get_policy(coll)
    before = _counts(coll)
    moved = float(np.quantile(truth[3], 0.9))
    preview = rescan(coll, active, dry_run=True, thresholds={UNSAFE_CONCEPT: moved})
    assert _counts(coll) == before  # nothing stored: no version, no decision, no run
    stored = save_policy(coll, parse_policy(skull_policy(moved, review=moved - 0.05)), world.encoder)
    assert rescan(coll, stored, dry_run=True).by_concept == preview.by_concept
    assert preview.by_concept[UNSAFE_CONCEPT]["hit"] == int((truth[3] >= moved).sum())
    with pytest.raises(InputError, match="only preview"):
        rescan(coll, active, thresholds={UNSAFE_CONCEPT: moved})
    with pytest.raises(InputError, match="no concept"):
        rescan(coll, active, dry_run=True, thresholds={"unicorn": 0.5})
    with pytest.raises(InputError, match="between -1 and 1"):
        rescan(coll, active, dry_run=True, thresholds={UNSAFE_CONCEPT: 7.0})
