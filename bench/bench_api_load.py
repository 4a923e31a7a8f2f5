"""Load on a real ``photodex serve`` over loopback: ``POST /api/v1/search`` queries/s and p50/p99 latency at 1, 10
and 50 concurrent clients, next to the bare in-process ``Searcher`` rate on the same queries.

    python bench/bench_api_load.py                         # builds a tiny-CLIP collection of --n photos
    python bench/bench_api_load.py --collection COLL       # an existing collection (its own encoder)

Steps: (1) the in-process baseline: ``Searcher(collection, encoder).search_text`` over the query list, one
thread, same k and collapse as the HTTP requests; its result ids are kept to check the API's. (2) ``photodex
serve`` on a free 127.0.0.1 port (one worker, default settings) until ``/readyz`` is 200. (3) for each
concurrency level, a separate load-generator process (this file with ``--client``: N threads, one keep-alive
``httpx.Client`` each) sends the queries round-robin for at most ``--requests`` requests or ``--duration``
seconds after a short warm-up, and reports every latency and every error (non-200, transport error, or result
ids different from the in-process ones). Ratio = API q/s / in-process q/s; the target is >= 0.8 at 10 clients.

The server, the load generator and (before them) the baseline share the machine: on 2 cores the client's own
CPU use is part of what the API figures pay. Not part of pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

API = "/api/v1"
K = 10
COLLAPSE = 0.95  # the API's default near-duplicate collapse, sent explicitly so both sides do the same work
QUERIES = [f"a photo of {w}" for w in (
    "a dog", "a cat", "the beach at sunset", "mountains in snow", "a red car", "a city street at night",
    "a birthday cake", "two people smiling", "a forest path", "a boat on a lake", "a plate of food", "flowers",
    "a bicycle", "a bridge", "an old building", "children playing", "a train station", "a sandy desert",
    "a snowy field", "a black and white portrait", "a bowl of fruit", "a computer on a desk", "a horse", "rain",
)]


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# ---- load-generator process ------------------------------------------------------------------------------------
def client_main(args: argparse.Namespace) -> None:
    import httpx

    expected: dict[str, list[int]] = json.loads(Path(args.expected).read_text())
    queries = list(expected)
    lock = threading.Lock()
    counter = [0]
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = [0.0]

    def worker(warmup: int) -> None:
        with httpx.Client(base_url=args.client, timeout=60) as c:
            for i in range(warmup):  # connection set-up and first requests, not timed
                c.post(f"{API}/search", json={"text": queries[i % len(queries)], "k": K, "collapse": COLLAPSE})
            start_barrier.wait()
            while True:
                with lock:
                    n = counter[0]
                    if n >= args.requests or time.perf_counter() > stop_at[0]:
                        return
                    counter[0] += 1
                q = queries[n % len(queries)]
                t0 = time.perf_counter()
                try:
                    r = c.post(f"{API}/search", json={"text": q, "k": K, "collapse": COLLAPSE})
                    dt = time.perf_counter() - t0
                    if r.status_code != 200:
                        err = f"{r.status_code}: {r.text[:200]}"
                    elif [h["id"] for h in r.json()["results"]] != expected[q]:
                        err = f"ids differ for {q!r}"
                    else:
                        err = None
                except httpx.HTTPError as exc:
                    dt, err = time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
                with lock:
                    latencies.append(dt)
                    if err:
                        errors.append(err)

    # the deadline is set when every worker is warm, before any of them passes the barrier
    start_barrier = threading.Barrier(args.concurrency + 1,
                                      action=lambda: stop_at.__setitem__(0, time.perf_counter() + args.duration))
    threads = [threading.Thread(target=worker, args=(2,), daemon=True) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    start_barrier.wait()
    t0 = stop_at[0] - args.duration
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    print(json.dumps({"wall": wall, "latencies": latencies, "errors": errors[:20], "n_errors": len(errors)}))


# ---- orchestrator -----------------------------------------------------------------------------------------------
def build_collection(root: Path, n: int) -> Path:
    from indexer.collection import Collection
    from indexer.encode.encoders import load_encoder
    from indexer.run import RunOptions, index_paths
    from retrieval.index.store import refresh_index
    from tests.helpers import make_library, save_tiny_clip

    model, _ = save_tiny_clip(root / "model")
    make_library(root / "lib", n, size=(32, 24))
    encoder = load_encoder(f"local-dir:{model}", device="cpu")
    with Collection.open_for_encoder(root / "coll", encoder.spec) as coll:
        index_paths(coll, encoder, [root / "lib"], RunOptions(batch_size=64, workers=0))
        refresh_index(coll)
    return root / "coll"


class InProcess:
    """The bare Searcher on the collection, with the encoder the server would load (from the manifest)."""

    def __init__(self, collection: Path) -> None:
        from indexer.collection import Collection
        from ui.settings import Settings
        from retrieval.search.searcher import Searcher, SearchOptions
        from ui.api.runtime import LockedEncoder
        from ui.context import load_chosen_encoder

        encoder = load_chosen_encoder(Settings(collection=collection))
        self.coll = Collection.open(collection)
        self.searcher = Searcher(self.coll, encoder)
        # for several threads: encoder calls serialised as in the server (ui.api.runtime.LockedEncoder)
        self.locked = Searcher(self.coll, LockedEncoder(encoder))  # type: ignore[arg-type]
        self.opts = SearchOptions(k=K, collapse=COLLAPSE)
        self.expected = {q: [h.id for h in self.searcher.search_text(q, self.opts)] for q in QUERIES}  # warm pass

    def run(self, rounds: int, threads: int = 1) -> tuple[float, list[float]]:
        """(queries/s, latencies) over ``rounds`` passes of the queries with ``threads`` threads."""
        from concurrent.futures import ThreadPoolExecutor

        searcher = self.searcher if threads == 1 else self.locked
        work = [q for _ in range(rounds) for q in QUERIES]

        def one(q: str) -> float:
            s = time.perf_counter()
            searcher.search_text(q, self.opts)
            return time.perf_counter() - s

        t0 = time.perf_counter()
        if threads == 1:
            lat = [one(q) for q in work]
        else:
            with ThreadPoolExecutor(threads) as pool:
                lat = list(pool.map(one, work))
        return len(lat) / (time.perf_counter() - t0), lat

    def close(self) -> None:
        self.coll.close()


def line(name: str, qps: float, lat: list[float], extra: str = "") -> str:
    return (f"{name:34s} {qps:8.1f} q/s   p50 {1e3 * percentile(lat, 50):7.2f} ms   "
            f"p99 {1e3 * percentile(lat, 99):7.2f} ms   ({len(lat)} queries{extra})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(collection: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "ui.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--collection", str(collection)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{base}{API}/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("server did not become ready in 120 s")
        time.sleep(0.2)


def run_level(base: str, expected_file: Path, concurrency: int, requests: int, duration: float) -> dict:
    cmd = [sys.executable, __file__, "--client", base, "--expected", str(expected_file), "--concurrency",
           str(concurrency), "--requests", str(requests), "--duration", str(duration)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=duration + 120,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", type=Path, help="existing collection (default: build a tiny-CLIP one)")
    p.add_argument("--n", type=int, default=2000, help="photos in the built collection")
    p.add_argument("--levels", default="1,10,50", help="concurrent clients, comma-separated")
    p.add_argument("--requests", type=int, default=600, help="timed requests per level (at most)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per level (at most)")
    p.add_argument("--rounds", type=int, default=10, help="passes over the queries for the in-process baseline")
    # load-generator mode (internal)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--expected", help=argparse.SUPPRESS)
    p.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        return client_main(args)
    tmp = Path(tempfile.mkdtemp(prefix="photodex-apiload-"))
    if args.collection is None:
        t0 = time.perf_counter()
        args.collection = build_collection(tmp, args.n)
        print(f"built a {args.n}-photo tiny-CLIP collection in {time.perf_counter() - t0:.1f}s")
    levels = [int(x) for x in args.levels.split(",")]
    base_proc = InProcess(args.collection)
    expected_file = tmp / "expected.json"
    expected_file.write_text(json.dumps(base_proc.expected))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    print(f"queries: {len(QUERIES)} distinct texts, k={K}, collapse={COLLAPSE}, POST {API}/search")
    qps_a, lat_a = base_proc.run(args.rounds)
    print(line("in-process Searcher, 1 thread", qps_a, lat_a))
    threaded = {}
    for level in levels:
        if level > 1:
            threaded[level] = base_proc.run(args.rounds, level)
            print(line(f"in-process Searcher, {level} threads", *threaded[level], ", encoder locked"))
    base_proc.close()
    proc, base = start_server(args.collection)
    rows = []
    try:
        for level in levels:
            r = run_level(base, expected_file, level, args.requests, args.duration)
            rows.append((level, len(r["latencies"]) / r["wall"], r))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    base_proc = InProcess(args.collection)  # again after the load: the machine is shared, its load drifts
    qps_b, lat_b = base_proc.run(args.rounds)
    base_proc.close()
    print(line("in-process Searcher, 1 thread (after)", qps_b, lat_b))
    qps0 = (qps_a + qps_b) / 2
    best = max(qps_a, qps_b)
    print(f"in-process reference (mean of before/after): {qps0:.1f} q/s; best of the two: {best:.1f} q/s")
    for level, qps, r in rows:
        print(line(f"API, {level} client(s)", qps, r["latencies"],
                   f", {r['n_errors']} errors, ratio {qps / qps0:.2f}, vs best {qps / best:.2f}"))
        for e in r["errors"][:5]:
            print(f"    error: {e}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    errors = sum(r["n_errors"] for *_, r in rows)
    at10 = next((qps / qps0 for level, qps, _ in rows if level == 10), None)
    verdict = "met" if at10 is not None and at10 >= 0.8 else "NOT met"
    at10_best = next((qps / best for level, qps, _ in rows if level == 10), None)
    print(f"errors: {errors}; ratio at 10 clients (API q/s / mean in-process 1-thread q/s): "
          f"{'n/a' if at10 is None else f'{at10:.2f}'} (target >= 0.8: {verdict}); "
          f"vs the best in-process run: {'n/a' if at10_best is None else f'{at10_best:.2f}'}")


if __name__ == "__main__":
    main()
