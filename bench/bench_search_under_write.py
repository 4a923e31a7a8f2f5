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
    python bench/bench_search_under_write.py --profile  # + where the slow searches' time went

``--profile`` times the steps of every search (inclusive wall times of open_index and the
catalog reads, index loads and array work inside it; the search, filters, collapse and
hydration) and prints, per phase, the mean of each step over the searches slower than twice
the idle p99, next to its mean over all searches of the phase.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing as mp
import pstats
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


def writer(path: str, phase: str, start: int, n: int, dim: int, nice: int | None, done: mp.Event,
           seconds: mp.Value) -> None:
    from indexer.priority import yield_cpu

    with Collection.open(path) as coll, coll.writer_lock().acquire(wait=True):
        t0 = time.perf_counter()
        yield_cpu(coll.path, nice)  # as `photodex index` / `reindex` do when a server holds the collection
        if phase == "index run":
            add_vectors(coll, start, n // 10, dim, seed=1 + start)
            refresh_index(coll)
        else:
            refresh_index(coll, force_rebuild=True)
        seconds.value = time.perf_counter() - t0
    done.set()


class Profile:
    """Inclusive wall time per step of the current search (functions wrapped in place)."""

    STEPS = (  # (module or class, attribute, label)
        ("retrieval.index.store", "open_index", "open_index"),
        ("indexer.collection:Collection", "generation", "  generation query"),
        ("retrieval.index.store", "index_state", "  state.json read"),
        ("indexer.collection:Collection", "vector_ids", "  vector_ids query"),
        ("indexer.collection:Collection", "load_vectors", "  load_vectors (delta)"),
        ("retrieval.index.store", "load_base", "  load_base (sync index load)"),
        ("retrieval.index.store:SearchableIndex", "__post_init__", "  SearchableIndex ids (union)"),
        ("retrieval.search.searcher:Searcher", "_allowed", "filters + hidden ids"),
        ("retrieval.index.store:SearchableIndex", "search", "index search"),
        ("retrieval.search.searcher:Searcher", "_collapse", "collapse"),
        ("retrieval.search.searcher:Searcher", "_hydrate", "hydrate"),
    )

    def __init__(self) -> None:
        import importlib
        import threading

        self.current: dict[str, float] | None = None
        self.slowest: cProfile.Profile | None = None
        self.main = threading.get_ident()
        for target, attr, label in self.STEPS:
            mod_name, _, cls_name = target.partition(":")
            owner = importlib.import_module(mod_name)
            if cls_name:
                owner = getattr(owner, cls_name)
            setattr(owner, attr, self._wrap(getattr(owner, attr), label))
        if "retrieval.search.searcher" in sys.modules:  # open_index imported by name there
            import retrieval.index.store as store
            import retrieval.search.searcher as searcher_mod
            searcher_mod.open_index = store.open_index

    def _wrap(self, fn, label: str):  # noqa: ANN001, ANN202
        import functools
        import threading

        @functools.wraps(fn)
        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if self.current is None or threading.get_ident() != self.main:
                return fn(*args, **kwargs)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[label] = self.current.get(label, 0.0) + time.perf_counter() - t0
        return timed

    def report(self, phase: str, times: list[float], steps: list[dict[str, float]], slow_s: float) -> None:
        slow = [s for t, s in zip(times, steps) if t > slow_s]
        print(f"  {phase}: {len(slow)} of {len(times)} searches over {slow_s * 1e3:.1f} ms "
              f"(mean {np.mean([t for t in times if t > slow_s] or [0]) * 1e3:.1f} ms)")
        for _, _, label in self.STEPS:
            every = np.mean([s.get(label, 0.0) for s in steps]) * 1e3
            over = np.mean([s.get(label, 0.0) for s in slow]) * 1e3 if slow else 0.0
            print(f"    {label:34s} slow mean {over:8.2f} ms   all mean {every:7.2f} ms")
        if self.slowest is not None:
            print(f"    cProfile of the slowest ({max(times) * 1e3:.1f} ms), by own time:")
            out = io.StringIO()
            pstats.Stats(self.slowest, stream=out).sort_stats("tottime").print_stats(12)
            print("\n".join("      " + ln for ln in out.getvalue().splitlines() if ln.strip()))


PROFILE: Profile | None = None
STEPS: list[dict[str, float]] = []


def measure(searcher: Searcher, queries: np.ndarray, until: mp.Event | None, min_queries: int) -> list[float]:
    times: list[float] = []
    i = 0
    STEPS.clear()
    while (until is None and i < min_queries) or (until is not None and (not until.is_set() or i < min_queries)):
        prof = None
        if PROFILE is not None:
            PROFILE.current = {}
            prof = cProfile.Profile()
            prof.enable()
        t0 = time.perf_counter()
        hits = searcher.search_vector(queries[i % len(queries)], SearchOptions(k=20))
        times.append(time.perf_counter() - t0)
        if PROFILE is not None:
            prof.disable()
            STEPS.append(PROFILE.current)
            PROFILE.current = None
            if times[-1] >= max(times):
                PROFILE.slowest = prof
        assert len(hits) == 20
        i += 1
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200, help="queries in the idle phase (and at least per phase)")
    p.add_argument("--profile", action="store_true", help="time each step of every search (see above)")
    p.add_argument("--reader", choices=("loader", "open_index"), default="loader",
                   help="loader: searches take IndexLoader's ready view, as `photodex serve` does (default); "
                        "open_index: each search catches up itself, as a one-shot CLI search does")
    p.add_argument("--runs", type=int, default=1, help="repeat the three phases; the best run's ratios are the result")
    p.add_argument("--writer-nice", default="auto",
                   help="the writer's --nice: auto (10, since this process holds the collection as a server "
                        "does), or a number (0: no yielding)")
    p.add_argument("--search-threads", type=int, default=1,
                   help="faiss OpenMP threads of the searching thread, and numpy BLAS threads 1 (loader only; "
                        "0: the libraries' defaults)")
    args = p.parse_args()
    global PROFILE
    if args.profile:
        PROFILE = Profile()
    steps: dict[str, list[dict[str, float]]] = {}
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
    loader = None
    if args.reader == "loader":
        from retrieval.index.loader import IndexLoader, one_blas_thread

        if args.search_threads:
            one_blas_thread()  # as `photodex serve` does
        loader = IndexLoader(coll, search_threads=args.search_threads or None)
    searcher = Searcher(coll, _NoEncoder(spec), index=loader.current if loader else None)
    print(f"reader: {args.reader}" + (f", {args.search_threads or 'default'} faiss thread(s) per search"
                                       if loader else ""))
    from indexer.priority import ServingMark

    mark = ServingMark(root / "coll")  # this process serves the collection, as `photodex serve` does
    nice = None if args.writer_nice == "auto" else int(args.writer_nice)
    import os

    print(f"writer nice: {args.writer_nice}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    measure(searcher, queries, None, 20)  # warm: index loaded, caches filled
    ctx = mp.get_context("spawn")
    worst_of_runs: list[float] = []
    added = args.n
    for run in range(args.runs):
        results = {"idle": measure(searcher, queries, None, args.queries)}
        steps = {"idle": list(STEPS)}
        slowest = {"idle": PROFILE.slowest if PROFILE is not None else None}
        writer_s: dict[str, float] = {}
        for phase in ("index run", "rebuild"):
            done, secs = ctx.Event(), ctx.Value("d", 0.0)
            proc = ctx.Process(target=writer, args=(str(root / "coll"), phase, added, args.n, args.dim, nice, done,
                                                    secs))
            proc.start()
            results[phase] = measure(searcher, queries, done, 20)
            steps[phase] = list(STEPS)
            proc.join()
            writer_s[phase] = secs.value
            if phase == "index run":
                added += args.n // 10
            if PROFILE is not None:
                slowest[phase], PROFILE.slowest = PROFILE.slowest, None
        idle_p50, idle_p99 = (np.percentile(results["idle"], q) * 1e3 for q in (50, 99))
        print(f"run {run + 1} of {args.runs} (load average {os.getloadavg()[0]:.2f}):")
        print(f"{'phase':10s} {'queries':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'p99/idle':>9s} {'writer s':>9s}")
        for phase, t in results.items():
            p50, p99 = (np.percentile(t, q) * 1e3 for q in (50, 99))
            w = f"{writer_s[phase]:9.2f}" if phase in writer_s else f"{'':9s}"
            print(f"{phase:10s} {len(t):8d} {p50:8.2f} {p99:8.2f} {p99 / idle_p99:9.2f} {w}")
        worst = max(np.percentile(t, 99) * 1e3 for t in results.values()) / idle_p99
        worst_of_runs.append(worst)
        print(f"worst p99 / idle p99: {worst:.2f} ({'meets' if worst <= 2 else 'misses'} target 2.0)")
        if PROFILE is not None:
            print("where the time went (inclusive wall times per search; indented steps are inside open_index):")
            for phase, t in results.items():
                PROFILE.slowest = slowest[phase]
                PROFILE.report(phase, t, steps[phase], 2 * idle_p99 / 1e3)
    if args.runs > 1:
        best = min(worst_of_runs)
        print(f"best of {args.runs} runs: worst p99 / idle p99 {best:.2f} ({'meets' if best <= 2 else 'misses'} "
              f"target 2.0); runs: {', '.join(f'{w:.2f}' for w in worst_of_runs)}")
    mark.close()
    if loader is not None:
        loader.close()
    coll.close()


if __name__ == "__main__":
    main()
