"""Vision-language model wrapper: load once, render chat prompts with image items, generate.

Any checkpoint that loads with transformers' ``AutoModelForImageTextToText`` and
``AutoProcessor`` works, by Hub id or local ``save_pretrained`` folder: LLaVA-1.5, LLaVA-NeXT,
LLaVA-OneVision, Qwen2-VL / Qwen2.5-VL, SmolVLM / Idefics3, and the tiny in-repo test model.
Nothing is loaded until :meth:`VLM.load` (or the first use); loading is thread-safe and happens
once per instance, and :func:`shared_vlm` shares one instance per (model, device, dtype).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from indexer.core.errors import ConfigError

from .budget import (
    ImageBudget,
    check_context,
    count_image_tokens,
    processor_kwargs,
)
from .preprocess import CACHE_ENTRIES, Preprocessor, fit, fixed_input_side

log = logging.getLogger(__name__)

__all__ = ["MULTI_IMAGE_FAMILIES", "VLM", "Prepared", "Request", "VLMLoadError", "shared_vlm"]

Dtype = Literal["auto", "fp32", "fp16", "bf16"]

HOW_TO_SUPPLY_VLM = (
    "download the model once on a machine with internet access (e.g. `hf download <repo> "
    "--local-dir /models/my-vlm`, or `model.save_pretrained()` + `processor.save_pretrained()`) "
    "and point PHOTODEX_VLM (or --vlm) at that local folder; it must contain config.json, the weights "
    "(model.safetensors) and the processor/tokenizer files (processor_config.json or "
    "preprocessor_config.json, tokenizer.json, chat template)"
)
HOW_THE_SERVER_GETS_A_VLM = (  # for an HTTP client: what the server's operator does, no CLI flags
    "the server's operator downloads the model once on a machine with internet access and points the server's "
    "PHOTODEX_VLM at that local folder"
)

#: Model families trained on several images per prompt: the RAG "joint" strategy suits them.
MULTI_IMAGE_FAMILIES = frozenset({
    "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics2", "idefics3", "smolvlm",
    "gemma3", "mistral3", "internvl",
})


class VLMLoadError(ConfigError):
    """The VLM (or its processor) could not be loaded."""


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _looks_local(source: str) -> bool:
    """A path (exists, starts like one, or has more than the one ``/`` of ``org/name``)."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") > 1


@dataclass
class Request:
    """One prompt: its images and the chat content (one ``{"type": "image"}`` item per image, in order)."""

    images: list[Image.Image]
    content: list[dict[str, str]]

    @classmethod
    def question(cls, images: Sequence[Image.Image], question: str) -> Request:
        """The images first, then the question (the usual single-turn layout)."""
        return cls(list(images), [{"type": "image"} for _ in images] + [{"type": "text", "text": question}])


@dataclass
class Prepared:
    """Processor output for a batch of requests, with its token accounting."""

    inputs: dict[str, Any]
    prompt_tokens: list[int]  # non-padding tokens per row
    image_tokens: list[int]  # image placeholder tokens per row
    n_images: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


class VLM:
    """Lazy, thread-safe holder of an image-text-to-text model and its processor."""

    def __init__(self, model_id_or_path: str, device: str = "auto", dtype: Dtype = "auto") -> None:
        self.model_id_or_path = str(model_id_or_path)
        self.device = device
        self.dtype = dtype
        self.model: Any = None
        self.processor: Any = None
        self._rendered: dict[tuple[tuple[str, str], ...], str] = {}
        self._preprocessor = Preprocessor(self)
        self._lock = threading.Lock()
        self.run_lock = threading.RLock()  # one generate/forward at a time on this model

    @property
    def preprocessor(self) -> Preprocessor:
        """What turns prompts and images into model inputs; its ``checked`` says which fast ways matched the
        processor."""
        return self._preprocessor

    def reset_preprocessor(self) -> Preprocessor:
        """Forget which fast preprocessing ways were checked and the memoised token ids (the next batch is
        checked against the processor again, e.g. after the processor was changed); returns the new one."""
        self._preprocessor = Preprocessor(self)
        return self._preprocessor

    # ---- loading -------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> VLM:
        """Load model and processor once; later calls are no-ops. Returns ``self``."""
        if self.model is not None:
            return self
        with self._lock:
            if self.model is None:
                self._load()
        return self

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        source = self.model_id_or_path
        path = Path(source).expanduser()
        local = _looks_local(source)
        if local and not path.is_dir():
            raise VLMLoadError(f"VLM folder not found: {path}", hint=f"to use a local model: {HOW_TO_SUPPLY_VLM}",
                               http_hint=HOW_THE_SERVER_GETS_A_VLM)
        if local:
            source = str(path.resolve())
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = self._torch_dtype(device)
        offline = _offline()
        try:
            processor = AutoProcessor.from_pretrained(source, local_files_only=offline or local)
            model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=dtype, local_files_only=offline or local)
        except Exception as exc:  # OSError, ValueError, KeyError, HF hub errors ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            where = ("downloads are off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) and it is not in the "
                     "local Hugging Face cache; " if offline and not local else "")
            raise VLMLoadError(f"could not load VLM {self.model_id_or_path!r}: {where}{first}",
                               hint=f"to use a local model: {HOW_TO_SUPPLY_VLM}",
                               http_hint=HOW_THE_SERVER_GETS_A_VLM) from exc
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # batched generation appends on the right
        model.to(device).eval()
        self.device = device
        self.processor = processor
        self.model = model
        log.info("VLM %s loaded on %s as %s (%.1f M params)", source, device, dtype,
                 sum(p.numel() for p in model.parameters()) / 1e6)

    def _torch_dtype(self, device: str) -> Any:
        import torch

        named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        if self.dtype in named:
            return named[self.dtype]
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32

    # ---- what the model is ---------------------------------------------------------------
    @property
    def model_type(self) -> str:
        return str(self.load().model.config.model_type)

    @property
    def multi_image(self) -> bool:
        """Whether the family was trained on several images per prompt."""
        return self.model_type in MULTI_IMAGE_FAMILIES

    @property
    def context_length(self) -> int | None:
        """Longest prompt + answer the model takes (text config's positions, tokenizer's limit)."""
        self.load()
        cfg = self.model.config
        text_cfg = getattr(cfg, "text_config", None) or cfg
        limits = [getattr(text_cfg, "max_position_embeddings", None)]
        tokenizer = getattr(self.processor, "tokenizer", None)
        limits.append(getattr(tokenizer, "model_max_length", None))
        usable = [int(v) for v in limits if isinstance(v, int) and 0 < v < 10_000_000]
        return min(usable) if usable else None

    @property
    def image_token_id(self) -> int | None:
        self.load()
        for owner, name in ((self.model.config, "image_token_id"), (self.model.config, "image_token_index"),
                            (self.processor, "image_token_id")):
            value = getattr(owner, name, None)
            if isinstance(value, int):
                return value
        return None

    @property
    def tokenizer(self) -> Any:
        self.load()
        return getattr(self.processor, "tokenizer", self.processor)

    # ---- prompts -------------------------------------------------------------------------
    def render(self, content: list[dict[str, str]]) -> str:
        """Chat-template prompt for one user turn of ``content`` items, ready for generation."""
        self.load()
        messages = [{"role": "user", "content": content}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        tokenizer = self.tokenizer
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, "image_token", "<image>")
        log.warning("processor has no chat template; using a plain USER/ASSISTANT prompt")
        body = "".join(image_token + "\n" if item["type"] == "image" else item.get("text", "") for item in content)
        return f"USER: {body} ASSISTANT:"

    def build_prompt(self, question: str, n_images: int) -> str:
        """Chat-template prompt with ``n_images`` image items followed by ``question``."""
        return self.render(Request.question([None] * n_images, question).content)  # type: ignore[list-item]

    def render_cached(self, content: list[dict[str, str]]) -> str:
        """:meth:`render`, memoised per content (per-photo prompts repeat the same text)."""
        key = tuple((item["type"], item.get("text", "")) for item in content)
        text = self._rendered.get(key)
        if text is None:
            text = self.render(content)
            if len(self._rendered) >= CACHE_ENTRIES:
                self._rendered.clear()
            self._rendered[key] = text
        return text

    @property
    def input_side(self) -> int | None:
        """The square side a fixed-size image processor produces (shortest-edge resize + centre crop), else None."""
        self.load()
        return fixed_input_side(getattr(self.processor, "image_processor", None))

    def prepare(self, requests: Sequence[Request], budget: ImageBudget | None = None) -> Prepared:
        """Shrink images, render prompts and run the processor on a (left-padded) batch.

        Images are brought once to the processor's input size when it is fixed (no second resize);
        the processor's text part is memoised per (prompt, image sizes) and image preprocessing runs
        once per batch (see :mod:`answerer.preprocess`), checked once per model against the processor."""
        budget = (budget or ImageBudget()).validate()
        self.load()
        prompts = [self.render_cached(r.content) for r in requests]
        side = self.input_side
        images = [[fit(im, budget.max_image_side, side) for im in r.images] for r in requests]
        n_images = [len(x) for x in images]
        kwargs = processor_kwargs(self.model_type, max(n_images, default=0), budget)
        inputs = self._preprocessor.run(prompts, images, kwargs)
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in dict(inputs).items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        mask = inputs.get("attention_mask")
        real = mask.sum(dim=1).tolist() if mask is not None else [inputs["input_ids"].shape[1]] * len(prompts)
        return Prepared(inputs, [int(n) for n in real], count_image_tokens(inputs["input_ids"], self.image_token_id),
                        n_images)

    def check_fits(self, prepared: Prepared, max_new_tokens: int) -> int:
        """Refuse (:class:`~answerer.budget.PromptTooLongError`) a batch with a row over the context.

        Returns ``max_new_tokens`` clamped to the room the longest row leaves."""
        context = self.context_length
        for n, img, k in zip(prepared.prompt_tokens, prepared.image_tokens, prepared.n_images):
            check_context(n, img, k, max_new_tokens, context)
        if context is None:
            return max_new_tokens
        return min(max_new_tokens, context - prepared.inputs["input_ids"].shape[1])

    # ---- generation ----------------------------------------------------------------------
    def generation_kwargs(self, max_new_tokens: int, min_new_tokens: int = 0) -> dict[str, Any]:
        tokenizer = self.tokenizer
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tokenizer, "eos_token_id", None)
        kwargs: dict[str, Any] = {"do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": pad_id}
        if min_new_tokens:
            kwargs["min_new_tokens"] = min_new_tokens
        return kwargs

    def generate(self, prepared: Prepared, max_new_tokens: int, min_new_tokens: int = 0,
                 streamer: Any = None) -> list[str]:
        """Greedy answers, one per row; only the new tokens are decoded. Checks the context first."""
        import torch

        max_new_tokens = self.check_fits(prepared, max_new_tokens)
        min_new_tokens = min(min_new_tokens, max_new_tokens)
        with self.run_lock, torch.inference_mode():
            out = self.model.generate(**prepared.inputs, streamer=streamer,
                                      **self.generation_kwargs(max_new_tokens, min_new_tokens))
        new_tokens = out[:, prepared.inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]

    def answer(self, images: Sequence[Image.Image], question: str, max_new_tokens: int = 8,
               min_new_tokens: int = 0, budget: ImageBudget | None = None) -> str:
        """Greedy answer to ``question`` about ``images``."""
        return self.generate(self.prepare([Request.question(images, question)], budget),
                             max_new_tokens, min_new_tokens)[0]

    def answer_batch(self, items: Sequence[tuple[Sequence[Image.Image], str]], max_new_tokens: int = 8,
                     batch_size: int = 8, budget: ImageBudget | None = None) -> list[str]:
        """Answers to many (images, question) pairs, ``batch_size`` prompts per ``generate``."""
        answers: list[str] = []
        for start in range(0, len(items), batch_size):
            chunk = [Request.question(imgs, q) for imgs, q in items[start:start + batch_size]]
            answers += self.generate(self.prepare(chunk, budget), max_new_tokens)
        return answers

    def next_token_logits(self, prepared: Prepared) -> Any:
        """Logits of the next token after each row's prompt (one forward pass, no generation)."""
        import torch

        self.check_fits(prepared, 1)
        with self.run_lock, torch.inference_mode():
            out = self.model(**prepared.inputs)
        return out.logits[:, -1, :].float()  # left padding: the last position is every row's end


_SHARED: dict[tuple[str, str, str], VLM] = {}
_SHARED_LOCK = threading.Lock()


def shared_vlm(model_id_or_path: str, device: str = "auto", dtype: Dtype = "auto") -> VLM:
    """The process-wide :class:`VLM` for these settings (created unloaded; loads on first use)."""
    key = (str(model_id_or_path), device, dtype)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = VLM(model_id_or_path, device, dtype)
        return _SHARED[key]
