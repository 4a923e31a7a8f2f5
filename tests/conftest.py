"""Shared fixtures: offline environment, user state in temp dirs, tiny models built in-process."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.helpers import save_tiny_clip  # noqa: E402

PG_ADMIN_URL = os.environ.get("PHOTODEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session", autouse=True)
def _offline_session() -> None:
    """No hub look-ups for the whole session (session fixtures load models too)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="session", autouse=True)
def _shared_precision_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One precision probe per encoder for the whole session (each test's own XDG cache would re-probe and
    re-export the tiny models every time); tests of the probe itself point it at their own folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHOTODEX_PRECISION_CACHE", str(tmp_path_factory.mktemp("precision-cache")))
        yield


@pytest.fixture(autouse=True)
def _isolated_user_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("PHOTODEX_COLLECTION", str(tmp_path / "default-collection"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("PHOTODEX_MODEL", "PHOTODEX_PRETRAINED", "PHOTODEX_DATABASE_URL", "PHOTODEX_DEVICE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(local-dir folder, bare weights file) of a seeded random tiny CLIP."""
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny_clip")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip: tuple[Path, Path]):
    from indexer.encoders import load_encoder

    return load_encoder("local-dir:" + str(tiny_clip[0]), device="cpu")


@pytest.fixture()
def pg_database_url() -> str:
    """A fresh database of this test's own on the local PostgreSQL server, dropped after it."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"photodex_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001
        if os.environ.get("CI"):
            raise  # CI must test PostgreSQL for real; never skip silently there
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


from tests.world.fixtures import vlm, world_library, world_tiny_clip_dir, world_tiny_vlm_dir  # noqa: E402,F401


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests need CUDA; ``weights`` tests need PHOTODEX_TEST_WEIGHTS (never downloaded)."""
    import torch

    no_gpu = pytest.mark.skip(reason="no CUDA GPU on this machine")
    no_weights = pytest.mark.skip(reason="set PHOTODEX_TEST_WEIGHTS=MODEL:PATH (and PHOTODEX_TEST_IMAGEFOLDER) to run")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "weights" in item.keywords and not os.environ.get("PHOTODEX_TEST_WEIGHTS"):
            item.add_marker(no_weights)
