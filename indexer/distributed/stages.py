"""The two Ray Data stages of an index run and the rows passed between them.

* :func:`decode_stage` (CPU tasks): photo id + path in; decoded, preprocessed pixels (or, when the
  encode actors decode JPEGs on their GPU, the JPEG's bytes) plus EXIF facts or the error out. It is
  the local engine's :class:`~indexer.encode.run.PhotoDataset` item by item, so decoding, draft
  scaling, EXIF handling, preprocessing and error reasons are the local engine's, unchanged.
* :class:`EncodeActor` (actor pool, one model per actor, GPU or CPU): pixels in, unit vectors out.

Every batch is plain numpy columns (``id``, ``kind``, ``error``, ``facts`` JSON, then ``pixels`` or
``data``/``orientation``; the actor returns ``vector`` instead of pixels), so Ray moves them through
its object store without pickling Python objects.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np

from ..encode.decode import DecodeError, PhotoFacts, decode_photo
from ..core.errors import EncoderMismatchError

log = logging.getLogger(__name__)

KIND_ERROR, KIND_PIXELS, KIND_JPEG = 0, 1, 2
_FACT_FIELDS = [f.name for f in fields(PhotoFacts) if f.name != "extra"]


# ---- facts travel as JSON text ------------------------------------------------------------------
def facts_to_json(facts: PhotoFacts | None) -> str:
    if facts is None:
        return ""
    d = {name: getattr(facts, name) for name in _FACT_FIELDS}
    if d["taken_at"] is not None:
        d["taken_at"] = d["taken_at"].isoformat()
    return json.dumps(d)


def facts_from_json(text: str) -> PhotoFacts:
    d = json.loads(text) if text else {}
    if d.get("taken_at"):
        d["taken_at"] = datetime.fromisoformat(d["taken_at"])
    return PhotoFacts(**{k: v for k, v in d.items() if k in _FACT_FIELDS})


# ---- decode stage (Ray tasks) -------------------------------------------------------------------
@dataclass(frozen=True)
class DecodeConfig:
    """What a decode task needs; small and picklable (the encoder's preprocessing as its spec dict)."""

    preprocess: dict[str, Any]
    target_size: int
    pixel_shape: tuple[int, ...]
    max_image_pixels: int
    raw_jpegs: bool = False  # pass GPU-decodable JPEGs on as bytes (the actors decode them)


@lru_cache(maxsize=8)
def _preprocess(cfg_json: str) -> Callable[..., Any]:
    """open_clip's eval transform for a spec's preprocessing, built once per worker process."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**json.loads(cfg_json)), is_train=False)


def preprocess_for(preprocess: dict[str, Any]) -> Callable[..., Any]:
    """The same transform :func:`indexer.encode.encoders.load_encoder` gives the encoder, without the model."""
    return _preprocess(json.dumps(preprocess, sort_keys=True))


def _read(path: bytes) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None  # decode_photo says why


def decode_stage(batch: dict[str, np.ndarray], cfg: DecodeConfig) -> dict[str, np.ndarray]:
    """Decode one batch of (id, path) rows; see the module docstring for the columns."""
    from ..encode.run import PhotoDataset, configure_decoding

    configure_decoding(cfg.max_image_pixels)
    preprocess = preprocess_for(cfg.preprocess)
    ids = np.asarray(batch["id"], dtype=np.int64)
    paths = [bytes(p) for p in batch["path"]]
    n = len(ids)
    kind = np.full(n, KIND_ERROR, np.int8)
    errors, facts = [""] * n, [""] * n
    if not cfg.raw_jpegs:
        pixels = np.zeros((n, *cfg.pixel_shape), np.float32)
        dataset = PhotoDataset(list(zip(ids.tolist(), paths)), preprocess, cfg.target_size)
        for i in range(n):
            _, tensor, photo_facts, error = dataset[i]
            if tensor is None:
                errors[i] = error or "cannot decode"
            else:
                pixels[i] = tensor.numpy()
                kind[i], facts[i] = KIND_PIXELS, facts_to_json(photo_facts)
        return {"id": ids, "kind": kind, "error": np.array(errors, object), "facts": np.array(facts, object),
                "pixels": pixels}
    from .gpu_decode import probe_jpeg

    data, orientation = [b""] * n, np.ones(n, np.int8)
    for i, path in enumerate(paths):
        raw = _read(path) if os.path.splitext(path)[1].lower() in (b".jpg", b".jpeg", b".jpe", b".jfif") else None
        probe = probe_jpeg(raw) if raw else None
        if probe is not None and probe.gpu_ok:
            kind[i], data[i], orientation[i] = KIND_JPEG, raw, probe.orientation
            facts[i] = facts_to_json(probe.facts)
            continue
        item = PhotoDataset([(int(ids[i]), path)], preprocess, cfg.target_size)[0]  # the CPU path
        if item[1] is None:
            errors[i] = item[3] or "cannot decode"
        else:
            kind[i], data[i], facts[i] = KIND_PIXELS, item[1].numpy().astype(np.float32).tobytes(), facts_to_json(item[2])
    return {"id": ids, "kind": kind, "error": np.array(errors, object), "facts": np.array(facts, object),
            "data": np.array(data, object), "orientation": orientation}


# ---- encode stage (Ray actors) ------------------------------------------------------------------
class EncodeActor:
    """One encoder per actor, loaded from ``recipe`` in the actor and checked against ``spec_id``."""

    def __init__(self, recipe: Callable[[], Any], spec_id: str, cfg: DecodeConfig,
                 gpu_device: str | None = "cuda", torch_threads: int | None = None) -> None:
        import torch

        from ..encode.run import configure_decoding

        configure_decoding(cfg.max_image_pixels)
        self.cfg = cfg
        self.encoder = recipe()
        if torch_threads or self.encoder.device == "cpu":
            # Ray gives a worker as many threads as CPUs it asked for (1); a CPU encoder, like the local
            # engine's, uses every core of its host unless told otherwise (decode tasks share them).
            torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        if self.encoder.spec.id != spec_id:
            raise EncoderMismatchError(f"worker loaded encoder {self.encoder.spec.id}, "
                                       f"but the collection was built with {spec_id}")
        self.gpu_device, self.tensor_pre = None, None
        if cfg.raw_jpegs:
            from .gpu_decode import TensorPreprocess, cuda_decode_available

            self.tensor_pre = TensorPreprocess.from_spec(cfg.preprocess)
            usable, why = (True, "requested") if gpu_device != "cuda" else cuda_decode_available()
            self.gpu_device = gpu_device if usable and self.tensor_pre is not None else None
            if self.gpu_device is None:
                log.warning("batched JPEG decoding unavailable in this worker (%s); decoding on the CPU", why)
        log.info("encode worker ready: %s on %s, %d torch threads (pid %d)", spec_id, self.encoder.device,
                 torch.get_num_threads(), os.getpid())

    def _cpu_decode(self, data: bytes) -> tuple[Any, str]:
        try:
            img, _ = decode_photo(io.BytesIO(data), self.cfg.target_size)
            return self.encoder.preprocess(img), ""
        except DecodeError as exc:
            return None, str(exc)
        except Exception as exc:  # noqa: BLE001 - as PhotoDataset: a per-photo error
            return None, f"cannot preprocess: {type(exc).__name__}: {exc}"

    def _tensors(self, batch: dict[str, np.ndarray], kind: np.ndarray, errors: list[str]) -> list[Any]:
        import torch

        n = len(kind)
        out: list[Any] = [None] * n
        if "pixels" in batch:
            rows = np.flatnonzero(kind == KIND_PIXELS)
            pixels = torch.from_numpy(np.array(batch["pixels"][rows], np.float32))  # a writable copy
            for j, i in enumerate(rows):
                out[i] = pixels[j]
            return out
        data = batch["data"]
        for i in np.flatnonzero(kind == KIND_PIXELS):
            out[i] = torch.from_numpy(np.frombuffer(data[i], np.float32).reshape(self.cfg.pixel_shape).copy())
        jpeg_rows = np.flatnonzero(kind == KIND_JPEG)
        decoded = None
        if len(jpeg_rows) and self.gpu_device is not None:
            from .gpu_decode import decode_jpeg_batch

            decoded = decode_jpeg_batch([data[i] for i in jpeg_rows], batch["orientation"][jpeg_rows].tolist(),
                                        self.tensor_pre, self.gpu_device)
        for j, i in enumerate(jpeg_rows):
            if decoded is not None:
                out[i] = decoded[j]
                continue
            out[i], errors[i] = self._cpu_decode(data[i])
            if out[i] is None:
                kind[i] = KIND_ERROR
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        kind = np.asarray(batch["kind"]).copy()
        errors = [str(e) for e in batch["error"]]
        tensors = self._tensors(batch, kind, errors)
        ok = [i for i, t in enumerate(tensors) if t is not None]
        vectors = np.zeros((len(kind), self.encoder.spec.embed_dim), np.float32)
        if ok:
            device = self.encoder.device
            vectors[ok] = self.encoder.encode_images(torch.stack([tensors[i].to(device) for i in ok]))
        choice = getattr(self.encoder, "precision", None)  # what made these vectors, recorded by the driver
        label = json.dumps(choice.to_dict(), sort_keys=True) if choice is not None else ""
        return {"id": np.asarray(batch["id"], np.int64), "ok": kind != KIND_ERROR,
                "error": np.array(errors, object), "facts": batch["facts"], "vector": vectors,
                "precision": np.array([label] * len(kind), object)}
