"""Image-tower candidates that run an ONNX export of the tower: onnxruntime int8 and (if installed) OpenVINO bf16.

Why: on the 2-core AMD EPYC dev box (avx512_bf16 + VNNI, shared with other jobs) the same random-weight ViT-B-32
ran 2.2-2.3x fp32's speed in onnxruntime with int8 dynamic quantisation and 2.4-2.7x in OpenVINO bf16, against
1.4-1.6x for torch bf16, at two threads (``bench/results/precision-cpu-2core.md``). They are probed like every
candidate, so they are used only where they measure faster and match fp32.

The export costs seconds (ViT-B-32: 17 s export + 12 s quantisation on the loaded box), so it is made once per
encoder spec and library versions and kept in the precision cache (``$PHOTODEX_PRECISION_CACHE``, default
``$XDG_CACHE_HOME/photodex/precision``)::

    graphs/<key>/visual.onnx (+ .data)   fp32 graph, pixels -> features
                                                   visual.int8.onnx          onnxruntime dynamic int8 (QInt8)

A graph folder is written in a staging folder and renamed into place, so a crash leaves no half graph; a graph
that does not load is removed and exported again once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .precision_towers import Candidate, _converted, precision_cache_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ONNX_OPSET = 17
FP32_FILE = "visual.onnx"
INT8_FILE = "visual.int8.onnx"
INPUT = "pixels"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def graphs_dir() -> Path:
    return precision_cache_dir() / "graphs"


def _graph_key(spec_id: str) -> str:
    parts = [spec_id, *(f"{d}={_version(d)}" for d in ("torch", "open_clip_torch", "onnx", "onnxruntime"))]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter and the quantiser warn per node (hundreds of lines) about things that do not matter here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _export(visual: "torch.nn.Module", size: int, dest: Path, int8: bool) -> None:
    import onnx
    import torch

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # _native_multi_head_attention has no ONNX symbolic
    raw = dest / "raw.onnx"
    try:
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            torch.onnx.export(visual, (torch.zeros(2, 3, size, size),), str(raw), dynamo=False,
                              opset_version=ONNX_OPSET, input_names=[INPUT], output_names=["features"],
                              dynamic_axes={INPUT: {0: "batch"}, "features": {0: "batch"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    graph = onnx.load(str(raw))
    onnx.save_model(graph, str(dest / FP32_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=FP32_FILE + ".data", size_threshold=1024)
    del graph
    raw.unlink()
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with _quiet():
            quantize_dynamic(str(dest / FP32_FILE), str(dest / INT8_FILE), weight_type=QuantType.QInt8)


def exported_graph(visual: "torch.nn.Module", spec_id: str, size: int, name: str, fresh: bool = False) -> Path:
    """The cached graph ``name`` (:data:`FP32_FILE` or :data:`INT8_FILE`) of ``spec_id``'s image tower, exported
    now if missing (or ``fresh``)."""
    final = graphs_dir() / _graph_key(spec_id)
    if fresh:
        shutil.rmtree(final, ignore_errors=True)
    if (final / name).is_file():
        return final / name
    staging = final.parent / f".staging-{uuid.uuid4().hex[:12]}"
    staging.mkdir(parents=True)
    try:
        log.info("exporting the image tower of %s to ONNX (once per encoder and library versions)", spec_id)
        _export(visual, size, staging, int8=True)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / name


class _OrtTower:
    """An onnxruntime session called like the tower: fp32 pixels (torch) -> features (torch)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.from_numpy(self.session.run(None, {INPUT: x.detach().cpu().numpy()})[0])


class _OpenVinoTower:
    """An OpenVINO compiled model (CPU plugin, an inference precision hint) called like the tower."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(str(path), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(path.parent / "openvino")})
        self.output = self.compiled.output(0)

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import numpy as np
        import torch

        request = self.compiled.create_infer_request()  # one per call: the encoder may be called from threads
        return torch.from_numpy(np.array(request.infer({0: x.detach().cpu().numpy()})[self.output]))


def _size(visual: "torch.nn.Module") -> int:
    size = getattr(visual, "image_size", 224)
    return int(max(size)) if isinstance(size, (list, tuple)) else int(size)


def _build(visual: "torch.nn.Module", spec_id: str, name: str, make: Any) -> "torch.nn.Module":
    import torch

    threads = torch.get_num_threads()
    path = exported_graph(visual, spec_id, _size(visual), name)
    try:
        tower = make(path, threads)
    except Exception as exc:  # noqa: BLE001 - a damaged cached graph: export it once more
        log.warning("the cached ONNX graph %s does not load (%s); exporting it again", path, exc)
        tower = make(exported_graph(visual, spec_id, _size(visual), name, fresh=True), threads)
    return _converted(tower, visual)


def onnx_candidates(spec_id: str) -> list[Candidate]:
    """onnxruntime int8 (onnxruntime is a dependency) and OpenVINO bf16 when ``openvino`` imports."""
    out = []
    if _version("onnxruntime") and _version("onnx"):
        out.append(Candidate(
            "onnxruntime-int8", "int8", lambda v: _build(v, spec_id, INT8_FILE, _OrtTower),
            units=("amx_int8", "avx512_vnni", "avx_vnni"), backend="onnxruntime",
            version=f"onnxruntime {_version('onnxruntime')} torch {_version('torch')}"))
    if _version("openvino"):
        out.append(Candidate(
            "openvino-bf16", "bf16", lambda v: _build(v, spec_id, FP32_FILE,
                                                      lambda p, t: _OpenVinoTower(p, t, "bf16")),
            units=("amx_bf16", "avx512_bf16"), backend="openvino",
            version=f"openvino {_version('openvino')} torch {_version('torch')}"))
    return out
