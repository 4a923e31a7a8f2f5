"""Exporting a collection's text tower to ONNX (torch side): the writer calls this, searches only load it.

:func:`ensure_text_tower` exports from a loaded :class:`indexer.encode.encoders.Encoder` (torch) when the export is
missing, was made for another encoder spec, or fails its checksums — once per user and encoder, into
:func:`user_cache_folder`, from where :func:`install_text_tower` hard-links it into each collection (an index run
does this in a low-priority child process: :mod:`retrieval.search.text_tower_job`); every export is checked before it is
committed (token ids equal to the encoder's tokenizer, embeddings within 1e-4 of the fp32 model on CPU, 1e-3 on
a GPU), and a model whose text tower does not export raises :class:`TextTowerExportError` so the caller keeps
using the full model. The format and the loader are in :mod:`retrieval.search.text_tower`. Export of ViT-B-32
including its check: ~9 s.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.core.atomic import atomic_write_json

from .text_tower import (
    BPE_FILE,
    FORMAT,
    FORMAT_VERSION,
    HF_TOKENIZER_FILE,
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAME,
    SIDECAR,
    WEIGHTS_FILE,
    TextTower,
    TextTowerCorruptError,
    TextTowerError,
    TextTowerExportError,
    TextTowerMismatchError,
    check_export,
    open_session,
    read_sidecar_or_none,
    sha256_file,
    text_tower_folder,
    tokenizer_from_meta,
)
from .tokenizer import CLEAN_FNS

if TYPE_CHECKING:
    from indexer.encode.encoders import Encoder

log = logging.getLogger(__name__)

ONNX_OPSET = 17
EXPORT_ATOL = 1e-4  # max |onnx - torch| accepted at export (CPU fp32); 1e-3 when the model runs on a GPU
_STAGING_PREFIX = ".staging-"
_LOCK_FILE = ".lock"

# Texts the export is checked on: tokenizer ids and embeddings must match the torch encoder on all of them.
PROBE_TEXTS: tuple[str, ...] = (
    "",
    "a photo of a dog",
    "A Photo Of A DOG on the BEACH at sunset!!!",
    "  lots\tof \n whitespace\r\n  ",
    "rock 'n' roll, don't we'll they're I'm you've she'd",
    "&amp; &lt;b&gt; html &#39;entities&#39; &amp;amp;",
    "café naïve façade Ünïcödé straße",
    "東京の夜景 北京烤鸭 서울 Москва القاهرة",
    "emoji 🐶🐱🌅 and symbols ©®™ ½ № ∞",
    "numbers 1234567890 3.14159 1e-9 #42 @home",
    "ﬁ ligature and “curly quotes” and ‘single’ — dash… ellipsis",
    "the quick brown fox jumps over the lazy dog " * 12,  # far beyond 77 tokens: truncation keeps EOT
    "word " * 74,
    "x" * 300,
)


@contextlib.contextmanager
def _export_lock(folder: Path) -> Iterator[None]:
    """One exporter per folder at a time (POSIX advisory lock; no-op where fcntl is missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(folder / _LOCK_FILE, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _export_tokenizer(tokenizer: Any, dest: Path) -> dict[str, Any]:
    """Write the tokenizer's vocabulary under ``dest``; its sidecar entry. Raises TextTowerExportError."""
    from open_clip import tokenizer as oct

    context_length = getattr(tokenizer, "context_length", None)
    if not context_length:
        raise TextTowerExportError(f"tokenizer {type(tokenizer).__name__} has no context_length")
    clean_names = {getattr(oct, f"_clean_{name}", None): name for name in CLEAN_FNS}  # open_clip privates
    if isinstance(tokenizer, oct.SimpleTokenizer):
        if tokenizer.reduction_fn is not None:
            raise TextTowerExportError("tokenizers with a token reduction mask are not deterministic; not exported")
        clean = clean_names.get(tokenizer.clean_fn)
        if clean is None:
            raise TextTowerExportError(f"unknown tokenizer clean function {tokenizer.clean_fn!r}")
        merges = sorted(tokenizer.bpe_ranks, key=tokenizer.bpe_ranks.__getitem__)
        by_id = sorted(tokenizer.encoder, key=tokenizer.encoder.__getitem__)
        special = by_id[512 + len(merges):]
        header = "#version: 0.2 (photodex export of the open_clip BPE merges)"
        payload = "\n".join([header, *(" ".join(m) for m in merges)])
        with open(dest / BPE_FILE, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(payload.encode("utf-8"))
        return {"kind": "clip_bpe", "file": BPE_FILE, "context_length": int(context_length), "clean": clean,
                "n_merges": len(merges), "special_tokens": special, "vocab_size": len(by_id),
                "sot_token_id": tokenizer.sot_token_id, "eot_token_id": tokenizer.eot_token_id, "pad_token_id": 0,
                "truncation": "keep the first context_length-1 ids, last id = EOT"}
    hf: Any = getattr(tokenizer, "tokenizer", None)
    backend = getattr(hf, "backend_tokenizer", None)
    if isinstance(tokenizer, oct.HFTokenizer):
        if tokenizer.tokenizer_mode:
            raise TextTowerExportError(f"HF tokenizer mode {tokenizer.tokenizer_mode!r} is not exported")
        clean = clean_names.get(tokenizer.clean_fn)
        strip = hf.sep_token_id if tokenizer.strip_sep_token else None
    elif type(tokenizer).__name__ == "SigLipTokenizer":
        clean, strip = "canonicalize", None
    else:
        raise TextTowerExportError(f"tokenizer {type(tokenizer).__name__} is not supported by the text tower export")
    if clean is None or backend is None or hf.pad_token_id is None:
        raise TextTowerExportError(f"HF tokenizer {type(hf).__name__} is not a fast tokenizer with a pad token "
                                   "and a known clean function")
    (dest / HF_TOKENIZER_FILE).write_text(backend.to_str(), encoding="utf-8")
    return {"kind": "hf_tokenizers", "file": HF_TOKENIZER_FILE, "context_length": int(context_length),
            "clean": clean, "pad_token_id": int(hf.pad_token_id), "pad_token": str(hf.pad_token),
            "padding_side": getattr(hf, "padding_side", "right"),
            "truncation_side": getattr(hf, "truncation_side", "right"), "strip_token_id": strip,
            "source": type(tokenizer).__name__}


def _export_graph(model: Any, tokens: Any, dest: Path) -> None:
    """``model.encode_text`` + L2 normalisation as ONNX with external weights at ``dest/MODEL_FILE``."""
    import onnx
    import torch

    class TextTowerModule(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            x = self.net.encode_text(input_ids).float()
            return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    raw = dest / "raw.onnx"
    mha_fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # _native_multi_head_attention has no ONNX symbolic
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and advanced-indexing notes
            torch.onnx.export(
                TextTowerModule(model).eval(), (tokens,), str(raw), dynamo=False, opset_version=ONNX_OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(mha_fastpath)
    graph = onnx.load(str(raw))
    onnx.save_model(graph, str(dest / MODEL_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=WEIGHTS_FILE, size_threshold=1024)
    raw.unlink()


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.iterdir(), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("torch", "open_clip_torch", "onnx", "onnxruntime"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def export_text_tower(encoder: Encoder, folder: str | os.PathLike[str]) -> Path:
    """Export ``encoder``'s text tower into ``folder`` (replacing what is there) and check it; returns ``folder``.

    Raises :class:`TextTowerExportError` when the tower or tokenizer cannot be exported or the export does not
    reproduce the encoder's token ids and fp32 embeddings; the folder is then left as it was.
    """
    folder = Path(folder)
    try:
        with _export_lock(folder):
            return _export_locked(encoder, folder)
    except OSError as exc:
        raise TextTowerError(f"cannot write the text tower to {folder}: {exc}") from exc


def _export_locked(encoder: Encoder, folder: Path) -> Path:
    import torch

    model, spec = encoder.model, encoder.spec
    if not callable(getattr(model, "encode_text", None)):
        raise TextTowerExportError(f"model {spec.model} has no encode_text")
    export_id = uuid.uuid4().hex[:12]
    staging, final = folder / f"{_STAGING_PREFIX}{export_id}", folder / export_id
    staging.mkdir()
    try:
        tok_meta = _export_tokenizer(encoder.tokenizer, staging)
        ref_ids = encoder.tokenizer(list(PROBE_TEXTS)).cpu().numpy().astype(np.int64)
        device = next(model.parameters()).device
        try:
            _export_graph(model, torch.from_numpy(ref_ids[:2]).to(device), staging)
        except Exception as exc:  # the exporter raises many types for unsupported ops
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise TextTowerExportError(f"cannot export the text tower of {spec.model} to ONNX: {first}") from exc
        max_diff = _check_staged(encoder, staging, tok_meta, ref_ids, 1e-3 if device.type == "cuda" else EXPORT_ATOL)
        _fsync_tree(staging)
        os.replace(staging, final)
        files = {}
        for path in sorted(final.iterdir()):
            st = path.stat()
            files[path.name] = {"sha256": sha256_file(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "spec_id": spec.id, "spec": spec.to_dict(),
            "embed_dim": int(spec.embed_dim), "context_length": tok_meta["context_length"],
            "export_dir": export_id, "model_file": MODEL_FILE, "input_name": INPUT_NAME,
            "output_name": OUTPUT_NAME, "opset": ONNX_OPSET, "tokenizer": tok_meta, "files": files,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "exported_with": _versions(),
            "export_check": {"probe_texts": len(PROBE_TEXTS), "max_abs_diff": max_diff},
        }
        atomic_write_json(folder / SIDECAR, meta)  # the commit point
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if read_sidecar_or_none(folder).get("export_dir") != export_id:
            shutil.rmtree(final, ignore_errors=True)
        raise
    for old in folder.iterdir():  # earlier exports and crashed stagings; we hold the lock
        if old.is_dir() and old.name != export_id:
            shutil.rmtree(old, ignore_errors=True)
    log.info("exported the text tower of %s to %s (max |onnx - torch| %.2e)", spec.id, final, max_diff)
    return folder


def _check_staged(encoder: Encoder, staging: Path, tok_meta: dict[str, Any], ref_ids: np.ndarray,
                  atol: float) -> float:
    """Compare the staged export with the fp32 model on :data:`PROBE_TEXTS`; the max abs embedding difference."""
    try:
        tokenizer = tokenizer_from_meta(staging, tok_meta)
        ids = tokenizer(list(PROBE_TEXTS))
    except Exception as exc:
        raise TextTowerExportError(f"the exported tokenizer does not load: {exc}") from exc
    if ids.shape != ref_ids.shape or not np.array_equal(ids, ref_ids):
        bad = [t[:40] for t, a, b in zip(PROBE_TEXTS, ids, ref_ids) if not np.array_equal(a, b)]
        raise TextTowerExportError(f"the exported tokenizer differs from {type(encoder.tokenizer).__name__} on {bad}")
    try:
        session = open_session(staging / MODEL_FILE)
        tower = TextTower(staging, {"embed_dim": encoder.spec.embed_dim}, session, tokenizer)
        got = np.concatenate([tower.encode_tokens(ids[:1]), tower.encode_tokens(ids[1:])])
    except Exception as exc:
        raise TextTowerExportError(f"the exported text tower does not run in onnxruntime: {exc}") from exc
    want = _reference_vectors(encoder.model, ref_ids)
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    if not diff <= atol:
        raise TextTowerExportError(f"the exported text tower differs from the model by {diff:.3g} (> {atol:g})")
    return diff


def _reference_vectors(model: Any, ids: np.ndarray) -> np.ndarray:
    """fp32 ``encode_text`` on the model's device, normalised as ``Encoder.encode_texts`` does (no autocast)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        x = model.encode_text(torch.from_numpy(ids).to(device)).float()
        x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x.cpu().numpy().astype(np.float32, copy=False)


def _collection_spec_id(collection_path: Path) -> str | None:
    """The encoder spec id in the collection's manifest, if there is a readable one."""
    from indexer.core.spec import EncoderSpec

    try:
        manifest = json.loads((collection_path / "manifest.json").read_text())
        return EncoderSpec.from_dict(manifest["encoder"]).id
    except (OSError, ValueError, KeyError, TypeError):
        return None


def user_cache_folder(spec_id: str) -> Path:
    """Where this user keeps the export of encoder ``spec_id`` for every collection that uses it:
    ``$XDG_CACHE_HOME/photodex/text_towers/<sha256 of the spec id>/`` (``~/.cache`` without XDG)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "photodex" / "text_towers" / hashlib.sha256(spec_id.encode()).hexdigest()[:16]


def _link_or_copy(src: Path, dest: Path) -> bool:
    """Hard-link ``src`` to ``dest`` (no bytes written); copy across file systems. Whether it copied."""
    try:
        os.link(src, dest)
        return False
    except OSError:
        shutil.copyfile(src, dest)
        return True


def install_text_tower(source: str | os.PathLike[str], folder: str | os.PathLike[str], spec_id: str) -> Path:
    """Put the intact export in ``source`` (the user cache) into ``folder`` (a collection's), hard-linked where
    both are on one file system; returns ``folder``. torch-free.

    The same commit protocol as an export: files land in a staging folder, which is renamed, and the sidecar
    written last is the commit point, so a kill at any moment leaves nothing a search would load. Raises
    :class:`TextTowerError` (source not current, or ``folder`` not writable / full: the reason says which)."""
    source, folder = Path(source), Path(folder)
    meta, src_dir = check_export(source, spec_id, "auto")
    try:
        with _export_lock(folder):
            export_id = meta["export_dir"]
            with contextlib.suppress(TextTowerError):
                if check_export(folder, spec_id, "auto")[0].get("export_dir") == export_id:
                    return folder  # installed meanwhile
            staging, final = folder / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}", folder / export_id
            staging.mkdir()
            try:
                files = {}
                for name, want in meta["files"].items():
                    copied = _link_or_copy(src_dir / name, staging / name)  # names checked by check_export
                    if copied and sha256_file(staging / name) != want["sha256"]:
                        raise TextTowerCorruptError(f"{src_dir / name} changed while it was copied")
                    st = (staging / name).stat()
                    files[name] = {"sha256": want["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns}
                _fsync_tree(staging)
                if final.exists():
                    shutil.rmtree(final)  # a damaged earlier install of the same export
                os.replace(staging, final)
                atomic_write_json(folder / SIDECAR, {**meta, "files": files, "installed_from": str(source)})
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                if read_sidecar_or_none(folder).get("export_dir") != export_id:
                    shutil.rmtree(final, ignore_errors=True)
                raise
            for old in folder.iterdir():
                if old.is_dir() and old.name != export_id:
                    shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise TextTowerError(f"cannot write the text tower to {folder}: {exc.strerror or exc}") from exc
    log.info("text tower of %s installed from %s into %s", spec_id, source, folder)
    return folder


def _ensure_export(folder: Path, encoder: Encoder) -> Path:
    """``folder`` holding a current export of ``encoder`` (exported now if it does not)."""
    try:
        check_export(folder, encoder.spec.id, "full")
        return folder
    except TextTowerError as why:
        log.info("exporting the text tower for %s: %s", encoder.spec.id, why)
    try:
        with _export_lock(folder):  # another process may have exported it while we waited
            with contextlib.suppress(TextTowerError):
                check_export(folder, encoder.spec.id, "full")
                return folder
            return _export_locked(encoder, folder)
    except OSError as exc:
        raise TextTowerError(f"cannot write the text tower to {folder}: {exc.strerror or exc}") from exc


def ensure_text_tower(collection_path: str | os.PathLike[str], encoder: Encoder, use_cache: bool = True) -> Path:
    """The collection's text tower folder, (re-)exported from ``encoder`` when missing, stale or corrupt.

    With ``use_cache`` the export is made once per user in :func:`user_cache_folder` and installed from there
    (a second collection with the same encoder never exports again); a cache that cannot be written is
    skipped. Raises :class:`TextTowerMismatchError` when the collection was built with another encoder,
    :class:`TextTowerExportError` when this encoder's tower cannot be exported, and :class:`TextTowerError` when
    the folder cannot be written; in every case keep using the full model.
    """
    root = Path(collection_path).expanduser()
    recorded = _collection_spec_id(root)
    if recorded is not None and recorded != encoder.spec.id:
        raise TextTowerMismatchError(
            f"collection {root} was built with encoder {recorded!r}; "
            f"not exporting the text tower of {encoder.spec.id!r}")
    folder = text_tower_folder(root)
    with contextlib.suppress(TextTowerError):
        check_export(folder, encoder.spec.id, "full")
        return folder
    if use_cache:
        cache = user_cache_folder(encoder.spec.id)
        try:
            _ensure_export(cache, encoder)
        except TextTowerExportError:
            raise
        except TextTowerError as exc:
            log.info("user cache not used (%s); exporting into the collection", exc)
        else:
            return install_text_tower(cache, folder, encoder.spec.id)
    return _ensure_export(folder, encoder)
