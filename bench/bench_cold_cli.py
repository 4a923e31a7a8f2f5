#!/usr/bin/env python
"""Cold-process wall time and peak RSS of everyday commands that should not load a model.

Generates a library of ``--n`` small JPEGs, indexes it once with a random tiny CLIP saved as a
``local-dir`` model (no download), then times fresh processes of:
``photodex --help``, ``photodex info``, ``photodex index LIB`` with nothing to encode (must not load
the encoder), and ``photodex search TEXT`` (fast text path; first run per query fills the cache, so
each repeat uses a new query). Targets: --help and info < 0.5 s, unchanged re-check <= 1 s,
search <= 1 s. Prints the median of ``--repeats`` runs.

    python bench/bench_cold_cli.py --n 5000
    python bench/bench_cold_cli.py --n 300 --model ViT-B-32      # random-init ViT-B-32: a real-size text tower
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ui.demo.photos import make_library  # noqa: E402
from ui.demo.tiny_clip import save_tiny_clip  # noqa: E402


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh ``python -m ui.cli`` process, measured by GNU time
    (the child's own RSS: a forked child's rusage would include this parent's memory)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with tempfile.NamedTemporaryFile("r") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", out.name, "-f", "%M", sys.executable, "-m", "ui.cli", *args],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{args} failed: {proc.stderr.decode()[-500:]}")
        return wall, int(out.read().split()[-1]) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", help="an open_clip model name indexed with random weights (--pretrained none), "
                                   "e.g. ViT-B-32; default: a random tiny CLIP")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="photodex-cold-"))
    if args.model:
        model_args, label = ["--model", args.model, "--pretrained", "none"], f"{args.model}, random weights"
    else:
        model, _ = save_tiny_clip(root / "model")
        model_args, label = ["--model", f"local-dir:{model}"], "tiny CLIP"
    make_library(root / "lib", args.n, size=(32, 24))
    coll = str(root / "coll")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ui.cli", "index", str(root / "lib"), "--collection", coll,
                    *model_args, "--workers", "1"], cwd=REPO, check=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=subprocess.DEVNULL)
    print(f"indexed {args.n} photos in {time.perf_counter() - t0:.1f}s ({label}); load average "
          f"{os.getloadavg()[0]:.2f}; {args.repeats} cold runs each:")
    commands = {
        "photodex --help": lambda i: ["--help"],
        "photodex info": lambda i: ["info", "--collection", coll],
        f"photodex index (unchanged, {args.n})": lambda i: ["index", str(root / "lib"), "--collection", coll],
        "photodex search (new query)": lambda i: ["search", f"a photo of thing {i}", "--collection", coll],
        "photodex search (cached query)": lambda i: ["search", "a photo of thing 0", "--collection", coll],
    }
    for name, argv in commands.items():
        runs = [run(argv(i)) for i in range(args.repeats)]
        wall = statistics.median(w for w, _ in runs)
        rss = max(r for _, r in runs)
        print(f"  {name:34s} median {wall:5.2f} s   peak RSS {rss:6.0f} MiB   (runs {', '.join(f'{w:.2f}' for w, _ in runs)})")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
