"""Migration 0006: deleting a photo keeps its decision history (identified by sha256); upgrades keep data."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, select, text

from indexer.catalog.engine import alembic_config, current_revision, head_revision, make_engine, sqlite_url, upgrade
from indexer.catalog.models import Base, ModerationDecision, ModerationState, Photo, PhotoFile
from indexer.collection import Collection
from indexer.run import RunOptions, index_paths
from retrieval.moderation.history import decision_history, list_decisions
from retrieval.moderation.policy import parse_policy
from retrieval.moderation.rescan import decide_in_session, rescan
from retrieval.moderation.store import save_policy
from ui.demo.world import UNSAFE_CONCEPT, write_library

MODERATION_TABLES = {"moderation_policies", "moderation_runs", "moderation_decisions", "moderation_state"}
NOW = datetime(2026, 11, 1, 12, 0, 0)


def _catalog_at_0005_with_decisions(url: str):
    """A catalog migrated to 0005 holding 3 photos, a policy, 5 history rows and 2 current decisions."""
    engine = make_engine(url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
    with engine.begin() as conn:
        for i in (1, 2, 3):
            conn.execute(text("INSERT INTO photos (id, sha256, size, status, created_at) "
                              "VALUES (:i, :sha, 1, 'indexed', :now)"), {"i": i, "sha": f"{i:064x}", "now": NOW})
        conn.execute(text("INSERT INTO moderation_policies (id, name, version, active, body, encoder_spec_id, "
                          "weights, created_at) VALUES (1, 'p', 1, true, '{}', 'enc', :w, :now)"),
                     {"w": b"\0" * 8, "now": NOW})
        rows = [(1, 1, "allow"), (2, 1, "quarantine"), (3, 2, "allow"), (4, 2, "block"), (5, 3, "allow")]
        for did, pid, action in rows:
            conn.execute(text("INSERT INTO moderation_decisions (id, photo_id, policy_id, action, hits, review, "
                              "adjusted, scores, created_at) VALUES (:d, :p, 1, :a, '', '', false, '{}', :now)"),
                         {"d": did, "p": pid, "a": action, "now": NOW})
        for pid, did, action in ((1, 2, "quarantine"), (2, 4, "block")):
            conn.execute(text("INSERT INTO moderation_state (photo_id, decision_id, action, hits, review) "
                              "VALUES (:p, :d, :a, '', '')"), {"p": pid, "d": did, "a": action})
    return engine


def _check_upgrade_keeps_rows_and_history_outlives_photos(engine) -> None:
    assert current_revision(engine) == "0005"
    upgrade(engine)
    assert current_revision(engine) == head_revision() >= "0006"
    with engine.begin() as conn:
        decisions = conn.execute(text("SELECT id, photo_id, photo_sha256, action FROM moderation_decisions "
                                      "ORDER BY id")).all()
        assert [tuple(r) for r in decisions] == [
            (1, 1, f"{1:064x}", "allow"), (2, 1, f"{1:064x}", "quarantine"), (3, 2, f"{2:064x}", "allow"),
            (4, 2, f"{2:064x}", "block"), (5, 3, f"{3:064x}", "allow")]
        state = conn.execute(text("SELECT photo_id, decision_id, action, scores, scores_policy_id "
                                  "FROM moderation_state ORDER BY photo_id")).all()
        assert [tuple(r) for r in state] == [(1, 2, "quarantine", None, None), (2, 4, "block", None, None)]
        conn.execute(delete(Photo).where(Photo.id.in_([1, 3])))  # foreign keys on: cascades where they exist
        assert conn.execute(select(ModerationState.photo_id)).scalars().all() == [2]  # state follows the photo
        assert conn.execute(select(ModerationDecision.id).order_by(ModerationDecision.id)).scalars().all() == \
            [1, 2, 3, 4, 5]  # ... the history does not
        if engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA foreign_key_check")).all() == []
    # the ORM models describe exactly what the migrations built
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    mine = [d for d in diffs if any(t in repr(d) for t in MODERATION_TABLES)
            and "uq_moderation_policies_one_active" not in repr(d)]  # made by 0003, deliberately not in the models
    assert mine == []


def test_upgrade_from_0005_keeps_decisions_and_state_on_sqlite(tmp_path):
    engine = _catalog_at_0005_with_decisions(sqlite_url(tmp_path / "catalog.db"))
    try:
        _check_upgrade_keeps_rows_and_history_outlives_photos(engine)
    finally:
        engine.dispose()


def test_upgrade_from_0005_keeps_decisions_and_state_on_postgresql(pg_database_url):
    engine = _catalog_at_0005_with_decisions(pg_database_url)
    try:
        _check_upgrade_keeps_rows_and_history_outlives_photos(engine)
    finally:
        engine.dispose()


def test_downgrade_to_0005_keeps_state_and_drops_only_orphaned_history(tmp_path):
    engine = _catalog_at_0005_with_decisions(sqlite_url(tmp_path / "catalog.db"))
    try:
        upgrade(engine)
        with engine.begin() as conn:
            conn.execute(delete(Photo).where(Photo.id == 3))
        cfg = alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        assert current_revision(engine) == "0005"
        with engine.begin() as conn:  # 0005's cascade cannot hold photo 3's rows; everything else is kept
            assert conn.execute(text("SELECT id FROM moderation_decisions ORDER BY id")).scalars().all() == [1, 2, 3, 4]
            assert [tuple(r) for r in conn.execute(text("SELECT photo_id, decision_id FROM moderation_state "
                                                        "ORDER BY photo_id"))] == [(1, 2), (2, 4)]
    finally:
        engine.dispose()


def _main(capsys, *args):
    from ui.cli.app import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_deleted_photo_keeps_its_history_and_a_reused_id_does_not_mix_it_in(tmp_path, world_encoder, capsys):
    encoder = world_encoder
    library = tmp_path / "library"
    write_library(library, 12, seed=41)
    coll = Collection.open_for_encoder(tmp_path / "coll", encoder.spec)
    try:
        index_paths(coll, encoder, [library], RunOptions(batch_size=16, workers=0))
        body = {"name": "kept", "concepts": [{"name": UNSAFE_CONCEPT, "prompts": [UNSAFE_CONCEPT], "threshold": 0.9,
                                              "action": "quarantine"}]}
        v1 = save_policy(coll, parse_policy(body), encoder, activate=True)
        rescan(coll, v1)
        body["concepts"][0]["threshold"] = -1.0  # every photo is quarantined: a second history row each
        rescan(coll, save_policy(coll, parse_policy(body), encoder, activate=True))
        with coll.catalog.session() as s:
            victim = s.scalar(select(Photo).order_by(Photo.id.desc()).limit(1))  # the highest id: SQLite reuses it
            victim_id, victim_sha = victim.id, victim.sha256
            path = s.scalar(select(PhotoFile.path).where(PhotoFile.photo_id == victim_id))
        assert [h.action for h in decision_history(coll, victim_id)] == ["allow", "quarantine"]
        Path(path).unlink()
        index_paths(coll, encoder, [library], RunOptions(batch_size=16, workers=0))  # the photo leaves the catalog
        with coll.catalog.session() as s:
            assert s.get(Photo, victim_id) is None
            assert s.get(ModerationState, victim_id) is None
        kept = decision_history(coll, victim_id)
        assert [(h.action, h.photo_sha256, h.photo_deleted) for h in kept] == \
               [("allow", victim_sha, True), ("quarantine", victim_sha, True)]
        c = ["--collection", str(coll.path)]
        code, out, err = _main(capsys, "decisions", "--id", str(victim_id), "--history", "--json", *c)
        assert code == 0, err
        (entry,) = json.loads(out)
        assert entry["photo_deleted"] and entry["photo_sha256"] == victim_sha and not entry["current"]
        assert [h["action"] for h in entry["history"]] == ["allow", "quarantine"]
        code, out, _ = _main(capsys, "decisions", "--id", str(victim_id), "--history", *c)
        assert code == 0 and "photo deleted" in out and "quarantine" in out
        # a new photo gets the freed id; its history is its own
        write_library(tmp_path / "more", 1, seed=4242)
        index_paths(coll, encoder, [tmp_path / "more"], RunOptions(batch_size=16, workers=0,
                                                                   on_commit=decide_in_session))  # decided at ingest
        with coll.catalog.session() as s:
            newcomer = s.scalar(select(Photo).order_by(Photo.id.desc()).limit(1))
        assert newcomer.id == victim_id and newcomer.sha256 != victim_sha  # SQLite reused the id
        mine = decision_history(coll, victim_id)
        assert [(h.action, h.photo_sha256, h.current) for h in mine] == [("quarantine", newcomer.sha256, True)]
        listed = list_decisions(coll, photo_id=victim_id, history=True)
        assert len(listed) == 1 and [h.photo_sha256 for h in listed[0].history] == [newcomer.sha256]
        with coll.catalog.session() as s:  # the deleted photo's rows are all still stored
            assert s.scalar(select(ModerationDecision.id).where(ModerationDecision.photo_sha256 == victim_sha)
                            .order_by(ModerationDecision.id.desc()).limit(1)) is not None
    finally:
        coll.close()


def test_history_of_an_unknown_id_is_empty(tmp_path):
    from indexer.core.spec import EncoderSpec

    coll = Collection.open_for_encoder(tmp_path / "c", EncoderSpec("x", None, 8))
    try:
        assert decision_history(coll, 12345) == [] and list_decisions(coll, photo_id=12345, history=True) == []
    finally:
        coll.close()
