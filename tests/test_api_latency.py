"""Issue 20.4: routes that need no encoder never queue behind encoder work."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from tests.helpers import SMALL_WORLD
from ui.settings import Settings
from ui.api.app import create_app

API = "/api/v1"
SEARCHERS = 60  # more than the default thread pool's 40 threads


class GatedEncoder:
    """The world's encoder, with text encoding held at a gate (a model busy with a long batch)."""

    def __init__(self, encoder) -> None:  # noqa: ANN001
        self._encoder = encoder
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = 0

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._encoder, name)

    def encode_texts(self, texts):  # noqa: ANN001, ANN201
        self.waiting += 1
        self.gate.wait(120)
        return self._encoder.encode_texts(texts)


@pytest.fixture(scope="module")
def world(world_of, tmp_path_factory):
    """A copy of the small shared world: a running server marks the collection it serves."""
    return world_of(*SMALL_WORLD).copy(tmp_path_factory.mktemp("latency_api") / "collection")


def test_photo_metadata_answers_while_many_searches_wait_on_the_encoder(world):
    gated = GatedEncoder(world.encoder)
    app = create_app(Settings(collection=world.path), encoder_loader=lambda s: gated)
    with TestClient(app, raise_server_exceptions=False) as client:
        gated.gate.clear()
        with ThreadPoolExecutor(SEARCHERS) as pool:
            searches = [pool.submit(client.post, f"{API}/search", json={"text": f"a photo number {i}", "k": 3})
                        for i in range(SEARCHERS)]
            deadline = time.monotonic() + 60
            while gated.waiting < 1 and time.monotonic() < deadline:  # the model is busy; the rest queue
                time.sleep(0.05)
            time.sleep(1.0)  # let the other searches take whatever threads they take
            try:
                got: list = []
                probe = threading.Thread(target=lambda: got.extend(
                    [client.get(f"{API}/photos/1"), client.get(f"{API}/healthz"), client.get(f"{API}/decisions")]),
                    daemon=True)
                probe.start()
                probe.join(15)
                assert got, "GET /photos/1 queued behind the searches waiting on the encoder"
                assert [r.status_code for r in got] == [200, 200, 200]
            finally:
                gated.gate.set()
            assert [f.result(120).status_code for f in searches] == [200] * SEARCHERS


def test_a_running_server_marks_its_collection_as_served(world):
    from indexer.priority import is_served

    app = create_app(Settings(collection=world.path), encoder_loader=lambda s: world.encoder)
    assert not is_served(world.path)
    with TestClient(app):
        assert is_served(world.path)  # index runs on it now lower their priority
    assert not is_served(world.path)
