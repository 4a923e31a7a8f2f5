"""The encode phase against its bound: how close photodex's image encoding gets to this CPU's GEMM rate.

Bound (images/s) = the GEMM rate this machine measures in the chosen dtype / the GFLOP of one image (8.8 for
ViT-B-32 at 224 px: 4.4 GMAC, nearly all in the transformer's Linear layers). The GEMM rate is measured on the
tower's own GEMM shapes (qkv, attention out, MLP up and down at ``batch x tokens`` rows), weighted by their FLOPs,
in the kernels the chosen path computes with (torch fp32/bf16/int8 dynamic Linear, or the same GEMMs exported to
ONNX and run in onnxruntime int8 / OpenVINO bf16 when the probe chose those). Reported, each the best
of ``--repeats`` interleaved rounds (GEMMs and encodes alternate, so load from other work hits both alike):

* ``encode``: ``Encoder.encode_images`` on an already preprocessed batch (the model alone);
* ``index`` (with ``--photos N``): the encode phase of an index run over N generated 640x480 JPEGs, decode
  workers included (``EncodeReport.photos_per_second``), one run per round on a fresh collection.

Goal: encode / bound >= 0.8. Examples::

    python bench/bench_encode_bound.py --precision auto --batch 32 --repeats 5
    python bench/bench_encode_bound.py --precision fp32 --photos 96 --repeats 3

The probe cache lives in a temporary XDG_CACHE_HOME unless ``--keep-cache``: the first load pays for the probe
and says how long it took.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

log = logging.getLogger("bench_encode_bound")

GFLOP_PER_IMAGE = {"ViT-B-32": 8.8, "ViT-B-16": 35.1, "ViT-L-14": 162.0}


def _gemm_shapes(visual, batch: int) -> list[tuple[int, int, int]]:
    """(rows, in, out) of every Linear-like GEMM in one forward pass of a ViT image tower."""
    width = int(visual.conv1.out_channels)
    grid = visual.grid_size if isinstance(visual.grid_size, tuple) else (visual.grid_size, visual.grid_size)
    rows = batch * (grid[0] * grid[1] + 1)
    layers = len(visual.transformer.resblocks)
    hidden = int(visual.transformer.resblocks[0].mlp.c_fc.out_features)
    per_layer = [(rows, width, 3 * width), (rows, width, width), (rows, width, hidden), (rows, hidden, width)]
    return per_layer * layers


class _Layers:
    """One Linear per distinct GEMM shape, applied each to its own input (for export to ONNX)."""

    def __new__(cls, unique):
        import torch

        class Layers(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.layers = torch.nn.ModuleList(torch.nn.Linear(k, n) for _, k, n in unique)

            def forward(self, *xs):
                return tuple(layer(x) for layer, x in zip(self.layers, xs))

        return Layers().eval()


def gemm_rate(shapes: list[tuple[int, int, int]], choice, tmp: Path):
    """A zero-argument callable running those GEMMs once in the chosen path's own kernels (torch fp32/bf16/int8
    dynamic Linear, onnxruntime int8 MatMulInteger, OpenVINO bf16), and their FLOPs."""
    import torch

    unique = sorted(set(shapes))
    count = {s: shapes.count(s) for s in unique}
    flops = sum(2 * m * k * n * count[(m, k, n)] for m, k, n in unique)
    inputs = [torch.randn(m, k) for m, k, _ in unique]
    if choice.backend in ("onnxruntime", "openvino"):
        from indexer.encode.precision_onnx import _quiet

        path = tmp / "gemms.onnx"
        names = [f"x{i}" for i in range(len(unique))]
        with _quiet(), torch.no_grad():
            torch.onnx.export(_Layers(unique), tuple(inputs), str(path), dynamo=False, opset_version=17,
                              input_names=names)
        feeds = {n: x.numpy() for n, x in zip(names, inputs)}
        if choice.backend == "onnxruntime":
            import onnxruntime as ort
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with _quiet():
                quantize_dynamic(str(path), str(tmp / "gemms.int8.onnx"), weight_type=QuantType.QInt8)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = ort.InferenceSession(str(tmp / "gemms.int8.onnx"), opts, providers=["CPUExecutionProvider"])
            once = lambda: sess.run(None, feeds)  # noqa: E731
        else:
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU", {
                "INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "PERFORMANCE_HINT": "LATENCY"})
            req = compiled.create_infer_request()
            once = lambda: req.infer(feeds)  # noqa: E731
        reps = max(count.values())  # every shape occurs once per layer

        def run() -> None:
            for _ in range(reps):
                once()

        return run, flops
    if choice.precision == "int8":
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mods = [torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(k, n)),
                                                           {torch.nn.Linear}, dtype=torch.qint8)
                    for _, k, n in unique]
    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[choice.precision]
        mods = [torch.nn.Linear(k, n).to(dtype) for _, k, n in unique]
        inputs = [x.to(dtype) for x in inputs]

    def run() -> None:
        with torch.inference_mode():
            for mod, x, shape in zip(mods, inputs, unique):
                for _ in range(count[shape]):
                    mod(x)

    return run, flops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--photos", type=int, default=0, help="also time the encode phase of an index run of N photos")
    ap.add_argument("--workers", type=int, default=1, help="decode workers of that index run")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--keep-cache", action="store_true", help="use the user's probe cache instead of a fresh one")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # open_clip logs its model building on the root logger
    log.setLevel(logging.INFO)
    tmp = Path(tempfile.mkdtemp(prefix="encode-bound-"))
    if not args.keep_cache:
        os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")

    import numpy as np
    import torch

    import open_clip

    from indexer.encode.cpu_features import cpu_description
    from indexer.encode.encoders import load_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    log.info("%s", cpu_description())
    log.info("torch %s, %d threads, load average %s", torch.__version__, torch.get_num_threads(),
             " ".join(f"{x:.1f}" for x in os.getloadavg()))
    start = time.perf_counter()
    enc = load_encoder(args.model, None, device="cpu", precision=args.precision)
    log.info("encoder loaded in %.1fs (probe included when not cached): %s", time.perf_counter() - start,
             enc.precision.reason)
    arch = enc.model.visual
    if not hasattr(arch, "transformer"):  # a converted tower: its torch module, else the fp32 architecture
        inner = arch.__dict__.get("inner")
        arch = inner if hasattr(inner, "transformer") else open_clip.create_model(args.model).visual
    gemms, flops = gemm_rate(_gemm_shapes(arch, args.batch), enc.precision, tmp)
    gflop = GFLOP_PER_IMAGE.get(args.model)
    if gflop is None:
        raise SystemExit(f"no GFLOP figure for {args.model}; known: {', '.join(GFLOP_PER_IMAGE)}")
    pixels = torch.randn(args.batch, 3, enc.image_size, enc.image_size, generator=torch.Generator().manual_seed(0))
    enc.encode_images(pixels)
    gemms()  # warm-up both

    index_run = None
    if args.photos:
        from PIL import Image

        from indexer.collection import Collection
        from indexer.run import RunOptions, index_paths

        lib = tmp / "library"
        rng = np.random.default_rng(0)
        for i in range(args.photos):
            path = lib / f"{i % 4}" / f"IMG_{i:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(base).resize((640, 480), Image.BICUBIC).save(path, quality=90)

        def index_run() -> float:
            coll = Collection.open_for_encoder(tmp / f"coll-{time.monotonic_ns()}", enc.spec)
            with coll:
                summary = index_paths(coll, enc, [lib], RunOptions(batch_size=args.batch, workers=args.workers))
            return summary.encode.photos_per_second

    best_gemm, best_enc, best_index = float("inf"), float("inf"), 0.0
    for _ in range(args.repeats):
        t = time.perf_counter()
        gemms()
        best_gemm = min(best_gemm, time.perf_counter() - t)
        t = time.perf_counter()
        enc.encode_images(pixels)
        best_enc = min(best_enc, time.perf_counter() - t)
        if index_run is not None:
            best_index = max(best_index, index_run())
    rate = flops / best_gemm / 1e9
    bound = rate / gflop
    encode = args.batch / best_enc
    log.info("precision %s (%s); GEMM rate %.1f GFLOP/s on the tower's shapes -> bound %.2f img/s at %.1f GFLOP/img",
             enc.precision.precision, enc.precision.candidate, rate, bound, gflop)
    log.info("encode (model only, batch %d): %.2f img/s = %.2f of the bound", args.batch, encode, encode / bound)
    if index_run is not None:
        log.info("index encode phase (%d photos 640x480, %d decode workers): %.2f photos/s = %.2f of the bound",
                 args.photos, args.workers, best_index, best_index / bound)
    log.info("load average after: %s", " ".join(f"{x:.1f}" for x in os.getloadavg()))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
