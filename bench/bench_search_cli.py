"""Cold-start cost of encoding one search query: full torch encoder vs exported ONNX text tower vs query cache.

    python bench/bench_search_cli.py --model ViT-B-32 --repeats 3
    python bench/bench_search_cli.py --cli "photodex search 'a dog' --collection {collection}"   # once wired

Each variant runs in a fresh Python process (page cache warm after the first repeat); reported: wall time of the
whole process (spawn to exit: interpreter start, imports, model load, tokenise, encode), the in-process time
after interpreter start, and the process's peak RSS (``wait4`` rusage). The model has random weights
(``pretrained=None``, no download), so the numbers measure loading and compute, not weights quality. Variants:

- ``torch``: ``indexer.encode.encoders.load_encoder`` (imports torch + open_clip, builds the whole CLIP) + ``encode_texts``
- ``torch-text-only``: imports torch + open_clip, ``create_model`` then only ``encode_text`` (what a torch-only
  fast path could at best do without an export: open_clip still builds the vision tower)
- ``onnx``: ``retrieval.search.text_tower.try_load_text_tower`` + ``encode_texts`` (numpy + onnxruntime, no torch)
- ``onnx+cache-hit``: ``retrieval.search.query_cache`` lookup that hits, then nothing else is loaded
- ``cli``: an arbitrary command given with ``--cli`` (``{collection}`` is replaced), e.g. the wired CLI

Not part of pytest.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("bench_search_cli")

QUERY = "a photo of two dogs playing on the beach at sunset"

SNIPPETS = {
    "torch": """
from indexer.encode.encoders import load_encoder
enc = load_encoder({model!r}, pretrained=None, device="cpu")
vec = enc.encode_texts([{query!r}])
""",
    "torch-text-only": """
import torch, open_clip
torch.manual_seed(0)
net = open_clip.create_model({model!r}, pretrained=None).eval()
tok = open_clip.get_tokenizer({model!r})
with torch.inference_mode():
    x = net.encode_text(tok([{query!r}]))
vec = (x / x.norm(dim=-1, keepdim=True)).numpy()
""",
    "onnx": """
from retrieval.search.text_tower import try_load_text_tower
tower = try_load_text_tower({collection!r}, {spec_id!r})
assert tower is not None, "no text tower"
vec = tower.encode_texts([{query!r}])
""",
    "onnx+cache-hit": """
from retrieval.search.query_cache import open_query_cache
vec = open_query_cache({collection!r}, {spec_id!r}).get({query!r})
assert vec is not None, "cache miss"
""",
}

WRAPPER = """
import time, sys
_t0 = time.perf_counter()
{body}
import json
print(json.dumps({{"inner_s": time.perf_counter() - _t0,
                   "torch_imported": "torch" in sys.modules}}))
"""


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Spawn, reap with ``os.wait4`` (per-child peak RSS), return (wall s, peak MiB, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    out = proc.stdout.read() if proc.stdout else b""  # type: ignore[union-attr]
    err = proc.stderr.read() if proc.stderr else b""  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)[:200]} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out.decode()


def prepare(model: str, collection: Path) -> str:
    """Export the text tower of a random-weight ``model`` into ``collection`` and warm the query cache."""
    from indexer.encode.encoders import load_encoder
    from retrieval.search.query_cache import open_query_cache
    from retrieval.search.text_tower_export import ensure_text_tower

    enc = load_encoder(model, pretrained=None, device="cpu")
    start = time.perf_counter()
    ensure_text_tower(collection, enc)
    log.info("export (incl. check) took %.1f s", time.perf_counter() - start)
    open_query_cache(collection, enc.spec.id).put(QUERY, enc.encode_texts([QUERY])[0])
    return enc.spec.id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--collection", type=Path, help="reuse this folder (default: a temp dir)")
    ap.add_argument("--variants", default="torch,torch-text-only,onnx,onnx+cache-hit")
    ap.add_argument("--cli", help="also time this shell command ({collection} is replaced)")
    ap.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    collection = args.collection or Path(tempfile.mkdtemp(prefix="bench-search-"))
    if args.prepare_only:
        print(prepare(args.model, collection))
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    # in a child: a parent holding torch would inflate every child's peak RSS (vfork + exec keeps its hiwater)
    spec_id = subprocess.run([sys.executable, __file__, "--prepare-only", "--model", args.model, "--collection",
                              str(collection)], env=env, check=True, stdout=subprocess.PIPE, text=True,
                             ).stdout.strip().splitlines()[-1]
    jobs: dict[str, list[str]] = {}
    for name in args.variants.split(","):
        body = SNIPPETS[name].format(model=args.model, query=QUERY, collection=str(collection), spec_id=spec_id)
        jobs[name] = [sys.executable, "-c", WRAPPER.format(body=body)]
    if args.cli:
        jobs["cli"] = ["/bin/sh", "-c", args.cli.format(collection=shlex.quote(str(collection)))]

    print(f"\nmodel {args.model} (random weights), {os.cpu_count()} CPUs, python {sys.version.split()[0]}, "
          f"{args.repeats} fresh processes each (first one warms the page cache and is not counted)\n")
    print(f"{'variant':<16} {'wall s (median)':>16} {'in-process s':>13} {'peak RSS MiB':>13}  torch imported")
    for name, argv in jobs.items():
        run_measured(argv, env)  # warm the page cache
        walls, peaks, inners, torch_seen = [], [], [], "-"
        for _ in range(args.repeats):
            wall, peak, out = run_measured(argv, env)
            walls.append(wall)
            peaks.append(peak)
            if name != "cli":
                import json

                info = json.loads(out.strip().splitlines()[-1])
                inners.append(info["inner_s"])
                torch_seen = str(info["torch_imported"])
        inner = f"{statistics.median(inners):.2f}" if inners else "-"
        print(f"{name:<16} {statistics.median(walls):>16.2f} {inner:>13} {max(peaks):>13.0f}  {torch_seen}")


if __name__ == "__main__":
    main()
