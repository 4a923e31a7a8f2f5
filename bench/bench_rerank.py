#!/usr/bin/env python
"""Precision@10 of text search with and without VLM re-ranking on the synthetic world.

Indexes a generated library with the trained tiny CLIP (tests/assets/tiny_clip), then for
queries CLIP is known to get wrong — counts ("three red circles") and left/right ("a red circle
on the left") — compares precision@10 of the CLIP order with the order after
``answerer.rerank.rerank`` (tiny VLM, tests/assets/tiny_vlm, top ``--rerank-k`` candidates).
A result is relevant when colour, shape, count (and position, when asked) all match.

    python bench/bench_rerank.py                   # 600 photos, rerank-k 50, weight 0.5
    python bench/bench_rerank.py --weight 1.0 --template "is there {query}?"

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NUMBERS = {"two": 2, "three": 3}


def queries() -> list[tuple[str, str, dict]]:
    """(kind, query, wanted attributes)."""
    out = []
    for colour, shape in (("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle")):
        for word, n in NUMBERS.items():
            out.append(("count", f"{word} {colour} {shape}s", {"colour": colour, "shape": shape, "count": n}))
        for side in ("left", "right"):
            out.append(("position", f"a {colour} {shape} on the {side}",
                        {"colour": colour, "shape": shape, "count": 1, "position": side}))
    return out


def relevant(sample, wanted: dict) -> bool:
    return all(getattr(sample, k) == v for k, v in wanted.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--rerank-k", type=int, default=50)
    parser.add_argument("--weight", type=float, default=0.5)
    parser.add_argument("--template", default="is there {query}?",
                        help="the tiny VLM only knows the world's words: 'does'/'show' would be <unk>")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)

    import torch

    torch.set_num_threads(args.threads)
    from answerer.rerank import rerank
    from answerer.vlm import VLM
    from retrieval.search.searcher import Searcher, SearchOptions
    from ui.demo.collection import build_world_collection

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        world = build_world_collection(Path(tmp), ROOT / "tests/assets/tiny_clip", n=args.n, seed=args.seed)
        print(f"indexed {args.n} photos in {time.perf_counter() - t0:.1f}s")
        vlm = VLM(str(ROOT / "tests/assets/tiny_vlm"), device="cpu").load()
        coll = world.open()
        searcher = Searcher(coll, world.encoder)
        opts = SearchOptions(k=10, collapse=None)
        by_kind: dict[str, list[tuple[float, float]]] = {}
        t_rerank = 0.0
        print(f"{'query':34s} {'#rel':>4s} {'P@10 clip':>9s} {'P@10 rerank':>11s}")
        for kind, query, wanted in queries():
            n_rel = sum(relevant(s, wanted) for s in world.truth.values())
            clip = searcher.search_text(query, opts)
            t = time.perf_counter()
            ranked = rerank(searcher, vlm, query, opts, rerank_k=args.rerank_k, weight=args.weight,
                            template=args.template)
            t_rerank += time.perf_counter() - t
            denom = min(10, n_rel) or 1
            p_clip = sum(relevant(world.truth[h.paths[0]], wanted) for h in clip) / denom
            p_rr = sum(relevant(world.truth[h.paths[0]], wanted) for h in ranked) / denom
            by_kind.setdefault(kind, []).append((p_clip, p_rr))
            print(f"{query:34s} {n_rel:4d} {p_clip:9.2f} {p_rr:11.2f}")
        coll.close()
    n_q = sum(len(v) for v in by_kind.values())
    for kind, rows in by_kind.items():
        print(f"{kind:9s} mean precision@10 (of min(10, #relevant)): clip {sum(r[0] for r in rows) / len(rows):.3f}"
              f"  rerank {sum(r[1] for r in rows) / len(rows):.3f}")
    print(f"re-rank cost: {t_rerank / n_q:.2f}s per query ({args.rerank_k} candidates, CPU, {args.threads} threads)")


if __name__ == "__main__":
    main()
