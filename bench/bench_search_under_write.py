#!/usr/bin/env python
"""Search latency while the collection is written: idle vs during an index run vs during a rebuild.

Builds a collection of ``--n`` random unit vectors (catalog rows written directly; no photos, no
model), refreshes its index file, then measures ``Searcher.search_vector`` latency (open_index +
search + collapse + hydration, as every search pays) in this process while another process
(1) adds 10 % new vectors in committed batches and refreshes the index, as an index run does, and
(2) forces a full rebuild, as ``photodex reindex --force`` does. Prints p50/p99 per phase and the
ratio to idle (target p99 <= 2x idle).

    python bench/bench_search_under_write.py            # 100k x 512-d (IVF-SQ8)
    python bench/bench_search_under_write.py --n 20000  # Flat
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.catalog.models import INDEXED, Embedding, Photo  # noqa: E402
from indexer.collection import Collection  # noqa: E402
from indexer.core.spec import EncoderSpec  # noqa: E402
from indexer.core.vectors import encode_vector  # noqa: E402
from retrieval.index.store import refresh_index  # noqa: E402
from retrieval.search.searcher import Searcher, SearchOptions  # noqa: E402


class _NoEncoder:
    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec


def add_vectors(coll: Collection, start: int, n: int, dim: int, seed: int, batch: int = 5000) -> None:
    rng = np.random.default_rng(seed)
    now = datetime.now()
    for s in range(start, start + n, batch):
        m = min(batch, start + n - s)
        x = rng.standard_normal((m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        with coll.catalog.session() as ses, ses.begin():
            ses.execute(Photo.__table__.insert(), [
                {"id": s + i + 1, "sha256": f"{s + i:064x}", "size": 1, "status": INDEXED, "created_at": now}
                for i in range(m)])
            ses.execute(Embedding.__table__.insert(), [
                {"photo_id": s + i + 1, "vector": encode_vector(x[i])} for i in range(m)])
            coll.catalog.bump_generation(ses)


def writer(path: str, phase: str, n: int, dim: int, done: mp.Event) -> None:
    with Collection.open(path) as coll, coll.writer_lock().acquire(wait=True):
        if phase == "index run":
            add_vectors(coll, n, n // 10, dim, seed=1)
            refresh_index(coll)
        else:
            refresh_index(coll, force_rebuild=True)
    done.set()


def measure(searcher: Searcher, queries: np.ndarray, until: mp.Event | None, min_queries: int) -> list[float]:
    times: list[float] = []
    i = 0
    while (until is None and i < min_queries) or (until is not None and (not until.is_set() or i < min_queries)):
        t0 = time.perf_counter()
        hits = searcher.search_vector(queries[i % len(queries)], SearchOptions(k=20))
        times.append(time.perf_counter() - t0)
        assert len(hits) == 20
        i += 1
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200, help="queries in the idle phase (and at least per phase)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="photodex-bench-"))
    spec = EncoderSpec("bench-random", None, args.dim)
    coll = Collection.open_for_encoder(root / "coll", spec)
    t0 = time.perf_counter()
    add_vectors(coll, 0, args.n, args.dim, seed=0)
    state = refresh_index(coll)
    print(f"collection of {args.n:,} x {args.dim}-d built in {time.perf_counter() - t0:.1f}s; index {state['factory']}")
    rng = np.random.default_rng(7)
    queries = rng.standard_normal((64, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    searcher = Searcher(coll, _NoEncoder(spec))
    measure(searcher, queries, None, 20)  # warm: index loaded, caches filled
    results = {"idle": measure(searcher, queries, None, args.queries)}
    ctx = mp.get_context("spawn")
    for phase in ("index run", "rebuild"):
        done = ctx.Event()
        proc = ctx.Process(target=writer, args=(str(root / "coll"), phase, args.n, args.dim, done))
        proc.start()
        results[phase] = measure(searcher, queries, done, 20)
        proc.join()
    idle_p50, idle_p99 = (np.percentile(results["idle"], q) * 1e3 for q in (50, 99))
    print(f"{'phase':10s} {'queries':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99/idle':>9s}")
    for phase, t in results.items():
        p50, p99 = (np.percentile(t, q) * 1e3 for q in (50, 99))
        print(f"{phase:10s} {len(t):8d} {p50:8.2f} {p99:8.2f} {p99 / idle_p99:9.2f}")
    worst = max(np.percentile(t, 99) * 1e3 for t in results.values()) / idle_p99
    print(f"worst p99 / idle p99: {worst:.2f} ({'meets' if worst <= 2 else 'misses'} target 2.0)")
    coll.close()


if __name__ == "__main__":
    main()
