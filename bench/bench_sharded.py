#!/usr/bin/env python
"""Sharded vs one-file search index, through the product's path (``open_index``), at 1 M vectors.

Builds one catalog of ``--n`` clustered unit vectors (rows written directly; no photos, no model)
and two collections on it: ``single`` (``refresh_index``: one index file, what ``choose_index_spec``
picks, IVF4096,SQ8 at 1 M) and ``sharded`` (``refresh_index(shards=S)``: S id-range shard files
sharing one coarse quantizer). Then, in interleaved rounds so that load on this shared machine hits
every variant alike, it times per query (nq=1):

* ``open_index(coll).search(q, k)``: the readers' view, as every search pays it;
* the same with a filter (``allowed_ids`` = every 10th photo: split per shard by range);
* ``Searcher.search_vector`` (open_index + filters + near-duplicate collapse + hydration);
* ``--ab-head``: the one-file path of the *committed* ``retrieval/index/store.py`` (``git show
  HEAD:...``) against the working tree's, on the same single-file collection: the unsharded path must
  not have become slower (ratio ~1.0).

Prints p50/p99 per variant, sharded/single ratios, batch q/s and how many top-k ids agree.

    python bench/bench_sharded.py --n 1000000 --shards 4 --ab-head     # ~10 min on 2 cores
    python bench/bench_sharded.py --n 100000 --shards 2                # quick
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from indexer.catalog.models import INDEXED, Embedding, Photo  # noqa: E402
from indexer.collection import Collection  # noqa: E402
from indexer.core.spec import EncoderSpec  # noqa: E402
from indexer.core.vectors import encode_vector  # noqa: E402
from retrieval.index import store  # noqa: E402
from retrieval.search.searcher import Searcher, SearchOptions  # noqa: E402


class _NoEncoder:
    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec


def fill_catalog(coll: Collection, xb: np.ndarray, batch: int = 10_000) -> None:
    """Photo + embedding rows for every vector (ids 1..n), committed in batches."""
    now = datetime.now()
    for s in range(0, len(xb), batch):
        m = min(batch, len(xb) - s)
        with coll.catalog.session() as ses, ses.begin():
            ses.execute(Photo.__table__.insert(), [
                {"id": s + i + 1, "sha256": f"{s + i:064x}", "size": 1, "status": INDEXED, "created_at": now}
                for i in range(m)])
            ses.execute(Embedding.__table__.insert(), [
                {"photo_id": s + i + 1, "vector": encode_vector(xb[s + i])} for i in range(m)])
            coll.catalog.bump_generation(ses)


def head_store() -> ModuleType | None:
    """The committed ``retrieval/index/store.py`` as a module of the same package (None without git)."""
    try:
        source = subprocess.run(["git", "show", "HEAD:retrieval/index/store.py"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader("retrieval.index._store_head", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "retrieval.index"
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, "HEAD:retrieval/index/store.py", "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def pct(times: list[float]) -> tuple[float, float]:
    ms = np.asarray(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=300, help="distinct queries; each round times all of them")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the variants")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--ab-head", action="store_true", help="also time the committed store.py's one-file path")
    ap.add_argument("--keep", help="build the collections in this folder and keep them (reused if present)")
    args = ap.parse_args()

    import faiss
    from bench_index import make_data

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="photodex-bench-sharded-"))
    spec = EncoderSpec("bench-random", None, args.dim)
    print(f"n={args.n:,} dim={args.dim} shards={args.shards} k={args.k} queries={args.queries} x {args.rounds} "
          f"rounds; cpus={os.cpu_count()} faiss threads={faiss.omp_get_max_threads()} loadavg={os.getloadavg()}")
    t0 = time.perf_counter()
    xb, q = make_data(args.n, args.queries, args.dim, 1000)
    single_dir, sharded_dir = work / "single", work / "sharded"
    fresh = not (single_dir / "manifest.json").exists()
    single = Collection.open_for_encoder(single_dir, spec)
    db_url = f"sqlite:///{single_dir / 'catalog.db'}"
    if fresh:
        fill_catalog(single, xb)
        print(f"catalog of {args.n:,} vectors written in {time.perf_counter() - t0:.1f}s")
    del xb
    sharded = Collection.open_for_encoder(sharded_dir, spec, db_url)  # the same catalog, its own index folder
    t = time.perf_counter()
    one = store.refresh_index(single)
    t_one = time.perf_counter() - t
    t = time.perf_counter()
    many = store.refresh_index(sharded, shards=args.shards)
    t_many = time.perf_counter() - t
    print(f"single: {one['action']} {one['factory']} in {t_one:.1f}s; sharded: {many['action']} "
          f"{many['shards']} x {many['factory']} (sizes {many['counts']}) in {t_many:.1f}s")

    allowed = np.arange(1, args.n + 1, 10, dtype=np.int64)
    head = head_store() if args.ab_head else None
    if args.ab_head and head is None:
        print("--ab-head: git show failed; skipped")
    searchers = {"single": Searcher(single, _NoEncoder(spec)), "sharded": Searcher(sharded, _NoEncoder(spec))}
    colls = {"single": single, "sharded": sharded}
    variants: dict[str, Callable[[np.ndarray], object]] = {}
    for name, coll in colls.items():
        variants[f"{name} open_index+search"] = lambda x, c=coll: store.open_index(c).search(x, args.k)
        variants[f"{name} filtered 10%"] = lambda x, c=coll: store.open_index(c).search(x, args.k, allowed_ids=allowed)
        variants[f"{name} Searcher k=20"] = lambda x, s=searchers[name]: s.search_vector(x[0], SearchOptions(k=20))
    if head is not None:
        variants["single open_index+search (HEAD store.py)"] = lambda x: head.open_index(single).search(x, args.k)
        variants["single filtered 10% (HEAD store.py)"] = lambda x: head.open_index(single).search(
            x, args.k, allowed_ids=allowed)
    for fn in variants.values():  # load every index, warm caches
        for i in range(5):
            fn(q[i:i + 1])
    assert isinstance(store.open_index(sharded).base, store.ShardedIndex)
    assert isinstance(store.open_index(single).base, store.VectorIndex)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            fn = variants[name]
            for i in range(len(q)):
                t = time.perf_counter()
                fn(q[i:i + 1])
                times[name].append(time.perf_counter() - t)
    _, i_one = store.open_index(single).search(q, args.k)
    _, i_many = store.open_index(sharded).search(q, args.k)
    same = float((i_one == i_many).mean())
    qps = {}
    for name, coll in colls.items():
        t = time.perf_counter()
        store.open_index(coll).search(q, args.k)
        qps[name] = len(q) / (time.perf_counter() - t)

    print(f"\nloadavg after: {os.getloadavg()}")
    print("\n| variant | queries | p50 ms | p99 ms |\n|---|---|---|---|")
    stats = {name: pct(t) for name, t in times.items()}
    for name, (p50, p99) in stats.items():
        print(f"| {name} | {len(times[name])} | {p50:.2f} | {p99:.2f} |")
    print("\nratios (sharded / single; >1 = sharded slower):")
    for what in ("open_index+search", "filtered 10%", "Searcher k=20"):
        a, b = stats[f"single {what}"], stats[f"sharded {what}"]
        print(f"  {what:18s} p50 {b[0] / a[0]:.2f}  p99 {b[1] / a[1]:.2f}")
    if head is not None:
        print("ratios (working tree / HEAD store.py, one file; ~1.00 = unchanged):")
        for what in ("open_index+search", "filtered 10%"):
            a, b = stats[f"single {what} (HEAD store.py)"], stats[f"single {what}"]
            print(f"  {what:18s} p50 {b[0] / a[0]:.2f}  p99 {b[1] / a[1]:.2f}")
    print(f"batch of {len(q)} queries: single {qps['single']:.0f} q/s, sharded {qps['sharded']:.0f} q/s "
          f"(ratio {qps['sharded'] / qps['single']:.2f})")
    print(f"same top-{args.k} ids, sharded vs single: {same:.4f} of positions")
    single.close()
    sharded.close()
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
