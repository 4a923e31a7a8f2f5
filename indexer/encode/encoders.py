"""The encoder registry: open_clip models by name + pretrained tag, local file, ``hf-hub:`` or ``local-dir:``.

Every vector that leaves this module is float32 and L2-normalised, so inner product is cosine.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..core.errors import EncoderLoadError
from ..core.spec import EncoderSpec, fingerprint_path
from .model_load import LOCAL_DIR_WEIGHTS, create_model
from .precision import Candidate, PrecisionChoice, check_precision, choose_cpu_precision, cuda_choice, probe_pixels

log = logging.getLogger(__name__)

HOW_TO_SUPPLY_WEIGHTS = (
    "download the weights once on a machine with internet access and pass them with "
    "--pretrained /path/to/weights.safetensors (or --model local-dir:/path/to/folder holding "
    "open_clip_config.json and the weights), or set PHOTODEX_MODEL / PHOTODEX_PRETRAINED"
)


def resolve_device(requested: str = "auto") -> tuple[str, str]:
    """Pick the torch device and say why, so a GPU that was not used is never a mystery."""
    cuda_ok = torch.cuda.is_available()
    if requested == "cpu":
        return "cpu", "cpu requested"
    if requested == "cuda":
        if not cuda_ok:
            raise EncoderLoadError(
                f"--device cuda requested but CUDA is not usable: torch {torch.__version__} "
                f"(built for CUDA {torch.version.cuda}) found {torch.cuda.device_count()} GPU(s); "
                "check the NVIDIA driver and that the container was started with GPU access"
            )
        return "cuda", f"cuda requested: {torch.cuda.get_device_name(0)}"
    if requested != "auto":
        raise EncoderLoadError(f"unknown device {requested!r}; use auto, cpu or cuda")
    if cuda_ok:
        return "cuda", f"auto: using GPU {torch.cuda.get_device_name(0)}"
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
    else:
        why = f"torch {torch.__version__} has CUDA {torch.version.cuda} support but no GPU/driver was found"
    return "cpu", f"auto: using CPU because {why}"


def _is_local_path(value: str | None) -> bool:
    return bool(value) and Path(str(value)).expanduser().exists()


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x.cpu().numpy().astype(np.float32, copy=False)


class Encoder:
    """An open_clip model with its preprocessing and tokenizer; ``encode_*`` return unit vectors."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor] | None,
        spec: EncoderSpec,
        device: str = "cpu",
        autocast_dtype: torch.dtype | None = None,
        text_cache_size: int = 4096,
        tokenizer_factory: Callable[[], Callable[[list[str]], torch.Tensor]] | None = None,
        precision: PrecisionChoice | None = None,
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self._tokenizer = tokenizer
        self._tokenizer_factory = tokenizer_factory
        self.spec = spec
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.precision = precision or PrecisionChoice("fp32", device=device, reason="built as fp32")
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._text_cache_size = text_cache_size
        self._lock = threading.Lock()
        self._tokenizer_lock = threading.Lock()

    @property
    def tokenizer(self) -> Callable[[list[str]], torch.Tensor]:
        """The tokenizer, built on first use (~0.25 s for CLIP's BPE: an indexing run never needs it)."""
        if self._tokenizer is None:
            with self._tokenizer_lock:
                if self._tokenizer is None and self._tokenizer_factory is not None:
                    self._tokenizer = self._tokenizer_factory()
        if self._tokenizer is None:
            raise AttributeError("this encoder has no tokenizer")
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self._tokenizer = tokenizer

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.exp().item()) if scale is not None else 100.0

    @property
    def logit_bias(self) -> float | None:
        """SigLIP-style models' learned bias: labels are scored each on its own, ``sigmoid(scale * cos + bias)``.

        None for CLIP-style models (softmax over the label list)."""
        bias = getattr(self.model, "logit_bias", None)
        return float(bias.item()) if bias is not None else None

    @property
    def image_size(self) -> int:
        size = self.spec.preprocess.get("size", 224)
        return int(max(size)) if isinstance(size, (list, tuple)) else int(size)

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return torch.autocast("cpu", enabled=False)
        return torch.autocast(self.device, dtype=self.autocast_dtype)

    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        """Encode PIL images or an already preprocessed batch tensor into unit vectors."""
        if isinstance(images, torch.Tensor):
            batch = images
        else:
            if len(images) == 0:
                return np.zeros((0, self.spec.embed_dim), np.float32)
            batch = torch.stack([self.preprocess(im) for im in images])
        batch = batch.to(self.device, non_blocking=True)
        with torch.inference_mode(), self._autocast():
            feats = self.model.encode_image(batch)
        return _normalise(feats)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts into unit vectors; recently seen texts come from a cache."""
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        known = {t: v for t in unique if (v := self._text_cache.get(t)) is not None}
        todo = [t for t in unique if t not in known]
        if todo:
            tokens = self.tokenizer(todo).to(self.device)
            with self._lock, torch.inference_mode(), self._autocast():
                vecs = _normalise(self.model.encode_text(tokens))
            known.update(zip(todo, vecs))
            for text, vec in zip(todo, vecs):
                self._text_cache[text] = vec
                while len(self._text_cache) > self._text_cache_size:
                    self._text_cache.popitem(last=False)
        if not texts:
            return np.zeros((0, self.spec.embed_dim), np.float32)
        return np.stack([known[t] for t in texts])


def _embed_dim(model: torch.nn.Module) -> int:
    """Width of ``encode_text``'s output. Read off the text projection's shape where there is one (CLIP, and
    CustomTextCLIP's TextTransformer), so building an encoder for indexing never reads the text tower's
    weights; otherwise from a forward pass."""
    for owner in (model, getattr(model, "text", None)):
        proj = getattr(owner, "text_projection", None)
        if isinstance(proj, torch.nn.Linear):
            return int(proj.out_features)
        if isinstance(proj, torch.Tensor) and proj.ndim == 2:
            return int(proj.shape[-1])
    with torch.inference_mode():
        return int(model.encode_text(torch.zeros(1, _context_length(model), dtype=torch.long)).shape[-1])


def _build_spec(model_name: str, pretrained: str | None, model: torch.nn.Module) -> EncoderSpec:
    preprocess = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in preprocess.items()}
    dim = _embed_dim(model)
    fingerprint = ""
    if model_name.startswith("local-dir:"):
        fingerprint = fingerprint_path(Path(model_name[len("local-dir:"):]).expanduser())
    elif _is_local_path(pretrained):
        fingerprint = fingerprint_path(Path(str(pretrained)).expanduser())
    return EncoderSpec(model_name, pretrained, dim, fingerprint, preprocess)


def _context_length(model: torch.nn.Module) -> int:
    return int(getattr(model, "context_length", None) or 77)


def load_encoder(
    model: str,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "auto",
    candidates: Sequence[Candidate] | None = None,
) -> Encoder:
    """Load an open_clip encoder; any failure becomes one :class:`EncoderLoadError` with a remedy.

    ``precision`` (auto, fp32, bf16, fp16, int8) is settled by :mod:`indexer.encode.precision`: on the CPU from
    ``candidates`` (default: the ones photodex knows) and a cached probe, on CUDA by autocast."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    check_precision(precision)
    dev, why = resolve_device(device)
    log.info("encoder device: %s (%s)", dev, why)
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise EncoderLoadError(f"{folder} holds no open_clip_config.json; {HOW_TO_SUPPLY_WEIGHTS}")
        if not any((folder / name).is_file() for name in LOCAL_DIR_WEIGHTS):
            raise EncoderLoadError(f"{folder} holds no weights ({' or '.join(LOCAL_DIR_WEIGHTS)})")
        model = "local-dir:" + str(folder.resolve())
        pretrained = None
    elif pretrained and ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth"))):
        path = Path(pretrained).expanduser()
        if not path.exists():
            raise EncoderLoadError(f"weights file not found: {path}")
        pretrained = str(path.resolve())
    if not pretrained and not model.startswith(("local-dir:", "hf-hub:")):
        log.warning("no pretrained weights for %s: using a seeded random init (useful for tests and benchmarks only)", model)
    try:
        net = create_model(model, pretrained, require_pretrained=bool(pretrained))
    except Exception as exc:  # open_clip raises RuntimeError/ValueError/FileNotFoundError/HF errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(". Available:")[0][:400]
        raise EncoderLoadError(
            f"could not load encoder model={model!r} pretrained={pretrained!r}: {first}. "
            f"To use local weights: {HOW_TO_SUPPLY_WEIGHTS}"
        ) from exc
    net.eval()
    spec = _build_spec(model, pretrained, net)
    net = net.to(dev)
    preprocess = image_transform_v2(PreprocessCfg(**getattr(net.visual, "preprocess_cfg", {})), is_train=False)
    tokenizer_factory = functools.partial(open_clip.get_tokenizer, model)
    if dev == "cpu":
        size = spec.preprocess.get("size", 224)
        size = int(max(size)) if isinstance(size, (list, tuple)) else int(size)
        choice = choose_cpu_precision(net, spec.id, precision, lambda: probe_pixels(preprocess, size), candidates)
        return Encoder(net, preprocess, None, spec, dev, None, tokenizer_factory=tokenizer_factory, precision=choice)
    choice, dtype = cuda_choice(precision, dev)
    return Encoder(net, preprocess, None, spec, dev, dtype, tokenizer_factory=tokenizer_factory, precision=choice)
