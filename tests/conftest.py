"""Shared fixtures: offline environment, user state in temp dirs, and the test worlds, each built once a session.

The worlds (``ui.demo``): the trained tiny CLIP and VLM of ``tests/assets``, a noise-photo tiny CLIP built
in-process, and synthetic-world collections indexed with the tiny CLIP. A world collection is shared by every test
that reads it (``world_of(n, seed)``; the suite uses ``WORLD`` and ``LARGE_WORLD``); a test that changes a
collection works on ``world.copy(tmp_path / ...)``; ``world`` and ``large_world`` are the two the suite reads. After each test module the shared worlds are checked to be as
built: a module that changed one fails there, naming it.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import LARGE_WORLD, WORLD, save_tiny_clip
from ui.demo.collection import WorldCollection, build_world_collection
from ui.demo.world import WorldSample, write_library

PG_ADMIN_URL = os.environ.get("PHOTODEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ASSETS = Path(__file__).resolve().parent / "assets"
TINY_CLIP_DIR = ASSETS / "tiny_clip"
TINY_VLM_DIR = ASSETS / "tiny_vlm"
LIBRARY_SEED = 2024
LIBRARY_SIZE = 120


@pytest.fixture(scope="session", autouse=True)
def _offline_session(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No hub look-ups for the whole session (session fixtures load models too), and no writes to the real
    user cache from module or session fixtures (tests get their own through ``_isolated_user_state``)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("session-cache")))
        # CLI index runs export the text tower before they return, so no test leaves an export process behind
        # (tests/test_text_tower_job.py drives the default background export explicitly)
        mp.setenv("PHOTODEX_TEXT_TOWER_EXPORT", "inline")
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
    monkeypatch.setenv("PHOTODEX_TEXT_TOWER_EXPORT", "inline")
    for name in ("PHOTODEX_MODEL", "PHOTODEX_PRETRAINED", "PHOTODEX_DATABASE_URL", "PHOTODEX_DEVICE"):
        monkeypatch.delenv(name, raising=False)


# ---- tiny models --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(local-dir folder, bare weights file) of a seeded random tiny CLIP."""
    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny_clip")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip: tuple[Path, Path]):
    from indexer.encode.encoders import load_encoder

    return load_encoder("local-dir:" + str(tiny_clip[0]), device="cpu")


@pytest.fixture(scope="session")
def world_tiny_clip_dir() -> Path:
    """open_clip local-dir folder of the trained tiny CLIP (``"local-dir:" + str(path)``)."""
    if not (TINY_CLIP_DIR / "open_clip_config.json").is_file():
        pytest.skip(f"tiny CLIP missing; run: python -m tests.world.train_clip --out {TINY_CLIP_DIR}")
    return TINY_CLIP_DIR


@pytest.fixture(scope="session")
def world_tiny_vlm_dir() -> Path:
    """``save_pretrained`` folder of the trained tiny LLaVA-style VLM."""
    if not (TINY_VLM_DIR / "config.json").is_file():
        pytest.skip(f"tiny VLM missing; run: python -m tests.world.train_vlm --out {TINY_VLM_DIR}")
    return TINY_VLM_DIR


@pytest.fixture(scope="session")
def world_encoder(world_tiny_clip_dir: Path):
    """The trained tiny CLIP loaded on the CPU, once."""
    from indexer.encode.encoders import load_encoder

    return load_encoder("local-dir:" + str(world_tiny_clip_dir), device="cpu")


@pytest.fixture(scope="session")
def vlm(world_tiny_vlm_dir: Path):
    """The trained tiny VLM loaded on the CPU (at most two torch threads), once. Tests that change its state
    put it back (``reset_preprocessor()``, monkeypatch)."""
    import torch

    from answerer.vlm import VLM

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return VLM(str(world_tiny_vlm_dir), device="cpu").load()


# ---- the synthetic world ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def world_library(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, WorldSample]]:
    """A small photo library (``LIBRARY_SIZE`` jpg/png files in nested folders) with ground truth."""
    root = tmp_path_factory.mktemp("world_library")
    return write_library(root, LIBRARY_SIZE, LIBRARY_SEED)


def _fingerprint(world: WorldCollection) -> str:
    """What a reader must leave as it was: every row of the catalog, and each library file's name, size and mtime."""
    digest = hashlib.sha256()
    conn = sqlite3.connect(f"file:{world.path / 'catalog.db'}?mode=ro", uri=True)
    try:
        for line in conn.iterdump():
            digest.update(line.encode())
    finally:
        conn.close()
    for path in sorted(world.library.rglob("*")):
        st = path.stat()
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


class _Worlds:
    """The world collections of this session, built on first use."""

    def __init__(self, root: Path, encoder: Any) -> None:
        self.root, self.encoder = root, encoder
        self.built: dict[tuple[int, int], tuple[WorldCollection, str]] = {}

    def get(self, n: int, seed: int) -> WorldCollection:
        if (n, seed) not in self.built:
            world = build_world_collection(self.root / f"world-{n}-{seed}", n=n, seed=seed, encoder=self.encoder)
            self.built[(n, seed)] = (world, _fingerprint(world))
        return self.built[(n, seed)][0]

    def changed(self) -> list[str]:
        return [f"world_of{key}" for key, (world, print_) in self.built.items() if _fingerprint(world) != print_]


_SESSION_WORLDS: list[_Worlds] = []  # the session's _Worlds once made (the module check looks here)


@pytest.fixture(scope="session")
def _worlds(tmp_path_factory: pytest.TempPathFactory, world_encoder) -> _Worlds:
    worlds = _Worlds(tmp_path_factory.mktemp("worlds"), world_encoder)
    _SESSION_WORLDS.append(worlds)
    yield worlds
    _SESSION_WORLDS.remove(worlds)


@pytest.fixture(scope="session")
def world_of(_worlds: _Worlds) -> Callable[[int, int], WorldCollection]:
    """``world_of(n, seed)``: the ``n``-photo world collection of ``seed``, indexed with the trained tiny CLIP,
    built once a session and shared: read it, or change a ``.copy(tmp_path / "coll")`` of it."""
    return _worlds.get


@pytest.fixture(scope="session")
def world(world_of) -> WorldCollection:
    """The shared ``WORLD`` collection (read it; change a ``world.copy(...)``)."""
    return world_of(*WORLD)


@pytest.fixture(scope="session")
def large_world(world_of) -> WorldCollection:
    """The shared ``LARGE_WORLD`` collection (read it; change a ``large_world.copy(...)``)."""
    return world_of(*LARGE_WORLD)


@pytest.fixture(autouse=True, scope="module")
def _shared_worlds_stay_as_built(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    changed = [name for worlds in _SESSION_WORLDS for name in worlds.changed()]
    assert not changed, (f"{request.module.__name__} changed the shared {', '.join(changed)}: "
                         "change a world.copy(tmp_path / ...) instead")


# ---- the API ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def api_client() -> Callable[..., Any]:
    """``with api_client(settings, encoder) as client:`` a TestClient of ``create_app(settings)`` with its
    lifespan running, the encoder given instead of loaded, server errors answered as 500s (never raised)."""
    from fastapi.testclient import TestClient

    from ui.api.app import create_app

    @contextmanager
    def make(settings: Any, encoder: Any = None, *, raise_server_exceptions: bool = False, **app_kw: Any):
        loader = (lambda s: encoder) if encoder is not None else None
        app = create_app(settings, **({"encoder_loader": loader} if loader else {}), **app_kw)
        with TestClient(app, raise_server_exceptions=raise_server_exceptions) as client:
            yield client

    return make


# ---- PostgreSQL ---------------------------------------------------------------------------------------------

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
