#!/usr/bin/env python
"""Search latency with near-duplicate collapse on a phone-like library full of bursts.

Builds a collection of ``--bursts`` bursts of 5-20 near-identical shots (cosine ~0.97-0.99 within a
burst) plus ``--singles`` unrelated photos, as unit vectors written straight into the catalog (no
photos, no model), then times ``Searcher.search_vector`` (k=20) for ``--queries`` distinct queries,
each near a random burst, with collapse on and off. Prints p50/p90/p99 and p90/p50 (target: p90 <=
2 x p50 with collapse on).

    python bench/bench_collapse.py
"""

from __future__ import annotations

import argparse
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


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def library(bursts: int, singles: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((bursts, dim)))
    rows = []
    for c in centres:
        size = int(rng.integers(5, 21))
        rows.append(unit(c + 0.15 * rng.standard_normal((size, dim)) / np.sqrt(dim)))  # cosine ~0.99
    rows.append(unit(rng.standard_normal((singles, dim))))
    return np.concatenate(rows), centres


def write(coll: Collection, vecs: np.ndarray) -> None:
    now = datetime.now()
    with coll.catalog.session() as s, s.begin():
        s.execute(Photo.__table__.insert(), [{"id": i + 1, "sha256": f"{i:064x}", "size": 1, "status": INDEXED,
                                              "created_at": now} for i in range(len(vecs))])
        s.execute(Embedding.__table__.insert(), [{"photo_id": i + 1, "vector": encode_vector(v)}
                                                 for i, v in enumerate(vecs)])
        coll.catalog.bump_generation(s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bursts", type=int, default=400)
    p.add_argument("--singles", type=int, default=2000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3, help="passes over the queries (first pass is warm-up)")
    args = p.parse_args()
    vecs, centres = library(args.bursts, args.singles, args.dim, seed=0)
    root = Path(tempfile.mkdtemp(prefix="photodex-collapse-"))
    spec = EncoderSpec("bench-bursts", None, args.dim)
    coll = Collection.open_for_encoder(root / "coll", spec)
    write(coll, vecs)
    refresh_index(coll)
    rng = np.random.default_rng(1)
    picks = rng.choice(len(centres), args.queries, replace=False)
    queries = unit(centres[picks] + 0.9 * rng.standard_normal((args.queries, args.dim)) / np.sqrt(args.dim))
    searcher = Searcher(coll, _NoEncoder(spec))
    to_centre = float(np.mean(np.max(vecs[:-args.singles] @ centres.T, axis=1)))
    print(f"{len(vecs):,} photos: {args.bursts} bursts of 5-20 + {args.singles} singles; "
          f"mean cosine of a burst shot to its burst centre {to_centre:.3f}")
    results = {}
    for label, collapse in (("collapse on", 0.95), ("collapse off", None)):
        times, groups = [], []
        for rep in range(args.repeats):
            for q in queries:
                t0 = time.perf_counter()
                hits = searcher.search_vector(q, SearchOptions(k=20, collapse=collapse))
                if rep:
                    times.append(time.perf_counter() - t0)
                    groups.append(sum(len(h.duplicates) for h in hits))
        results[label] = np.asarray(times) * 1e3
        print(f"{label:12s} p50 {np.percentile(results[label], 50):6.2f} ms  p90 "
              f"{np.percentile(results[label], 90):6.2f} ms  p99 {np.percentile(results[label], 99):6.2f} ms  "
              f"p90/p50 {np.percentile(results[label], 90) / np.percentile(results[label], 50):.2f}  "
              f"near-duplicates folded per query {np.mean(groups):.1f}")
    on, off = results["collapse on"], results["collapse off"]
    ratio = np.percentile(on, 90) / np.percentile(on, 50)
    print(f"collapse on: p90/p50 {ratio:.2f} ({'meets' if ratio <= 2 else 'misses'} target 2.0); "
          f"p50 on/off {np.percentile(on, 50) / np.percentile(off, 50):.2f}")
    coll.close()


if __name__ == "__main__":
    main()
