"""Benchmark photodex vector indexes on clustered, normalised synthetic embeddings.

    python bench/bench_index.py --n 1000000 --dim 512 --queries 1000 --threads 2

Reports per index (exact Flat, HNSW32 Flat/SQ8 storage, IVF-SQ8) and search setting: build time,
RSS, recall@10 vs exact, single-query latency p50/p99 (nq=1), batch queries/s, and
exact-p50 / approx-p50. Also the ViT-B-32 text-tower encoding latency on CPU (random init,
no download). Not part of pytest.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.index.choice import (SearchParams, choose_index_spec, default_nlist,  # noqa: E402
                                    estimate_memory_bytes, flat_spec, hnsw_spec, ivf_spec)
from retrieval.index.recall import recall_at_k  # noqa: E402
from retrieval.index.vector_index import VectorIndex  # noqa: E402


def rss_mb() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_data(n: int, nq: int, dim: int, clusters: int, seed: int = 0, chunk: int = 100_000):
    """Mixture of gaussians with a shared 48-d latent structure (low intrinsic dimension, like
    CLIP embeddings): x = c + 0.6*z@B/sqrt(r) + 0.25*g/sqrt(d), normalised (cos(x, c) ~ 0.84).
    Queries: held-out points from the same mixture, perturbed slightly."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    r = 48
    basis = np.linalg.qr(rng.standard_normal((dim, r)))[0].T.astype(np.float32)  # (r, dim)

    def sample(m: int) -> np.ndarray:
        lab = rng.integers(0, clusters, m)
        z = rng.standard_normal((m, r)).astype(np.float32)
        x = centres[lab] + 0.6 * (z @ basis) / np.sqrt(r)
        x += 0.25 * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    xb = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        xb[s:s + chunk] = sample(min(chunk, n - s))
    q = sample(nq)
    q += 0.05 * rng.standard_normal(q.shape).astype(np.float32) / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return xb, q


def latency(vi: VectorIndex, q: np.ndarray, k: int, params: SearchParams | None, n: int) -> tuple[float, float]:
    times = []
    for i in range(min(n, len(q))):
        t = time.perf_counter()
        vi.search(q[i:i + 1], k, params=params)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def run_index(name, spec, xb, ids, q, truth, args, settings, rows, flat_p50):
    gc.collect()
    rss0 = rss_mb()
    t = time.perf_counter()
    vi = VectorIndex.build(ids, xb, spec)
    build_s = time.perf_counter() - t
    rss_idx = rss_mb() - rss0
    for params in settings:
        t = time.perf_counter()
        _, found = vi.search(q, args.k, params=params)
        qps = len(q) / (time.perf_counter() - t)
        rec = recall_at_k(found, truth) if truth is not None else 1.0
        n_lat = args.flat_latency_queries if spec.kind == "flat" else len(q)
        p50, p99 = latency(vi, q, args.k, params, n_lat)
        flat_p50 = flat_p50 if flat_p50 is not None else p50
        label = ("" if params is None else
                 f"nprobe={params.nprobe}" if params.nprobe else f"ef={params.ef_search}")
        rows.append((name, spec.factory, label, build_s, rss_idx, peak_mb(), rec, p50, p99, qps,
                     flat_p50 / p50))
        print(f"  {name:10s} {label:12s} recall@{args.k}={rec:.4f} p50={p50:.2f}ms p99={p99:.2f}ms "
              f"qps={qps:.0f}", flush=True)
        build_s = rss_idx = float("nan")
    if spec.kind == "flat":
        _, truth = vi.search(q, args.k)
    del vi
    gc.collect()
    return truth, flat_p50


def text_latency(threads: int) -> str:
    try:
        import open_clip
        import torch
    except ImportError as e:  # pragma: no cover
        return f"text tower: skipped ({e})"
    torch.set_num_threads(threads)
    model = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    tok = open_clip.get_tokenizer("ViT-B-32")
    times = []
    with torch.inference_mode():
        for i in range(23):
            t = time.perf_counter()
            model.encode_text(tok(["a dog running on the beach at sunset"]))
            if i >= 3:
                times.append((time.perf_counter() - t) * 1e3)
    return (f"ViT-B-32 text tower (CPU, {threads} threads, tokenize+encode, 1 query): "
            f"p50={np.percentile(times, 50):.1f}ms p99={np.percentile(times, 99):.1f}ms over {len(times)} runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", default="flat,hnsw_flat,hnsw_sq8,ivf_sq8")
    ap.add_argument("--ef", default="32,64,128")
    ap.add_argument("--nprobe", default="32,64,128")
    ap.add_argument("--flat-latency-queries", type=int, default=100)
    ap.add_argument("--no-text", action="store_true")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)

    t = time.perf_counter()
    xb, q = make_data(args.n, args.queries, args.dim, args.clusters)
    ids = np.arange(args.n, dtype=np.int64)
    print(f"data: n={args.n} dim={args.dim} queries={args.queries} clusters={args.clusters} "
          f"threads={args.threads} gen={time.perf_counter() - t:.1f}s rss={rss_mb():.0f}MB", flush=True)
    chosen = choose_index_spec(args.n, args.dim)
    print(f"choose_index_spec -> {chosen.to_json()} (est. {estimate_memory_bytes(chosen, args.n, args.dim) / 2**20:.0f} MiB)")

    efs = [SearchParams(ef_search=int(e)) for e in args.ef.split(",")]
    nlist = default_nlist(args.n)
    probes = [SearchParams(nprobe=min(nlist, int(p))) for p in args.nprobe.split(",")]
    specs = {"flat": (flat_spec(), [None]),
             "hnsw_flat": (hnsw_spec(storage="Flat"), efs),
             "hnsw_sq8": (hnsw_spec(storage="SQ8"), efs),
             "ivf_sq8": (ivf_spec(args.n, storage="SQ8"), probes)}
    rows: list[tuple] = []
    truth, flat_p50 = None, None
    for name in args.kinds.split(","):
        spec, settings = specs[name]
        print(f"building {name} ({spec.factory}) ...", flush=True)
        truth, flat_p50 = run_index(name, spec, xb, ids, q, truth, args, settings, rows, flat_p50)

    print(f"\n| index | factory | search | build s | +RSS MB | peak RSS MB | recall@{args.k} | "
          "p50 ms | p99 ms | batch q/s | exact/approx p50 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        build = "" if np.isnan(r[3]) else f"{r[3]:.1f}"
        mem = "" if np.isnan(r[4]) else f"{r[4]:.0f}"
        print(f"| {r[0]} | {r[1]} | {r[2]} | {build} | {mem} | {r[5]:.0f} | {r[6]:.4f} | {r[7]:.2f} | "
              f"{r[8]:.2f} | {r[9]:.0f} | {r[10]:.1f}x |")
    print("(recall vs exact Flat; Flat p50 over the first "
          f"{args.flat_latency_queries} queries; peak RSS is process-wide and includes the "
          f"{xb.nbytes / 2**20:.0f} MB dataset)")
    if not args.no_text:
        del xb
        gc.collect()
        print(text_latency(args.threads))


if __name__ == "__main__":
    main()
