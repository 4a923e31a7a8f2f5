"""The text tower alone, exported to ONNX, so ``photodex search TEXT`` answers without torch.

A collection keeps one export of its encoder's text tower in ``<collection>/text_tower/``::

    text_tower/
      text_tower.json          sidecar, written last (the commit point): spec id, format, tokenizer, sha256s
      <export id>/model.onnx   graph: int64 token ids (batch, context) -> float32 L2-normalised (batch, dim)
      <export id>/model.onnx.data          the weights (ONNX external data)
      <export id>/bpe_merges.txt.gz        CLIP BPE merges (open_clip SimpleTokenizer) or tokenizer.json (HF)

:func:`ensure_text_tower` exports from a loaded :class:`indexer.encoders.Encoder` (torch) when the export is
missing, was made for another encoder spec, or fails its checksums — once per user and encoder, into
:func:`user_cache_folder`, from where :func:`install_text_tower` hard-links it into each collection (an index run
does this in a low-priority child process: :mod:`indexer.text_tower_job`); every export is checked before it is
committed (token ids equal to the encoder's tokenizer, embeddings within 1e-4 of the fp32 model on CPU, 1e-3 on
a GPU), and a model whose text tower does not export raises :class:`TextTowerExportError` so the caller keeps
using the full model. :func:`load_text_tower` / :func:`try_load_text_tower` load it with numpy + onnxruntime and a
torch-free tokenizer; they never import torch, open_clip or transformers.

Checksums: ``load_text_tower(verify="auto")`` hashes a file only when its size or mtime differ from what the
sidecar recorded (hashing ViT-B-32's 254 MB costs ~0.16 s, a fifth of the cold-start budget); ``"full"`` always
hashes (``ensure_text_tower`` does).

Why ONNX + onnxruntime: ``python bench/bench_search_cli.py --repeats 3`` on the 2-core dev box (shared with
other jobs, load average 2.3-2.5: two runs, median of 3 fresh processes each), ViT-B-32 with random weights,
one query, page cache warm; wall = spawn to exit, RSS = the child's peak::

    variant                                                     wall s      peak RSS MiB   torch imported
    torch: load_encoder (torch + open_clip, whole CLIP) + encode  6.98-8.90     1618           yes
    torch, encode_text only (open_clip still builds the vision)   5.81-7.20     1615           yes
    onnx: try_load_text_tower + encode_texts                      0.59-0.78      257           no
    query cache hit (indexer.query_cache), nothing else loaded    0.10-0.16       33           no

Inside the onnx path: interpreter ~0.08, numpy 0.06-0.11, onnxruntime import 0.02-0.03, InferenceSession
0.22-0.37, BPE vocabulary 0.06, ftfy import + tokenising 0.04, first run 0.04-0.14 s. Storing the weights as ONNX
external data (``model.onnx.data``) instead of one protobuf halves session creation (0.56-0.80 s -> 0.22-0.37 s)
and RSS (410 -> 221 MiB). Graph optimisation level (none/basic/extended/all) or an offline-optimised model moved
session creation by at most ~0.05 s, so the portable, unoptimised export is stored and ORT optimises at load. A
hand-written numpy transformer could skip the session build but would have to re-implement every open_clip
text-tower variant; ONNX exports whatever ``encode_text`` does (CLIP, OpenCLIP, SigLIP-style ``CustomTextCLIP``
with an HF tokenizer). Export of ViT-B-32 including its check: ~9 s.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import html
import json
import logging
import os
import shutil
import string
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .atomic import atomic_write_json
from .errors import ConfigError, EncoderMismatchError

if TYPE_CHECKING:
    from .encoders import Encoder

log = logging.getLogger(__name__)

FOLDER_NAME = "text_tower"
SIDECAR = "text_tower.json"
FORMAT = "onnx"
FORMAT_VERSION = 1
ONNX_OPSET = 17
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
BPE_FILE = "bpe_merges.txt.gz"
HF_TOKENIZER_FILE = "tokenizer.json"
INPUT_NAME = "input_ids"
OUTPUT_NAME = "embeddings"
EXPORT_ATOL = 1e-4  # max |onnx - torch| accepted at export (CPU fp32); 1e-3 when the model runs on a GPU
ENCODE_BATCH = 64
_BPE_CACHE_MAX = 100_000
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


# ---- torch-free tokenizers ------------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """open_clip's reversible byte -> printable unicode map (CLIP BPE)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _is_plain(text: str) -> bool:
    """Printable ASCII without ``&``: ``ftfy.fix_text`` and ``html.unescape`` leave such text unchanged
    (every ftfy fixer needs non-ASCII, control characters, line breaks or an HTML entity), so importing
    ftfy (~0.05-0.08 s of a cold query) can be skipped. Checked against ftfy in tests/test_text_tower.py."""
    return text.isascii() and text.isprintable() and "&" not in text


def _basic_clean(text: str) -> str:
    if _is_plain(text):
        return text.strip()
    import ftfy  # lazy: ~0.05-0.08 s, only for text that may need fixing

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def _whitespace_clean(text: str) -> str:
    return " ".join(text.split()).strip()


_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _canonicalize(text: str) -> str:
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split()).strip()


CLEAN_FNS: dict[str, Callable[[str], str]] = {
    "lower": lambda t: _whitespace_clean(_basic_clean(t)).lower(),
    "whitespace": lambda t: _whitespace_clean(_basic_clean(t)),
    "canonicalize": lambda t: _canonicalize(_basic_clean(t)),
}


class ClipBpeTokenizer:
    """open_clip's ``SimpleTokenizer`` without torch: same cleaning, BPE, SOT/EOT and truncation (EOT kept)."""

    def __init__(self, merges_path: str | os.PathLike[str], n_merges: int, special_tokens: Sequence[str],
                 context_length: int, clean: str = "lower") -> None:
        import regex

        with gzip.open(merges_path, "rt", encoding="utf-8") as fh:
            merges = fh.read().split("\n")[1:1 + n_merges]  # "first second" per line
        # one space per merge line, checked in C (the file's sha256 is checked by the loader as well)
        if len(merges) != n_merges or "\n".join(merges).count(" ") != n_merges or "" in merges:
            raise TextTowerCorruptError(f"{merges_path}: expected {n_merges} BPE merges")
        self.byte_encoder = _bytes_to_unicode()
        # The same tables as SimpleTokenizer (vocab = bytes, bytes + </w>, merges joined, special tokens; a later
        # duplicate wins as in dict(zip(vocab, ...))), keyed by the merge lines themselves instead of tuples:
        # building them takes ~0.02 s instead of ~0.08 s of a cold query.
        base = list(self.byte_encoder.values())
        base += [v + "</w>" for v in base]
        self.encoder: dict[str, int] = dict(zip(base, range(len(base))))
        self.encoder.update(zip([m.replace(" ", "") for m in merges], range(len(base), len(base) + n_merges)))
        self.encoder.update(zip(special_tokens, range(len(base) + n_merges, len(base) + n_merges + len(special_tokens))))
        self.bpe_ranks: dict[str, int] = dict(zip(merges, range(n_merges)))
        self.special_tokens = list(special_tokens)
        self.cache: dict[str, str] = {t: t for t in special_tokens}
        self.pat = regex.compile(
            "|".join(special_tokens) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.sot_token_id = self.encoder[special_tokens[0]]
        self.eot_token_id = self.encoder[special_tokens[1]]
        self.context_length = int(context_length)
        self.clean_fn = CLEAN_FNS[clean]

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word: tuple[str, ...] = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = set(zip(word, word[1:]))
        if not pairs:
            return token + "</w>"
        ranks = self.bpe_ranks
        inf = float("inf")
        while True:
            bigram = min(pairs, key=lambda pair: ranks.get(pair[0] + " " + pair[1], inf))
            if bigram[0] + " " + bigram[1] not in ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = set(zip(word, word[1:]))
        out = " ".join(word)
        if len(self.cache) > _BPE_CACHE_MAX:  # a long-running server sees unbounded distinct words
            self.cache = {t: t for t in self.special_tokens}
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for token in self.pat.findall(self.clean_fn(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out


class HFTokenizersTokenizer:
    """open_clip's ``HFTokenizer``/``SigLipTokenizer`` on the ``tokenizers`` library (no transformers, no torch)."""

    def __init__(self, path: str | os.PathLike[str], context_length: int, clean: str, pad_id: int,
                 pad_token: str, padding_side: str = "right", truncation_side: str = "right",
                 strip_token_id: int | None = None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(max_length=int(context_length), direction=truncation_side)
        self.tokenizer.enable_padding(length=int(context_length), pad_id=int(pad_id), pad_token=pad_token,
                                      direction=padding_side)
        self.context_length = int(context_length)
        self.clean_fn = CLEAN_FNS[clean]
        self.strip_token_id = strip_token_id

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.context_length), dtype=np.int64)
        encoded = self.tokenizer.encode_batch([self.clean_fn(t) for t in texts])
        ids = np.asarray([e.ids for e in encoded], dtype=np.int64)
        if self.strip_token_id is not None:
            ids[ids == self.strip_token_id] = 0
        return ids


def _tokenizer_from_meta(folder: Path, meta: dict[str, Any]) -> Callable[[Sequence[str]], np.ndarray]:
    kind = meta.get("kind")
    if kind == "clip_bpe":
        return ClipBpeTokenizer(folder / meta["file"], int(meta["n_merges"]), list(meta["special_tokens"]),
                                int(meta["context_length"]), meta["clean"])
    if kind == "hf_tokenizers":
        return HFTokenizersTokenizer(folder / meta["file"], int(meta["context_length"]), meta["clean"],
                                     int(meta["pad_token_id"]), meta["pad_token"], meta.get("padding_side", "right"),
                                     meta.get("truncation_side", "right"), meta.get("strip_token_id"))
    raise TextTowerCorruptError(f"unknown tokenizer kind {kind!r} in {folder}")


# ---- loading (numpy + onnxruntime only) -----------------------------------------------------------------------

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


def _sha256(path: Path) -> str:
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


def _read_sidecar_or_none(folder: Path) -> dict[str, Any]:
    try:
        return _read_sidecar(folder)
    except TextTowerError:
        return {}


def _plain_name(name: Any) -> str:
    """A file name recorded in the sidecar: no folders, no ``..``."""
    if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise ValueError(f"bad file name {name!r}")
    return name


def _check_export(folder: Path, spec_id: str, verify: Literal["auto", "full"]) -> tuple[dict[str, Any], Path]:
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
                if _sha256(path) != want["sha256"]:
                    raise TextTowerCorruptError(f"{path} fails its sha256 checksum")
        for name in (meta["model_file"], meta["tokenizer"]["file"]):
            if name not in files:
                raise TextTowerCorruptError(f"{folder / SIDECAR} records no checksum for {name}")
    except (KeyError, TypeError, ValueError) as exc:
        raise TextTowerCorruptError(f"{folder / SIDECAR} is incomplete: {exc!r}") from exc
    except OSError as exc:
        raise TextTowerCorruptError(f"cannot read the text tower in {folder}: {exc}") from exc
    return meta, export_dir


def _session(model_path: Path, prepack: bool = True) -> Any:
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
    meta, export_dir = _check_export(folder, spec_id, verify)
    try:
        session = _session(export_dir / meta["model_file"], prepack)
        tokenizer = _tokenizer_from_meta(export_dir, meta["tokenizer"])
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
        _check_export(text_tower_folder(collection_path), spec_id, "auto")
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


# ---- export (torch side) --------------------------------------------------------------------------------------

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
            files[path.name] = {"sha256": _sha256(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
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
        if _read_sidecar_or_none(folder).get("export_dir") != export_id:
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
        tokenizer = _tokenizer_from_meta(staging, tok_meta)
        ids = tokenizer(list(PROBE_TEXTS))
    except Exception as exc:
        raise TextTowerExportError(f"the exported tokenizer does not load: {exc}") from exc
    if ids.shape != ref_ids.shape or not np.array_equal(ids, ref_ids):
        bad = [t[:40] for t, a, b in zip(PROBE_TEXTS, ids, ref_ids) if not np.array_equal(a, b)]
        raise TextTowerExportError(f"the exported tokenizer differs from {type(encoder.tokenizer).__name__} on {bad}")
    try:
        session = _session(staging / MODEL_FILE)
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
    from .spec import EncoderSpec

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
    meta, src_dir = _check_export(source, spec_id, "auto")
    try:
        with _export_lock(folder):
            export_id = meta["export_dir"]
            with contextlib.suppress(TextTowerError):
                if _check_export(folder, spec_id, "auto")[0].get("export_dir") == export_id:
                    return folder  # installed meanwhile
            staging, final = folder / f"{_STAGING_PREFIX}{uuid.uuid4().hex[:12]}", folder / export_id
            staging.mkdir()
            try:
                files = {}
                for name, want in meta["files"].items():
                    copied = _link_or_copy(src_dir / _plain_name(name), staging / name)
                    if copied and _sha256(staging / name) != want["sha256"]:
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
                if _read_sidecar_or_none(folder).get("export_dir") != export_id:
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
        _check_export(folder, encoder.spec.id, "full")
        return folder
    except TextTowerError as why:
        log.info("exporting the text tower for %s: %s", encoder.spec.id, why)
    try:
        with _export_lock(folder):  # another process may have exported it while we waited
            with contextlib.suppress(TextTowerError):
                _check_export(folder, encoder.spec.id, "full")
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
        _check_export(folder, encoder.spec.id, "full")
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
