#!/usr/bin/env python
"""Re-evaluating a whole collection under a moderation policy, from stored vectors (no model).

Builds a collection of ``--n`` random unit vectors written straight into the catalog as float16
(no photos, no model; ``EncoderSpec("bench-moderation", None, dim)``) and stores a 10-concept policy
whose prompt vectors are random unit vectors (``save_policy(..., weights=...)``: 2 positive prompt
ensembles per concept, plus one contrast ensemble for 3 of them: 23 prompt rows; one special-care
concept). Thresholds are set from the score distribution so that each concept hits ~0.5 % of photos.

Then, timing :func:`retrieval.moderation.rescan.rescan` end to end:

1. dry run of version 1 on a collection with no decisions yet (every photo "changes"),
2. first real run of version 1 (writes a decision for every photo),
3. the same version again, real run: nothing changes (the fixed cost: load the stored scores, decide, compare),
4. a new version (``with_thresholds`` + ``save_policy``) whose thresholds make ~0.1 % of the
   decisions change, real run; then one that makes ~10 % change, real run (and its dry run),
6. the same version again (0 change),
7. a version where one concept's prompt (so its prompt vector) changed: every photo is scored from its
   stored vector, and the real run stores the fresh scores (dry and real run),
8. a threshold change right after it (re-decided from stored scores again).

Scoring efficiency: the time of ``CompiledPolicy.scores`` + ``decide_scores`` on the in-memory
vectors, chunk by chunk as ``rescan`` does, against a plain ``x @ W.T`` of the same shape, each the
fastest of 3 interleaved repeats per chunk; the ratio matmul / scoring is reported (target >= 0.7).
The time ``rescan`` spends inside scoring is also measured (the methods are wrapped with timers,
nothing is changed). The "from vectors" column counts photos scored from their stored vectors;
the others were re-decided from the scores stored with their current decision.

    python bench/bench_moderation.py                 # 1M x 512-d
    python bench/bench_moderation.py --n 100000
"""

from __future__ import annotations

import argparse
import os
import shutil
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
from indexer.core.vectors import VECTOR_DTYPE, l2_normalize  # noqa: E402
from retrieval.moderation.decide import CompiledPolicy  # noqa: E402
from retrieval.moderation.policy import parse_policy  # noqa: E402
from retrieval.moderation.rescan import rescan, with_thresholds  # noqa: E402
from retrieval.moderation.store import save_policy  # noqa: E402

CONCEPTS = ["sexual", "nudity", "gore", "violence", "weapons", "drugs", "self-harm", "hate symbols",
            "skull", "blood"]
ACTIONS = ["block", "quarantine", "quarantine", "flag", "flag", "flag", "quarantine", "block", "flag", "flag"]
CONTRAST = {2, 4, 8}  # concepts with a contrast ensemble
SPECIAL = 0  # the special-care concept


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def build(coll: Collection, n: int, dim: int, seed: int, batch: int = 10000) -> np.ndarray:
    """Write n random unit float16 vectors; returns them as ``decode_vectors`` returns them."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    now = datetime.now()
    for start in range(0, n, batch):
        m = min(batch, n - start)
        x = unit(rng.standard_normal((m, dim), dtype=np.float32)).astype(VECTOR_DTYPE)
        out[start:start + m] = l2_normalize(x.astype(np.float32))  # what decode_vectors yields
        with coll.catalog.session() as s, s.begin():
            s.execute(Photo.__table__.insert(), [
                {"id": start + i + 1, "sha256": f"{start + i:064x}", "size": 1, "status": INDEXED, "created_at": now}
                for i in range(m)])
            s.execute(Embedding.__table__.insert(), [
                {"photo_id": start + i + 1, "vector": x[i].tobytes()} for i in range(m)])
            coll.catalog.bump_generation(s)
    return out


def make_policy(weights: np.ndarray, thresholds: list[float]) -> dict:
    concepts = []
    for j, name in enumerate(CONCEPTS):
        concepts.append({"name": name, "prompts": [f"a photo of {name}", f"an image showing {name}"],
                         "contrast": [f"a photo of something other than {name}"] if j in CONTRAST else [],
                         "threshold": thresholds[j], "action": ACTIONS[j], "special_care": j == SPECIAL})
    return {"name": "bench", "concepts": concepts, "special_care_adjustment": 0.01}


def chunked_scoring(compiled: CompiledPolicy, vecs: np.ndarray, chunk: int,
                    repeats: int = 3) -> tuple[float, float, np.ndarray]:
    """(scoring seconds, plain matmul seconds, (n, C) scores), chunk by chunk.

    Each chunk is scored and multiplied ``repeats`` times, interleaved, and the fastest time of each
    side counts: on a shared machine a single pass mostly measures the neighbours."""
    t_score = t_mm = 0.0
    scores = np.empty((len(vecs), len(compiled.names)), np.float32)
    wt = compiled.weights.T
    for start in range(0, len(vecs), chunk):
        x = vecs[start:start + chunk]
        best_score = best_mm = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            sc = compiled.scores(x)
            compiled.decide_scores(sc)
            t1 = time.perf_counter()
            sims = x @ wt
            t2 = time.perf_counter()
            best_score, best_mm = min(best_score, t1 - t0), min(best_mm, t2 - t1)
            del sims
        t_score += best_score
        t_mm += best_mm
        scores[start:start + len(x)] = sc
    return t_score, t_mm, scores


class ScoringTimer:
    """Wraps CompiledPolicy.scores / decide_scores to add up the time rescan spends in them."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._orig = (CompiledPolicy.scores, CompiledPolicy.decide_scores)
        timer = self

        def scores(self_, v):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return timer._orig[0](self_, v)
            finally:
                timer.seconds += time.perf_counter() - t0

        def decide_scores(self_, s):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return timer._orig[1](self_, s)
            finally:
                timer.seconds += time.perf_counter() - t0

        CompiledPolicy.scores = scores  # type: ignore[method-assign]
        CompiledPolicy.decide_scores = decide_scores  # type: ignore[method-assign]

    def reset(self) -> None:
        self.seconds = 0.0


def threshold_moving(col: np.ndarray, old: float, m: int) -> float:
    """A lower threshold for one concept's scores such that ~m more photos reach it."""
    desc = np.sort(col)[::-1]
    above = int((col >= np.float32(old)).sum())
    k = min(len(desc) - 1, above + m - 1)
    return float(desc[k])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=65536, help="rescan chunk (rows per read / scoring batch)")
    p.add_argument("--hit-rate", type=float, default=0.005, help="fraction each concept hits in version 1")
    args = p.parse_args()
    print(f"load average at start: {loadavg()}  (cpus {os.cpu_count()}, "
          f"OMP/BLAS threads {os.environ.get('OMP_NUM_THREADS', 'default')})")
    root = Path(tempfile.mkdtemp(prefix="photodex-moderation-"))
    spec = EncoderSpec("bench-moderation", None, args.dim)
    coll = Collection.open_for_encoder(root / "coll", spec)
    t0 = time.perf_counter()
    vecs = build(coll, args.n, args.dim, seed=0)
    print(f"collection of {args.n:,} x {args.dim}-d float16 vectors written in {time.perf_counter() - t0:.1f}s "
          f"({coll.path})")

    rng = np.random.default_rng(1)
    rows = sum(2 + (j in CONTRAST) for j in range(len(CONCEPTS)))
    weights = unit(rng.standard_normal((rows, args.dim), dtype=np.float32))
    probe = CompiledPolicy(parse_policy(make_policy(weights, [0.5] * len(CONCEPTS))), weights)

    # scoring efficiency (in memory, rescan's chunking) + the score matrix used to place thresholds
    chunked_scoring(probe, vecs[:args.chunk], args.chunk)  # warm-up
    t_score, t_mm, scores = chunked_scoring(probe, vecs, args.chunk)
    ratio = t_mm / t_score
    print(f"\nscoring {args.n:,} x {rows} prompt rows ({len(CONCEPTS)} concepts) in memory, chunks of {args.chunk}: "
          f"{t_score:.2f}s ({args.n / t_score:,.0f} decisions/s); plain matmul of the same shape {t_mm:.2f}s; "
          f"matmul/scoring = {ratio:.2f} ({'meets' if ratio >= 0.7 else 'misses'} target 0.7)")

    thr = [float(np.quantile(scores[:, j], 1 - args.hit_rate)) for j in range(len(CONCEPTS))]
    thr[SPECIAL] = float(np.quantile(scores[:, SPECIAL], 1 - 0.001))  # special care: rare
    thr = [round(t, 6) for t in thr]
    v1 = save_policy(coll, parse_policy(make_policy(weights, thr)), weights=weights, activate=True)
    del vecs

    timer = ScoringTimer()
    results = []

    def run(label: str, record, dry: bool) -> None:  # type: ignore[no-untyped-def]
        timer.reset()
        la = loadavg()
        t = time.perf_counter()
        rep = rescan(coll, record, dry_run=dry, chunk=args.chunk)
        sec = time.perf_counter() - t
        results.append((label, record.version, "dry" if dry else "real", rep.photos, rep.changed, sec,
                        timer.seconds, la, rep.rescored))
        print(f"{label:38s} v{record.version} {'dry ' if dry else 'real'}: {sec:7.2f}s  "
              f"{rep.photos / sec:>10,.0f} decisions/s  changed {rep.changed:>9,} "
              f"({100 * rep.changed / max(rep.photos, 1):6.2f} %)  from vectors {rep.rescored:>9,}  "
              f"scoring inside {timer.seconds:5.2f}s  [load {la}]", flush=True)

    print()
    run("1. no decisions yet", v1, True)
    run("2. first real run (writes all)", v1, False)
    run("3. same version again (0 change)", v1, False)

    # ~0.1 %: lower one concept's threshold (not the special one); ~10 %: another concept
    target_small = max(1, round(args.n * 0.001))
    j_small = 3
    t_small = threshold_moving(scores[:, j_small], thr[j_small], target_small)
    v2 = save_policy(coll, with_thresholds(v1, {CONCEPTS[j_small]: t_small}).policy, weights=weights, activate=True)
    run("4. ~0.1 % change", v2, True)
    run("4. ~0.1 % change", v2, False)

    target_big = round(args.n * 0.10)
    j_big = 5
    t_big = threshold_moving(scores[:, j_big], thr[j_big], target_big)
    v3 = save_policy(coll, with_thresholds(v2, {CONCEPTS[j_big]: t_big}).policy, weights=weights, activate=True)
    run("5. ~10 % change", v3, True)
    run("5. ~10 % change", v3, False)
    run("6. same version again (0 change)", v3, False)

    # a changed prompt: that concept's stored scores are stale, so every photo is scored from its vector
    # (and a real run stores the fresh scores); the threshold change after it is fast again
    w4 = weights.copy()
    w4[0] = unit(rng.standard_normal((1, args.dim), dtype=np.float32))[0]  # concept 0's first prompt row
    body4 = v3.policy.to_dict()
    body4["concepts"][0]["prompts"] = [f"a close-up photo of {CONCEPTS[0]}", body4["concepts"][0]["prompts"][1]]
    v4 = save_policy(coll, parse_policy(body4), weights=w4, activate=True)
    run("7. one concept's prompt changed", v4, True)
    run("7. one concept's prompt changed", v4, False)
    v5 = save_policy(coll, with_thresholds(v4, {CONCEPTS[j_small]: thr[j_small]}).policy, weights=w4, activate=True)
    run("8. threshold change after it", v5, False)

    base = min(results[2][5], results[7][5])
    print("\n| step | version | run | photos | changed | changed % | scored from vectors | seconds | decisions/s "
          "| scoring s | seconds over the 0-change run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, ver, kind, photos, changed, sec, sc, _, rescored in results:
        print(f"| {label} | {ver} | {kind} | {photos:,} | {changed:,} | {100 * changed / max(photos, 1):.2f} "
              f"| {rescored:,} | {sec:.2f} | {photos / sec:,.0f} | {sc:.2f} | {sec - base:+.2f} |")
    first = results[1]
    per_change = (first[5] - base) / max(first[4], 1)
    print(f"\nwrite cost per changed decision (first real run vs fastest 0-change run): {per_change * 1e6:.1f} us; "
          f"fixed cost of a real run (load stored scores + decide + compare {args.n:,}): {base:.2f}s")
    for label, _, kind, photos, changed, sec, _, _, _ in (results[4], results[6]):
        print(f"{label} real: {sec - base:+.2f}s over the fixed cost for {changed:,} changes "
              f"(predicted from per-change cost {changed * per_change:.2f}s)")
    print(f"load average at end: {loadavg()}")
    coll.close()
    shutil.rmtree(root, ignore_errors=True)  # ~2 GB at 1M


if __name__ == "__main__":
    main()
