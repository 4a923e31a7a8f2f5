"""The server's index view (issue 20.1): searches take a ready view; catching up happens off the request path."""

from __future__ import annotations

import threading
from datetime import datetime

import numpy as np
import pytest

from indexer.catalog.models import INDEXED, Embedding, Photo
from indexer.collection import Collection
from indexer.core.spec import EncoderSpec
from indexer.core.vectors import encode_vector
from retrieval.index.loader import IndexLoader
from retrieval.index.state import index_state, index_version
from retrieval.index.store import refresh_index
from retrieval.search.searcher import Searcher, SearchOptions

DIM = 16


class _NoEncoder:
    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec


def _add(coll: Collection, start: int, n: int, seed: int) -> np.ndarray:
    """Commit ``n`` random unit vectors for photo ids ``start + 1 ..``; returns them."""
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with coll.catalog.session() as ses, ses.begin():
        ses.execute(Photo.__table__.insert(), [
            {"id": start + i + 1, "sha256": f"{start + i:064x}", "size": 1, "status": INDEXED,
             "created_at": datetime.now()} for i in range(n)])
        ses.execute(Embedding.__table__.insert(), [{"photo_id": start + i + 1, "vector": encode_vector(x[i])}
                                                   for i in range(n)])
        coll.catalog.bump_generation(ses)
    return x


@pytest.fixture()
def coll(tmp_path):
    c = Collection.open_for_encoder(tmp_path / "coll", EncoderSpec("test-random", None, DIM))
    _add(c, 0, 200, seed=0)
    refresh_index(c)
    yield c
    c.close()


def _search(searcher: Searcher, q: np.ndarray, timeout: float = 10.0, late: list | None = None) -> list[int]:
    """Search on another thread; fail if it does not answer within ``timeout`` seconds (the thread
    still running is appended to ``late``, to be joined)."""
    out: list[list[int]] = []
    t = threading.Thread(target=lambda: out.append([h.id for h in searcher.search_vector(
        q, SearchOptions(k=5, collapse=None))]), daemon=True)
    t.start()
    t.join(timeout)
    if not out and late is not None:
        late.append(t)
    assert out, f"the search did not answer within {timeout} s"
    return out[0]


@pytest.mark.parametrize("view", ["open_index", "loader"])
def test_a_search_never_waits_on_the_writer_or_catches_up(coll, monkeypatch, view):
    """The writer holds the lock and has committed a batch the reader has not read; catalog reads of ids
    and vectors stall (as on a CPU the writer saturates): a search must still answer, from the ready view."""
    loader = IndexLoader(coll, start=False) if view == "loader" else None
    searcher = Searcher(coll, _NoEncoder(coll.spec), index=loader.current if loader else None)
    q = np.eye(DIM, dtype=np.float32)[0]
    _search(searcher, q)  # warm: the view exists
    release = threading.Event()
    stalled: list[str] = []
    late: list[threading.Thread] = []

    def stall(name: str):  # noqa: ANN202
        real = getattr(Collection, name)

        def slow(self, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            stalled.append(name)
            release.wait(30)
            return real(self, *a, **kw)
        return slow

    with coll.writer_lock().acquire(wait=False):
        _add(coll, 200, 50, seed=1)
        monkeypatch.setattr(Collection, "vector_ids", stall("vector_ids"))
        monkeypatch.setattr(Collection, "load_vectors", stall("load_vectors"))
        try:
            if view == "open_index":  # the old path: the search catches up itself, so it waits
                with pytest.raises(AssertionError, match="did not answer"):
                    _search(searcher, q, timeout=1.0, late=late)
            else:
                assert len(_search(searcher, q, timeout=5.0)) == 5
                assert stalled == []  # no catalog read of ids or vectors on the request path
        finally:
            release.set()
            for t in late:
                t.join(30)
    if loader is not None:
        monkeypatch.undo()
        assert loader.refresh().exact_rows == 50  # the loader reads the batch; the next search has it
        loader.close()


def test_the_next_search_uses_the_swapped_in_version(coll):
    loader = IndexLoader(coll, start=False)
    searcher = Searcher(coll, _NoEncoder(coll.spec), index=loader.current)
    old = loader.current()
    assert old.version == index_version(index_state(coll)) and old.exact_rows == 0
    new = _add(coll, 200, 30, seed=2)
    refresh_index(coll, force_rebuild=True)  # a new version, holding the 30 new vectors
    assert loader.current() is old  # nothing is loaded on the request path
    swapped = loader.refresh()
    assert swapped is not old and swapped.version == index_version(index_state(coll)) != old.version
    assert swapped.exact_rows == 0 and len(swapped) == 230  # the new version holds them all: no delta
    assert loader.current() is swapped
    assert _search(searcher, new[3])[0] == 204  # the next search answers from the new version
    assert loader.swaps == 1
    loader.close()


def test_the_background_thread_swaps_in_commits(coll):
    loader = IndexLoader(coll, poll_s=0.02)
    try:
        first = loader.current()
        new = _add(coll, 200, 10, seed=3)
        deadline = threading.Event()
        for _ in range(500):
            if loader.current() is not first:
                break
            deadline.wait(0.01)
        view = loader.current()
        assert view is not first and view.exact_rows == 10
        s, i = view.search(new[7][None, :], 1)
        assert i[0, 0] == 208
    finally:
        loader.close()
