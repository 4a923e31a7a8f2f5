"""Indexing throughput on photo-sized JPEGs: decode-only, encode-only, end-to-end, and their ratio.

    python bench/bench_indexing.py --n 500 --model ViT-B-32          # 12 MP JPEGs, random-init weights

Random-init ViT-B-32 costs the same as real weights. Files are 25 distinct 12 MP scenes, each
saved once and then copied with a unique JPEG comment segment, so every file is distinct (own
sha256) while decoding costs exactly what a real 12 MP JPEG costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.collection import Collection  # noqa: E402
from indexer.encode.decode import decode_photo  # noqa: E402
from indexer.encode.run import make_loader, pending_items  # noqa: E402
from indexer.encode.encoders import load_encoder  # noqa: E402
from indexer.run import RunOptions, index_paths  # noqa: E402


def scene(seed: int, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([(x / w) * 255 * rng.random(), (y / h) * 255 * rng.random(),
                     np.full_like(x, 255 * rng.random())], axis=-1)
    noise = rng.normal(0, 12, size=(h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(h // 20, h // 4)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img


def with_comment(jpeg: bytes, text: str) -> bytes:
    payload = text.encode()
    seg = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + seg + jpeg[2:]


def make_corpus(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(folder.glob("*.jpg"))
    if len(existing) >= n:
        return existing[:n]
    bases = []
    for s in range(25):
        buf = folder / f".base{s}.jpg"
        if not buf.exists():
            scene(s, size).save(buf, quality=90)
        bases.append(buf.read_bytes())
    paths = []
    for i in range(n):
        p = folder / f"IMG_{i:05d}.jpg"
        if not p.exists():
            p.write_bytes(with_comment(bases[i % len(bases)], f"photo {i}"))
        paths.append(p)
    return paths


def decode_only(items: list[tuple[int, bytes]], encoder, batch: int, workers: int) -> float:
    loader = make_loader(items, encoder, batch, workers, 200_000_000)
    t = time.perf_counter()
    n = sum(len(b["ids"]) + len(b["errors"]) for b in loader)
    return n / (time.perf_counter() - t)


def encode_only(encoder, n: int, batch: int) -> float:
    size = encoder.image_size
    x = torch.randn(batch, 3, size, size)
    encoder.encode_images(x)  # warm-up
    t = time.perf_counter()
    done = 0
    while done < n:
        encoder.encode_images(x)
        done += batch
    return done / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "photodex-bench-12mp"))
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--encode-n", type=int, default=128, help="photos for the encode-only figure")
    args = ap.parse_args()

    t = time.perf_counter()
    paths = make_corpus(Path(args.dir), args.n, (args.width, args.height))
    print(f"corpus: {len(paths)} JPEGs {args.width}x{args.height} in {args.dir} "
          f"({sum(p.stat().st_size for p in paths) / 1e6:.0f} MB, ready in {time.perf_counter() - t:.0f}s)")
    encoder = load_encoder(args.model, args.pretrained, args.device, args.precision)
    print(f"encoder: {encoder.spec.id} on {encoder.device}, batch {args.batch_size}, decode workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")

    one = str(paths[0])
    full, draft = [], []
    for _ in range(5):
        t = time.perf_counter(); decode_photo(one); full.append(time.perf_counter() - t)  # noqa: E702
        t = time.perf_counter(); decode_photo(one, encoder.image_size); draft.append(time.perf_counter() - t)  # noqa: E702
    print(f"one 12 MP JPEG: full decode {statistics.median(full) * 1e3:.0f} ms, draft decode "
          f"{statistics.median(draft) * 1e3:.0f} ms -> draft speed-up {statistics.median(full) / statistics.median(draft):.1f}x")

    work = Path(tempfile.mkdtemp(prefix="photodex-bench-"))
    try:
        coll = Collection.open_for_encoder(work / "coll", encoder.spec)
        t = time.perf_counter()
        summary = index_paths(coll, encoder, [args.dir], RunOptions(batch_size=args.batch_size, workers=args.workers))
        run_s = time.perf_counter() - t
        e2e_run = summary.encode.encoded / run_s
        e2e_encode_phase = summary.encode.photos_per_second
        print(f"end-to-end: {summary.encode.encoded} photos, whole run (scan+hash+decode+encode+commit) "
              f"{e2e_run:.2f} photos/s; decode+encode+commit phase {e2e_encode_phase:.2f} photos/s")
        items = [(i, bytes(os.fsencode(str(p)))) for i, p in enumerate(paths)]
        dec = decode_only(items, encoder, args.batch_size, args.workers)
        print(f"decode-only (workers={args.workers}, draft + preprocess): {dec:.2f} photos/s")
        enc = encode_only(encoder, args.encode_n, args.batch_size)
        print(f"encode-only ({args.model}, batch {args.batch_size}): {enc:.2f} photos/s")
        bound = min(dec, enc)
        print(f"ratio end-to-end / min(decode, encode) = {e2e_encode_phase:.2f} / {bound:.2f} = {e2e_encode_phase / bound:.2f}")
        serial = 1 / (1 / dec + 1 / enc)
        print(f"(if decode and encode could not overlap at all: {serial:.2f} photos/s; "
              f"end-to-end / serial = {e2e_encode_phase / serial:.2f})")
        assert pending_items(coll) == []
        coll.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
