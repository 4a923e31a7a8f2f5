"""Which numeric path the image tower runs in: fp32, or a faster one this CPU offers that gives fp32's answers.

Off CUDA, ``precision=auto`` looks at the CPU's flags (:mod:`indexer.encode.cpu_features`) to pick the candidates worth
trying (bf16 needs ``avx512_bf16``/``amx_bf16``; int8 needs VNNI or AMX), then confirms once per (encoder spec,
machine) with a short probe: one fixed batch of generated images through the fp32 tower and each candidate,
interleaved, best of :data:`PROBE_ROUNDS`. A candidate is kept only if its minimum per-image cosine to fp32 is at
least :data:`MIN_COSINE` and it is at least :data:`MIN_SPEEDUP` times faster; the fastest kept one wins. What the
probe measured is cached (:class:`ProbeCache`, under the user cache dir) so later runs build the winner directly.

A forced ``bf16``/``int8``/``fp16`` (``--precision``, ``PHOTODEX_PRECISION``) passes the same cosine check but not the
speed one. Without the units, or below the cosine floor, it is refused with a warning that says why (with the
measured cosine) and the tower runs fp32: never silently worse vectors. A probe or a build that crashes warns and
falls back to fp32; the run goes on. Only the image tower changes: text encodes (and the exported text tower) stay
fp32. On CUDA the encoder keeps its autocast path (:func:`cuda_choice`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.atomic import atomic_write_json
from .cpu_features import CpuFeatures, cpu_features
from .precision_towers import Candidate, _bf16_tower, _fp16_tower, _int8_tower, precision_cache_dir
from ..core.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
MIN_COSINE = 0.999  # per image, against the fp32 tower on the probe batch
MIN_SPEEDUP = 1.1  # auto keeps a candidate only this much faster: smaller gains are within a shared machine's noise
PROBE_BATCH = 8  # ViT-B-32: 400 GEMM rows, enough for the GEMM kernels to reach their speed
PROBE_ROUNDS = 2
CACHE_FORMAT = 1


def check_precision(value: str) -> str:
    """``value`` if it names a precision, else a :class:`ConfigError` (one line, CLI exit code 2)."""
    if value not in PRECISIONS:
        raise ConfigError(f"unknown precision {value!r}; use {', '.join(PRECISIONS)}")
    return value


# ---- candidates ------------------------------------------------------------------------------------------------



def default_candidates(spec_id: str | None = None) -> list[Candidate]:
    """The CPU candidates photodex knows, in preference order (ties go to the earlier one). With ``spec_id``
    (which keys their cached ONNX export) also onnxruntime int8 and, when installed, OpenVINO bf16
    (:mod:`indexer.encode.precision_onnx`)."""
    import torch

    tv = f"torch {torch.__version__}"
    out = [
        Candidate("torch-bf16", "bf16", _bf16_tower, units=("amx_bf16", "avx512_bf16"), version=tv),
        Candidate("torch-int8", "int8", _int8_tower, units=("amx_int8", "avx512_vnni", "avx_vnni"), version=tv),
        Candidate("torch-fp16", "fp16", _fp16_tower, units=("amx_fp16", "avx512_fp16"), version=tv),
    ]
    if spec_id:
        from .precision_onnx import onnx_candidates

        out[2:2] = onnx_candidates(spec_id)
    return out


# ---- the outcome ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrecisionChoice:
    """What produces an encoder's image vectors, and why; recorded per index run in the collection."""

    requested: str
    precision: str = "fp32"
    backend: str = "torch"
    device: str = "cpu"
    candidate: str = "fp32"
    min_cosine: float | None = None  # to the fp32 tower on the probe batch (None: fp32 itself, or CUDA autocast)
    speedup: float | None = None
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.precision} ({self.backend}{'' if self.device == 'cpu' else ' on ' + self.device})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fp32_choice(requested: str, reason: str, device: str = "cpu") -> PrecisionChoice:
    return PrecisionChoice(requested, device=device, reason=reason)


def cuda_choice(requested: str, device: str = "cuda") -> tuple[PrecisionChoice, "torch.dtype | None"]:
    """CUDA keeps its autocast path: fp16 for ``auto``/``fp16``, bf16 when asked, none for fp32; int8 has no
    CUDA path here, so it is refused (fp32) with a warning."""
    import torch

    check_precision(requested)
    if requested == "int8":
        return _refused(requested, "int8 requested but photodex has no int8 path on CUDA", device), None
    if requested == "fp32":
        return fp32_choice(requested, "fp32 requested", device), None
    dtype = torch.bfloat16 if requested == "bf16" else torch.float16
    name = "bf16" if requested == "bf16" else "fp16"
    return PrecisionChoice(requested, name, "torch-autocast", device, f"cuda-autocast-{name}",
                           reason=f"CUDA autocast {name}"), dtype


@dataclass
class Measured:
    """One candidate on the probe batch: its minimum cosine to fp32 and its speed relative to fp32."""

    candidate: str
    precision: str
    backend: str
    version: str
    min_cosine: float | None = None
    speedup: float | None = None
    error: str | None = None
    measured_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def accurate(self) -> bool:
        return self.error is None and self.min_cosine is not None and self.min_cosine >= MIN_COSINE

    @property
    def fast(self) -> bool:
        return self.speedup is not None and self.speedup >= MIN_SPEEDUP


# ---- the probe cache -----------------------------------------------------------------------------------------------

def machine_key(spec_id: str, cpu: CpuFeatures | None = None) -> dict[str, Any]:
    """What a probe's outcome depends on: the encoder, the CPU (model + flags), torch and its thread count."""
    import torch

    cpu = cpu or cpu_features()
    return {"spec_id": spec_id, "cpu": cpu.model,
            "flags": hashlib.sha256(" ".join(sorted(cpu.flags)).encode()).hexdigest()[:16],
            "torch": torch.__version__, "threads": torch.get_num_threads()}


class ProbeCache:
    """Probe outcomes on disk, one JSON file per (encoder spec, machine); unreadable files count as missing."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else precision_cache_dir()

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.directory / f"{digest}.json"

    def load(self, key: dict[str, Any]) -> dict[str, Measured]:
        try:
            data = json.loads(self.path(key).read_text())
            if data.get("format") != CACHE_FORMAT or data.get("key") != key:
                return {}
            return {name: Measured(**m) for name, m in data["candidates"].items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}

    def store(self, key: dict[str, Any], measured: dict[str, Measured]) -> None:
        try:
            atomic_write_json(self.path(key), {"format": CACHE_FORMAT, "key": key,
                                               "candidates": {n: asdict(m) for n, m in measured.items()}})
        except OSError as exc:  # a read-only home: the probe runs again next time, nothing else changes
            log.warning("cannot cache the precision probe in %s: %s", self.directory, exc)


# ---- the probe ---------------------------------------------------------------------------------------------------

def probe_pixels(preprocess: Callable[[Any], "torch.Tensor"], size: int, n: int = PROBE_BATCH) -> "torch.Tensor":
    """A fixed batch of photo-like images (smooth colour fields, edges, fine noise), preprocessed like photos."""
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        coarse = rng.random((4 + i % 5, 4 + i % 7, 3)).astype(np.float32)
        field_ = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                            np.float32)
        field_ += rng.normal(0, 8 + 4 * (i % 3), field_.shape)
        y0, x0 = rng.integers(0, size // 2, 2)
        field_[y0:y0 + size // 3, x0:x0 + size // 3] = rng.integers(0, 256, 3)  # one hard-edged patch
        images.append(Image.fromarray(np.clip(field_, 0, 255).astype(np.uint8)))
    return torch.stack([preprocess(im) for im in images])


def _features(tower: "torch.nn.Module", pixels: "torch.Tensor") -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = tower(pixels)
    out = out[0] if isinstance(out, (tuple, list)) else out
    return out.float().cpu().numpy()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest per-row cosine between two feature batches (nan/inf rows count as -1)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        return -1.0
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), -1.0)
    cos = np.where(np.isfinite(cos), cos, -1.0)
    return float(cos.min())


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"


def probe(visual: "torch.nn.Module", candidates: Sequence[Candidate], pixels: "torch.Tensor",
          rounds: int = PROBE_ROUNDS) -> tuple[dict[str, Measured], dict[str, "torch.nn.Module"]]:
    """Measure each candidate against the fp32 ``visual`` on ``pixels``: (results, the towers that built).

    Timed passes are interleaved (fp32, then each candidate, ``rounds`` times, after one warm-up each) and the
    best of each is kept, so load from other work slows all of them alike. A candidate that fails to build or run
    gets an ``error`` and is left out."""
    reference = _features(visual, pixels)
    measured: dict[str, Measured] = {}
    towers: dict[str, torch.nn.Module] = {}
    for cand in candidates:
        m = Measured(cand.name, cand.precision, cand.backend, cand.version)
        measured[cand.name] = m
        try:
            tower = cand.build(visual)
            m.min_cosine = min_cosine(_features(tower, pixels), reference)
            towers[cand.name] = tower
        except Exception as exc:  # noqa: BLE001 - any failure of a candidate means: not this one
            m.error = _first_line(exc)
            log.warning("precision candidate %s failed on the probe batch (%s); it is not used", cand.name, m.error)
    best = {name: float("inf") for name in ["fp32", *towers]}
    runs: dict[str, torch.nn.Module] = {"fp32": visual, **towers}
    for _ in range(rounds):
        for name, tower in runs.items():
            if name != "fp32" and measured[name].error is not None:
                continue
            start = time.perf_counter()
            try:
                _features(tower, pixels)
            except Exception as exc:  # noqa: BLE001
                measured[name].error = _first_line(exc)
                continue
            best[name] = min(best[name], time.perf_counter() - start)
    for name in towers:
        if measured[name].error is None and best[name] > 0:
            measured[name].speedup = round(best["fp32"] / best[name], 3)
    towers = {n: t for n, t in towers.items() if measured[n].error is None}
    for m in measured.values():
        log.info("precision probe: %s min cosine %s, %sx fp32's speed%s", m.candidate, m.min_cosine, m.speedup,
                 f" ({m.error})" if m.error else "")
    return measured, towers


# ---- the choice ----------------------------------------------------------------------------------------------------

def _cpu_lacks(cand: Candidate, cpu: CpuFeatures) -> bool:
    return bool(cand.units) and not any(u in cpu.flags for u in cand.units)


def choose_cpu_precision(
    model: "torch.nn.Module",
    spec_id: str,
    requested: str,
    pixels: Callable[[], "torch.Tensor"],
    candidates: Sequence[Candidate] | None = None,
    cache: ProbeCache | None = None,
    cpu: CpuFeatures | None = None,
) -> PrecisionChoice:
    """Settle the image tower's precision on the CPU and, if a candidate wins, put it in ``model.visual``.

    ``pixels``: the probe batch, made only when a probe runs. ``candidates``: the paths to consider (default
    :func:`default_candidates`); ``cache``: where probe outcomes live (default under the user cache dir)."""
    check_precision(requested)
    if requested == "fp32":
        return fp32_choice(requested, "fp32 requested")
    cpu = cpu or cpu_features()
    try:
        pool = list(default_candidates(spec_id) if candidates is None else candidates)
        wanted = [c for c in pool if requested == "auto" or c.precision == requested]
        if not wanted:
            return _refused(requested, f"{requested} requested but photodex has no {requested} path for the CPU")
        usable = [c for c in wanted if not _cpu_lacks(c, cpu)]
        if not usable:
            units = sorted({u for c in wanted for u in c.units})
            if requested == "auto":
                return fp32_choice(requested, f"auto: this CPU ({cpu.model}) has none of {', '.join(units)}")
            return _refused(requested, f"{requested} requested but this CPU ({cpu.model}) has none of the units it "
                                       f"needs ({' or '.join(units)})")
        return _settle(model, spec_id, requested, usable, pixels, cache or ProbeCache(), cpu)
    except Exception as exc:  # noqa: BLE001 - the probe must never stop a run: fp32 always works
        log.warning("the precision probe failed (%s); encoding in fp32", _first_line(exc))
        return fp32_choice(requested, f"probe failed ({_first_line(exc)}); fp32")


def _refused(requested: str, why: str, device: str = "cpu") -> PrecisionChoice:
    log.warning("%s: encoding in fp32", why)
    return fp32_choice(requested, f"{why}; fp32", device)


def _settle(model: "torch.nn.Module", spec_id: str, requested: str, usable: list[Candidate],
            pixels: Callable[[], "torch.Tensor"], cache: ProbeCache, cpu: CpuFeatures) -> PrecisionChoice:
    key = machine_key(spec_id, cpu)
    known = cache.load(key)
    fresh = [c for c in usable if c.name not in known or known[c.name].version != c.version]
    towers: dict[str, torch.nn.Module] = {}
    if fresh:
        log.info("probing %s for %s on %s (once per encoder and machine)",
                 ", ".join(c.name for c in fresh), spec_id, cpu.model)
        results, towers = probe(model.visual, fresh, pixels())
        known.update(results)
        cache.store(key, known)
    results = [known[c.name] for c in usable]
    keep = [m for m in results if m.accurate and (requested != "auto" or m.fast)]
    if not keep:
        return _nothing_kept(requested, results)
    order = {c.name: i for i, c in enumerate(usable)}
    best = max(keep, key=lambda m: (m.speedup or 0.0, -order[m.candidate]))
    cand = next(c for c in usable if c.name == best.candidate)
    try:
        tower = towers.get(cand.name) or cand.build(model.visual)
    except Exception as exc:  # noqa: BLE001 - e.g. a library removed since the probe
        log.warning("cannot build %s (%s); encoding in fp32", cand.name, _first_line(exc))
        return fp32_choice(requested, f"{cand.name} failed to build ({_first_line(exc)}); fp32")
    towers.clear()
    model.visual = tower  # the fp32 tower's weights go with it
    speed = f"{best.speedup:.2f}x fp32's speed" if best.speedup is not None else "speed not measured"
    reason = f"{'auto' if requested == 'auto' else 'forced'}: {cand.name}, min cosine {best.min_cosine:.5f} to fp32, {speed}"
    if requested != "auto" and not best.fast:
        log.info("%s requested: %s is %s here", requested, cand.name, speed)
    log.info("image tower precision: %s", reason)
    return PrecisionChoice(requested, cand.precision, cand.backend, "cpu", cand.name, best.min_cosine,
                           best.speedup, reason)


def _nothing_kept(requested: str, results: list[Measured]) -> PrecisionChoice:
    def why(m: Measured) -> str:
        if m.error:
            return f"{m.candidate} failed ({m.error})"
        if not m.accurate:
            return f"{m.candidate} min cosine {m.min_cosine:.5f} < {MIN_COSINE}"
        return f"{m.candidate} only {m.speedup:.2f}x fp32's speed (< {MIN_SPEEDUP})"

    detail = "; ".join(why(m) for m in results)
    if requested == "auto":
        log.info("precision auto: %s; encoding in fp32", detail)
        return fp32_choice(requested, f"auto: {detail}; fp32")
    return _refused(requested, f"{requested} requested but refused: {detail}")
