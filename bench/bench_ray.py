"""Scale-out figures: the Ray engine against the local engine, and sharded against single-index search.

    python bench/bench_ray.py --part index --n 500           # 12 MP JPEGs, random-init ViT-B-32, photos/s
    python bench/bench_ray.py --part index --n 200 --pending-chunk 50   # the cost of windowing the pending list
    python bench/bench_ray.py --part search --search-n 1000000 --shards 4 [--ivf] [--ray-shards]
    python bench/bench_ray.py --part sizes --sizes-n 200000   # catalog and index bytes per photo
    python bench/bench_ray.py --part gpu --n 500             # CUDA hosts only: nvJPEG vs CPU decode, GPU actor

Indexing: the same folder (bench_indexing's 12 MP corpus) is indexed into fresh collections by the
local engine and by the Ray engine on a local Ray cluster of this machine's CPUs, alternately
(``--repeats``). Reported: photos/s of the whole run and of the encode phase, and Ray/local.
Ray's cluster start is timed on its own: a real deployment starts it once, not per run.

Search: Flat (exact) over ``--search-n`` clustered 512-d vectors as one index and as ``--shards``
id-range shards searched by threads; nq=1 p50/p99 and batch q/s, and a check that both return the
same ids. ``--ivf``: the same for IVF-SQ8 (one IVF over all vs one per shard), with recall@10.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def bench_index(args: argparse.Namespace) -> None:
    import ray
    import torch
    from bench_indexing import make_corpus

    from indexer.collection import Collection
    from indexer.distributed import RayOptions
    from indexer.encode.encoders import load_encoder
    from indexer.run import RunOptions, index_paths

    paths = make_corpus(Path(args.dir), args.n, (4000, 3000))
    print(f"corpus: {len(paths)} JPEGs 4000x3000 in {args.dir}")
    encoder = load_encoder(args.model, None, "cpu")
    print(f"encoder: {encoder.spec.id} on cpu, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}")
    t = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cluster_s = time.perf_counter() - t
    print(f"ray {ray.__version__}: local cluster started in {cluster_s:.1f}s ({ray.cluster_resources().get('CPU')} CPUs)")
    ray_opts = RayOptions(actors=args.ray_actors, torch_threads=args.ray_torch_threads or None,
                          cpus_per_worker=args.ray_actor_cpus, decode_cpus=args.ray_decode_cpus,
                          **({"pending_chunk": args.pending_chunk} if args.pending_chunk else {}))
    print(f"ray engine: {ray_opts.actors or 'default'} encode actor(s) x {ray_opts.cpus_per_worker} CPU, torch threads "
          f"{ray_opts.torch_threads or 'engine default'}, decode tasks x {ray_opts.decode_cpus} CPU, "
          f"windows of {ray_opts.pending_chunk} pending photos; "
          f"local engine: {args.workers} decode worker(s)")
    results: dict[str, list[tuple[float, float, float]]] = {"local": [], "ray": []}
    work = Path(tempfile.mkdtemp(prefix="photodex-bench-ray-"))
    try:
        for rep in range(args.repeats):
            for engine in ("local", "ray"):
                coll = Collection.open_for_encoder(work / f"{engine}-{rep}", encoder.spec)
                commits: list[tuple[float, int]] = []
                opts = RunOptions(batch_size=args.batch_size, workers=args.workers, engine=engine,
                                  ray=ray_opts if engine == "ray" else None,
                                  on_commit=lambda s, ids, v, log=commits: log.append((time.perf_counter(), len(ids))))
                t = time.perf_counter()
                summary = index_paths(coll, encoder, [args.dir], opts)
                whole = summary.encode.encoded / (time.perf_counter() - t)
                phase = summary.encode.photos_per_second
                steady = sum(n for _, n in commits[1:]) / (commits[-1][0] - commits[0][0])
                coll.close()
                results[engine].append((whole, phase, steady))
                print(f"  run {rep + 1} {engine:5s}: {summary.encode.encoded} photos, whole run {whole:.2f} photos/s, "
                      f"encode phase {phase:.2f} photos/s, steady (first to last commit) {steady:.2f} photos/s, "
                      f"first commit after {commits[0][0] - t:.1f}s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    best = {e: tuple(max(r[i] for r in rs) for i in range(3)) for e, rs in results.items()}
    print(f"best of {args.repeats}: local {best['local'][0]:.2f} / {best['local'][1]:.2f} / {best['local'][2]:.2f} "
          f"photos/s, ray {best['ray'][0]:.2f} / {best['ray'][1]:.2f} / {best['ray'][2]:.2f} photos/s "
          f"(whole run / encode phase / steady)")
    print(f"ratio ray/local: whole run {best['ray'][0] / best['local'][0]:.2f}, "
          f"encode phase {best['ray'][1] / best['local'][1]:.2f}, steady {best['ray'][2] / best['local'][2]:.2f} "
          f"(target >= 0.8; cluster start {cluster_s:.1f}s not included)")


def _latency(index, q: np.ndarray, k: int, n: int) -> tuple[float, float]:
    times = []
    for i in range(min(n, len(q))):
        t = time.perf_counter()
        index.search(q[i:i + 1], k)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def _batch_qps(index, q: np.ndarray, k: int) -> float:
    t = time.perf_counter()
    index.search(q, k)
    return len(q) / (time.perf_counter() - t)


def bench_search(args: argparse.Namespace) -> None:
    import faiss
    from bench_index import make_data

    from retrieval.index.choice import flat_spec, ivf_spec
    from retrieval.index.recall import recall_at_k
    from retrieval.index.sharded import ShardedIndex
    from retrieval.index.vector_index import VectorIndex

    faiss.omp_set_num_threads(args.threads)
    t = time.perf_counter()
    xb, q = make_data(args.search_n, args.queries, 512, 1000)
    ids = np.arange(1, args.search_n + 1, dtype=np.int64)
    print(f"data: n={args.search_n} dim=512 queries={len(q)} shards={args.shards} faiss threads={args.threads} "
          f"cpus={os.cpu_count()} gen={time.perf_counter() - t:.1f}s")
    rows = []

    def run(name: str, single_spec, shard_spec) -> np.ndarray:
        t = time.perf_counter()
        single = VectorIndex.build(ids, xb, single_spec)
        t_single = time.perf_counter() - t
        t = time.perf_counter()
        sharded = ShardedIndex.build(ids, xb, args.shards, shard_spec)
        t_sharded = time.perf_counter() - t
        lat = args.latency_queries
        _, i1 = single.search(q[:lat], args.k)
        _, i2 = sharded.search(q[:lat], args.k)
        same = float((i1 == i2).mean())
        for label, index, build_s in (("single", single, t_single), (f"{args.shards} shards", sharded, t_sharded)):
            p50, p99 = _latency(index, q, args.k, lat)
            qps = _batch_qps(index, q, args.k)
            rows.append((name, label, build_s, p50, p99, qps))
            print(f"  {name:8s} {label:9s} build {build_s:6.1f}s  nq=1 p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
                  f"batch {qps:8.0f} q/s")
        print(f"  {name}: same top-{args.k} ids as single index for {same:.4f} of positions")
        del single, sharded
        return i1

    truth = run("flat", flat_spec(), flat_spec())
    if args.ivf:
        spec = ivf_spec(args.search_n)
        print(f"  ivf: {spec.factory} nprobe={spec.params['nprobe']}; shards share one coarse quantizer")
        t = time.perf_counter()
        single = VectorIndex.build(ids, xb, spec)
        t_single = time.perf_counter() - t
        t = time.perf_counter()
        sharded = ShardedIndex.build(ids, xb, args.shards, spec)
        t_sharded = time.perf_counter() - t
        found = {}
        for label, index, build_s in (("single", single, t_single), (f"{args.shards} shards", sharded, t_sharded)):
            _, found[label] = index.search(q[:args.latency_queries], args.k)
            p50, p99 = _latency(index, q, args.k, args.latency_queries)
            qps = _batch_qps(index, q, args.k)
            rows.append(("ivf_sq8", label, build_s, p50, p99, qps))
            print(f"  ivf_sq8  {label:9s} build {build_s:6.1f}s  recall@{args.k} "
                  f"{recall_at_k(found[label], truth[:args.latency_queries]):.4f}  nq=1 p50 {p50:6.2f} ms  "
                  f"p99 {p99:6.2f} ms  batch {qps:8.0f} q/s")
        same = float((found["single"] == found[f"{args.shards} shards"]).mean())
        print(f"  ivf_sq8: same top-{args.k} ids as the single IVF for {same:.4f} of positions")
    if args.ray_shards:
        import ray

        from retrieval.index.sharded import ray_shards

        folder = Path(tempfile.mkdtemp(prefix="photodex-bench-shards-"))
        try:
            local = ShardedIndex.build(ids, xb, args.shards, flat_spec())
            local.save(folder)
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
            remote = ray_shards(folder, num_cpus=0)
            for label, index in (("threads", local), ("ray actors", remote)):
                index.search(q[:1], args.k)
                p50, p99 = _latency(index, q, args.k, args.latency_queries)
                rows.append(("flat", f"{args.shards} shards, {label}", 0.0, p50, p99, _batch_qps(index, q, args.k)))
                print(f"  flat     {args.shards} shards as {label:10s} nq=1 p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
            ray.shutdown()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n| index | layout | build s | p50 ms | p99 ms | batch q/s |\n|---|---|---|---|---|---|")
    for name, label, build_s, p50, p99, qps in rows:
        print(f"| {name} | {label} | {build_s:.1f} | {p50:.2f} | {p99:.2f} | {qps:.0f} |")


def commit_rate(folder: Path, dim: int, batch: int, n: int = 20_480) -> None:
    """The driver's ceiling: photos/s that ``_commit_batch`` (one transaction per batch) writes to SQLite."""
    from datetime import datetime

    from sqlalchemy import insert

    from indexer.catalog.models import PENDING, Photo
    from indexer.collection import Collection
    from indexer.encode.decode import PhotoFacts
    from indexer.encode.run import _commit_batch
    from indexer.core.spec import EncoderSpec

    coll = Collection.open_for_encoder(folder, EncoderSpec("ViT-B-32", None, dim))
    with coll.catalog.session() as s, s.begin():
        s.execute(insert(Photo), [{"id": i + 1, "sha256": f"{i:064x}", "size": 1, "status": PENDING,
                                   "created_at": datetime.now()} for i in range(n)])
    rng = np.random.default_rng(0)
    facts = PhotoFacts("JPEG", 4032, 3024, datetime(2020, 1, 1), "Apple", "iPhone", 48.85, 2.35, 1)
    t = time.perf_counter()
    for start in range(0, n, batch):
        ids = list(range(start + 1, min(n, start + batch) + 1))
        vecs = rng.normal(size=(len(ids), dim)).astype(np.float32)
        _commit_batch(coll, {"ids": ids, "facts": [facts] * len(ids), "errors": []}, vecs)
    secs = time.perf_counter() - t
    coll.close()
    print(f"driver commits (SQLite, batches of {batch}, vectors + statuses + EXIF facts): {n / secs:,.0f} photos/s")


def bench_sizes(args: argparse.Namespace) -> None:
    """Bytes per photo of the catalog (SQLite) and of index files, measured on synthetic rows."""
    import sqlite3
    from datetime import datetime

    import faiss
    from sqlalchemy import insert

    from indexer.catalog.models import INDEXED, Embedding, Photo, PhotoFile
    from indexer.collection import Collection
    from indexer.core.spec import EncoderSpec
    from indexer.core.vectors import encode_vector
    from retrieval.index.choice import ivf_spec
    from retrieval.index.vector_index import VectorIndex

    n, dim = args.sizes_n, 512
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="photodex-bench-sizes-"))
    try:
        coll = Collection.open_for_encoder(work / "coll", EncoderSpec("ViT-B-32", None, dim))
        t = time.perf_counter()
        for start in range(0, n, 20_000):
            m = min(20_000, n - start)
            vecs = rng.normal(size=(m, dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            photos = [{"id": start + i + 1, "sha256": f"{rng.integers(1 << 62):064x}", "size": 3_500_000,
                       "format": "JPEG", "width": 4032, "height": 3024, "taken_at": None,
                       "camera_make": "Apple", "camera_model": "iPhone 12 Pro", "gps_lat": 48.8566, "gps_lon": 2.3522,
                       "orientation": 1, "status": INDEXED, "created_at": None, "indexed_at": None} for i in range(m)]
            stamp = datetime.now()
            for p in photos:
                p["taken_at"] = p["created_at"] = p["indexed_at"] = stamp
            path = lambda i: f"/srv/photos/{2010 + i % 15}/{2010 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}/IMG_{i:07d}.JPG"
            files = [{"path": path(start + i), "path_bytes": path(start + i).encode(), "photo_id": start + i + 1,
                      "size": 3_500_000, "mtime_ns": 1_600_000_000_000_000_000 + i} for i in range(m)]
            embs = [{"photo_id": start + i + 1, "vector": encode_vector(v)} for i, v in enumerate(vecs)]
            with coll.catalog.session() as s, s.begin():
                s.execute(insert(Photo), photos)
                s.execute(insert(PhotoFile), files)
                s.execute(insert(Embedding), embs)
        coll.close()
        db = work / "coll" / "catalog.db"
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            pages = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()) \
                if conn.execute("SELECT count(*) FROM pragma_compile_options WHERE compile_options LIKE "
                                "'ENABLE_DBSTAT_VTAB'").fetchone()[0] else {}
        total = db.stat().st_size
        print(f"catalog: {n} photos (1 file, 1 vector of {dim}-d float16 each) in SQLite: {total / 1e6:.1f} MB, "
              f"{total / n:.0f} bytes/photo ({time.perf_counter() - t:.1f}s to write)")
        if pages:
            emb = sum(v for k, v in pages.items() if "embedding" in k)
            print(f"  of which embeddings table+index {emb / n:.0f} B/photo, the rest {(total - emb) / n:.0f} B/photo")
        ids = np.arange(1, n + 1, dtype=np.int64)
        xb = rng.normal(size=(n, dim)).astype(np.float32)
        xb /= np.linalg.norm(xb, axis=1, keepdims=True)
        for spec in (ivf_spec(n, storage="SQ8"), ivf_spec(n, storage="PQ64"), ivf_spec(n, storage="PQ32")):
            t = time.perf_counter()
            vi = VectorIndex.build(ids, xb, spec)
            path = work / f"{spec.factory.replace(',', '_')}.faiss"
            vi.save(path)
            size = path.stat().st_size
            centroids = spec.params["nlist"] * dim * 4
            print(f"index {spec.factory}: file {size / 1e6:.1f} MB = {(size - centroids) / n:.1f} B/vector + "
                  f"{centroids / 1e6:.1f} MB centroids (build {time.perf_counter() - t:.1f}s)")
            del vi
        print(f"(faiss {faiss.__version__}; RAM adds the hash direct map for id removal, ~16-40 B/vector)")
        commit_rate(work / "commit", dim, args.batch_size * 8)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_gpu(args: argparse.Namespace) -> None:
    """On a CUDA host: nvJPEG batch decoding vs CPU decoding (12 MP), and the Ray engine end to end
    with one GPU actor (ViT-B-32 fp16), with and without GPU decoding."""
    import ray
    import torch
    from bench_indexing import make_corpus

    from indexer.collection import Collection
    from indexer.encode.decode import decode_photo
    from indexer.distributed import RayOptions
    from indexer.distributed.gpu_decode import TensorPreprocess, decode_jpeg_batch, probe_jpeg
    from indexer.distributed.stages import preprocess_for
    from indexer.encode.encoders import load_encoder
    from indexer.run import RunOptions, index_paths

    if not torch.cuda.is_available():
        print("gpu part: no CUDA device here; skipped")
        return
    paths = make_corpus(Path(args.dir), args.n, (4000, 3000))
    encoder = load_encoder(args.model, None, "cuda", "fp16")
    pre, cpu_pre = TensorPreprocess.from_spec(encoder.spec.preprocess), preprocess_for(encoder.spec.preprocess)
    datas = [p.read_bytes() for p in paths[: args.batch_size * 4]]
    orient = [probe_jpeg(d).orientation for d in datas]
    decode_jpeg_batch(datas[: args.batch_size], orient, pre, "cuda")  # warm-up (nvJPEG handles)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for s in range(0, len(datas), args.batch_size):
        decode_jpeg_batch(datas[s:s + args.batch_size], orient[s:s + args.batch_size], pre, "cuda")
    torch.cuda.synchronize()
    gpu = len(datas) / (time.perf_counter() - t)
    t = time.perf_counter()
    for p in paths[: len(datas)]:
        cpu_pre(decode_photo(str(p), encoder.image_size)[0])
    cpu = len(datas) / (time.perf_counter() - t)
    print(f"12 MP decode+preprocess: nvJPEG batch {gpu:.0f} photos/s, CPU (draft, one core) {cpu:.0f} photos/s")
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    work = Path(tempfile.mkdtemp(prefix="photodex-bench-gpu-"))
    try:
        for gpu_decode in (False, True):
            coll = Collection.open_for_encoder(work / f"c{gpu_decode}", encoder.spec)
            t = time.perf_counter()
            summary = index_paths(coll, encoder, [args.dir], RunOptions(
                batch_size=args.batch_size, engine="ray",
                ray=RayOptions(gpus_per_worker=1, gpu_decode=gpu_decode, precision="fp16")))
            print(f"ray engine, 1 GPU actor, gpu_decode={gpu_decode}: {summary.encode.encoded} photos, "
                  f"{summary.encode.encoded / (time.perf_counter() - t):.1f} photos/s whole run, "
                  f"{summary.encode.photos_per_second:.1f} photos/s encode phase")
            coll.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["index", "search", "sizes", "gpu", "all"], default="all")
    ap.add_argument("--n", type=int, default=500, help="photos for the indexing comparison")
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "photodex-bench-12mp"))
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="local decode workers")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--ray-actors", type=int, default=None, help="encode actors (default: the engine's)")
    ap.add_argument("--ray-actor-cpus", type=float, default=1.0)
    ap.add_argument("--ray-decode-cpus", type=float, default=1.0)
    ap.add_argument("--ray-torch-threads", type=int, default=None,
                    help="torch threads per actor (default: the engine's: all cores of the host for a CPU actor)")
    ap.add_argument("--pending-chunk", type=int, default=None,
                    help="Ray engine: pending photos per window/pipeline (default: the engine's, 200,000)")
    ap.add_argument("--search-n", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--latency-queries", type=int, default=50)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ivf", action="store_true", help="also compare IVF-SQ8 (slow to build at 1M)")
    ap.add_argument("--ray-shards", action="store_true", help="also serve the Flat shards from Ray actors")
    ap.add_argument("--sizes-n", type=int, default=200_000, help="synthetic photos for the size figures")
    args = ap.parse_args()
    if args.part in ("index", "all"):
        bench_index(args)
    if args.part in ("search", "all"):
        bench_search(args)
    if args.part in ("sizes", "all"):
        bench_sizes(args)
    if args.part in ("gpu", "all"):
        bench_gpu(args)


if __name__ == "__main__":
    main()
