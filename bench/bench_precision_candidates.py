"""Which CPU path encodes photos fastest at fp32's answers? Every candidate on one machine, one run.

ViT-B-32 image tower with random weights (open_clip.create_model, seed 0), one fixed batch; each candidate's
img/s (best of ``--repeats`` interleaved rounds, after a warm-up) and its minimum cosine to the fp32 eager model::

    python bench/bench_precision_candidates.py --batch 32 --repeats 5
    PYTHONPATH=/tmp/ovpkg python bench/bench_precision_candidates.py   # OpenVINO from a side folder

Candidates: torch fp32 (eager), torch autocast bf16, torch with weights+inputs cast to bf16 (LayerNorm and the
softmax accumulate in fp32 inside their CPU kernels), torch int8 dynamic quantisation of the Linear layers,
onnxruntime fp32 and int8 (dynamic, QInt8 weights), and OpenVINO fp32 / bf16 when ``openvino`` imports.
The machine's CPU model and flags are printed first; ratios are within this one run.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from indexer.encode.cpu_features import cpu_description  # noqa: E402

log = logging.getLogger("bench_precision_candidates")


def _min_cos(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def _export_onnx(visual: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(visual, (x[:2],), str(path), dynamo=False, opset_version=17, input_names=["pixels"],
                              output_names=["features"], dynamic_axes={"pixels": {0: "b"}, "features": {0: "b"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="run only these candidates")
    ap.add_argument("--threads", type=int, help="torch/onnxruntime/OpenVINO threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import open_clip

    log.info("%s", cpu_description())
    log.info("torch %s, threads %d, open_clip %s", torch.__version__, torch.get_num_threads(), open_clip.__version__)
    torch.manual_seed(0)
    visual = open_clip.create_model(args.model).visual.eval()
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    xn = x.numpy()

    def torch_run(net: torch.nn.Module, dtype: torch.dtype | None = None, autocast: bool = False):
        def run() -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                inp = x.to(dtype) if dtype is not None else x
                return net(inp).float().numpy()
        return run

    cands: dict[str, Callable[[], Callable[[], np.ndarray]]] = {
        "torch fp32": lambda: torch_run(visual),
        "torch autocast bf16": lambda: torch_run(visual, autocast=True),
        "torch bf16 weights+inputs": lambda: torch_run(copy.deepcopy(visual).to(torch.bfloat16), torch.bfloat16),
        "torch int8 dynamic (Linear)": lambda: torch_run(torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(visual), {torch.nn.Linear}, dtype=torch.qint8)),
    }
    tmp = Path(tempfile.mkdtemp(prefix="precision-bench-"))
    onnx_path = tmp / "visual.onnx"

    def ort(path_fn: Callable[[], Path]):
        def make() -> Callable[[], np.ndarray]:
            import onnxruntime as rt

            opts = rt.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            sess = rt.InferenceSession(str(path_fn()), opts, providers=["CPUExecutionProvider"])
            return lambda: sess.run(None, {"pixels": xn})[0]
        return make

    def onnx_fp32() -> Path:
        if not onnx_path.exists():
            _export_onnx(visual, x, onnx_path)
        return onnx_path

    def onnx_int8() -> Path:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = tmp / "visual.int8.onnx"
        quantize_dynamic(str(onnx_fp32()), str(out), weight_type=QuantType.QInt8)
        return out

    cands["onnxruntime fp32"] = ort(onnx_fp32)
    cands["onnxruntime int8 dynamic"] = ort(onnx_int8)

    def ov_candidate(precision: str):
        def make() -> Callable[[], np.ndarray]:
            import openvino as ov

            core = ov.Core()
            compiled = core.compile_model(str(onnx_fp32()), "CPU", {
                "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                "PERFORMANCE_HINT": "LATENCY"})
            req = compiled.create_infer_request()
            return lambda: np.array(req.infer({0: xn})[compiled.output(0)])
        return make

    try:
        import openvino  # noqa: F401

        cands["openvino fp32"] = ov_candidate("f32")
        cands["openvino bf16"] = ov_candidate("bf16")
    except ImportError:
        log.info("openvino not importable: skipped (pip install openvino)")

    runners: dict[str, Callable[[], np.ndarray]] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, make in cands.items():
        if args.only and name not in args.only:
            continue
        try:
            run = make()
            outputs[name] = run()  # warm-up (oneDNN primitives, ORT arena) and the output compared
            runners[name] = run
        except Exception as exc:  # noqa: BLE001 - a candidate that does not run is a result too
            log.info("%-30s failed: %s: %s", name, type(exc).__name__, str(exc).splitlines()[0][:200])
    # interleaved rounds: load from other work on a shared machine slows every candidate alike
    best = dict.fromkeys(runners, float("inf"))
    for _ in range(args.repeats):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t)
    ref = torch_run(visual)()
    rows = [(name, args.batch / best[name], _min_cos(outputs[name], ref)) for name in runners]
    base = rows[0][1] if rows else 1.0
    log.info("\n| candidate | img/s | vs fp32 | min cosine to fp32 |\n|---|---|---|---|")
    for name, ips, cos in rows:
        log.info("| %s | %.2f | %.2fx | %.6f |", name, ips, ips / base, cos)
    os.environ.get("KEEP_TMP") or __import__("shutil").rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
