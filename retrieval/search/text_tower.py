"""The text tower alone, exported to ONNX, so ``photodex search TEXT`` answers without torch.

A collection keeps one export of its encoder's text tower in ``<collection>/text_tower/``::

    text_tower/
      text_tower.json          sidecar, written last (the commit point): spec id, format, tokenizer, sha256s
      <export id>/model.onnx   graph: int64 token ids (batch, context) -> float32 L2-normalised (batch, dim)
      <export id>/model.onnx.data          the weights (ONNX external data)
      <export id>/bpe_merges.txt.gz        CLIP BPE merges (open_clip SimpleTokenizer) or tokenizer.json (HF)

:func:`load_text_tower` / :func:`try_load_text_tower` load an export with numpy + onnxruntime and a torch-free
tokenizer (:mod:`retrieval.search.tokenizer`); they never import torch, open_clip or transformers. The export is
written by :mod:`retrieval.search.text_tower_export` (from a loaded encoder, torch side), which checks it
before it is committed.

Checksums: ``load_text_tower(verify="auto")`` hashes a file only when its size or mtime differ from what the
sidecar recorded (hashing ViT-B-32's 254 MB costs ~0.16 s, a fifth of the cold-start budget); ``"full"`` always
hashes (``ensure_text_tower`` does).

Why ONNX + onnxruntime, with the cold-start figures: ``bench/results/text-tower-cpu-2core.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from indexer.core.errors import ConfigError, EncoderMismatchError

from .tokenizer import BpeMergesError, ClipBpeTokenizer, HFTokenizersTokenizer

log = logging.getLogger(__name__)

FOLDER_NAME = "text_tower"
SIDECAR = "text_tower.json"
FORMAT = "onnx"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
BPE_FILE = "bpe_merges.txt.gz"
HF_TOKENIZER_FILE = "tokenizer.json"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "embeddings"
ENCODE_BATCH = 64


class TextTowerError(ConfigError):
    """The exported text tower is unusable; the caller falls back to the full encoder."""


class TextTowerMissingError(TextTowerError):
    """No export exists in the folder."""


class TextTowerCorruptError(TextTowerError):
    """The export is incomplete, unreadable or fails its checksums."""


class TextTowerMismatchError(TextTowerError, EncoderMismatchError):
    """The export (or the collection) belongs to another encoder spec."""


class TextTowerExportError(TextTowerError):
    """This encoder's text tower cannot be exported (or the export does not match the model)."""


def tokenizer_from_meta(folder: Path, meta: dict[str, Any]) -> Callable[[Sequence[str]], np.ndarray]:
    """The tokenizer a sidecar's ``tokenizer`` entry describes, its files read from ``folder``."""
    kind = meta.get("kind")
    if kind == "clip_bpe":
        try:
            return ClipBpeTokenizer(folder / meta["file"], int(meta["n_merges"]), list(meta["special_tokens"]),
                                    int(meta["context_length"]), meta["clean"])
        except BpeMergesError as exc:
            raise TextTowerCorruptError(str(exc)) from exc
    if kind == "hf_tokenizers":
        return HFTokenizersTokenizer(folder / meta["file"], int(meta["context_length"]), meta["clean"],
                                     int(meta["pad_token_id"]), meta["pad_token"], meta.get("padding_side", "right"),
                                     meta.get("truncation_side", "right"), meta.get("strip_token_id"))
    raise TextTowerCorruptError(f"unknown tokenizer kind {kind!r} in {folder}")


class TextTower:
    """An exported text tower: ``encode_texts`` gives float32 unit vectors equal to ``Encoder.encode_texts``."""

    def __init__(self, folder: Path, meta: dict[str, Any], session: Any,
                 tokenizer: Callable[[Sequence[str]], np.ndarray]) -> None:
        self.folder = folder
        self.meta = meta
        self.session = session
        self.tokenizer = tokenizer

    @property
    def spec_id(self) -> str:
        return str(self.meta["spec_id"])

    @property
    def embed_dim(self) -> int:
        return int(self.meta["embed_dim"])

    def encode_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Run the graph on token ids ``(n, context_length)`` int64."""
        out = [self.session.run([OUTPUT_NAME], {INPUT_NAME: ids[i:i + ENCODE_BATCH]})[0]
               for i in range(0, len(ids), ENCODE_BATCH)]
        return np.concatenate(out).astype(np.float32, copy=False)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into ``(n, dim)`` float32 L2-normalised vectors."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        return self.encode_tokens(self.tokenizer(texts))


def text_tower_folder(collection_path: str | os.PathLike[str]) -> Path:
    """Where a collection keeps its text tower export."""
    return Path(collection_path).expanduser() / FOLDER_NAME


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_sidecar(folder: Path) -> dict[str, Any]:
    path = folder / SIDECAR
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise TextTowerMissingError(f"no text tower export in {folder}") from None
    except (OSError, ValueError) as exc:
        raise TextTowerCorruptError(f"cannot read {path}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise TextTowerCorruptError(f"{path} is not a {FORMAT} text tower of format version {FORMAT_VERSION}")
    return meta


def read_sidecar_or_none(folder: Path) -> dict[str, Any]:
    try:
        return _read_sidecar(folder)
    except TextTowerError:
        return {}


def _plain_name(name: Any) -> str:
    """A file name recorded in the sidecar: no folders, no ``..``."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"bad file name {name!r}")
    return name


def check_export(folder: Path, spec_id: str, verify: Literal["auto", "full"]) -> tuple[dict[str, Any], Path]:
    """Sidecar, spec and checksums; returns ``(meta, export dir)`` or raises a :class:`TextTowerError`."""
    meta = _read_sidecar(folder)
    if meta.get("spec_id") != spec_id:
        raise TextTowerMismatchError(
            f"the text tower in {folder} was exported for encoder {meta.get('spec_id')!r}, not {spec_id!r}; "
            "it cannot encode queries for this collection")
    try:
        export_dir = folder / _plain_name(meta["export_dir"])
        files: dict[str, dict[str, Any]] = meta["files"]
        for name, want in files.items():
            path = export_dir / _plain_name(name)
            try:
                st = path.stat()
            except FileNotFoundError:
                raise TextTowerCorruptError(f"{path} is missing") from None
            if st.st_size != int(want["size"]):
                raise TextTowerCorruptError(f"{path} has {st.st_size} bytes, expected {want['size']}")
            if verify == "full" or st.st_mtime_ns != int(want["mtime_ns"]):
                if sha256_file(path) != want["sha256"]:
                    raise TextTowerCorruptError(f"{path} fails its sha256 checksum")
        for name in (meta["model_file"], meta["tokenizer"]["file"]):
            if name not in files:
                raise TextTowerCorruptError(f"{folder / SIDECAR} records no checksum for {name}")
    except (KeyError, TypeError, ValueError) as exc:
        raise TextTowerCorruptError(f"{folder / SIDECAR} is incomplete: {exc!r}") from exc
    except OSError as exc:
        raise TextTowerCorruptError(f"cannot read the text tower in {folder}: {exc}") from exc
    return meta, export_dir


def open_session(model_path: Path, prepack: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not prepack:
        # Pre-packing MatMul weights is ~0.2 s of session creation for ViT-B-32 and saves ~0.02 s per run: a
        # one-shot CLI query skips it, a long-lived process keeps it.
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def load_text_tower(folder: str | os.PathLike[str], spec_id: str,
                    verify: Literal["auto", "full"] = "auto", prepack: bool = True) -> TextTower:
    """Load the export in ``folder`` for encoder ``spec_id`` (imports numpy + onnxruntime, never torch).

    ``prepack=False`` builds the session faster and runs it a little slower (for one-shot processes).

    Raises :class:`TextTowerMissingError`, :class:`TextTowerMismatchError` (another encoder's export) or
    :class:`TextTowerCorruptError` (bad sidecar, missing file, checksum, unloadable graph or tokenizer).
    """
    folder = Path(folder)
    meta, export_dir = check_export(folder, spec_id, verify)
    try:
        session = open_session(export_dir / meta["model_file"], prepack)
        tokenizer = tokenizer_from_meta(export_dir, meta["tokenizer"])
    except TextTowerError:
        raise
    except ImportError as exc:
        raise TextTowerError(f"cannot load the text tower: {exc} (needs onnxruntime, ftfy, regex, tokenizers)") from exc
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise TextTowerCorruptError(f"cannot load the text tower in {export_dir}: {exc}") from exc
    return TextTower(folder, meta, session, tokenizer)


def text_tower_is_current(collection_path: str | os.PathLike[str], spec_id: str) -> bool:
    """Whether the collection holds an intact export for ``spec_id`` (sidecar, sizes, checksums of
    changed files) — without loading onnxruntime."""
    try:
        check_export(text_tower_folder(collection_path), spec_id, "auto")
        return True
    except TextTowerError:
        return False


def try_load_text_tower(collection_path: str | os.PathLike[str], spec_id: str,
                        prepack: bool = True) -> TextTower | None:
    """The collection's text tower for ``spec_id``, or None when missing, stale, corrupt or unloadable."""
    folder = text_tower_folder(collection_path)
    try:
        return load_text_tower(folder, spec_id, prepack=prepack)
    except TextTowerMissingError:
        log.debug("no text tower in %s", folder)
    except Exception as exc:  # never raise for a broken export: the caller has the full model
        log.info("text tower in %s not used: %s", folder, exc)
    return None
