"""Vision-language model wrapper: answer a question about a few retrieved images.

Any LLaVA-style checkpoint that loads with ``AutoModelForImageTextToText`` and
``AutoProcessor`` works (a Hub id or a local folder written by
``save_pretrained``).  Nothing is loaded until :meth:`VLM.load` (or the first
:meth:`VLM.answer`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from indexer.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["VLM", "VLMLoadError"]

HOW_TO_SUPPLY_VLM = (
    "download the model once on a machine with internet access (e.g. `hf download <repo> "
    "--local-dir /models/my-vlm`, or `model.save_pretrained()` + `processor.save_pretrained()`) "
    "and pass that folder as the model path; it must contain config.json, the weights "
    "(model.safetensors) and the processor/tokenizer files (processor_config.json or "
    "preprocessor_config.json, tokenizer.json, chat template)"
)


class VLMLoadError(ConfigError):
    """The VLM (or its processor) could not be loaded."""


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


class VLM:
    """Lazy, thread-safe holder of an image-text-to-text model and its processor."""

    def __init__(self, model_id_or_path: str, device: str = "cpu") -> None:
        self.model_id_or_path = str(model_id_or_path)
        self.device = device
        self.model: Any = None
        self.processor: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> VLM:
        """Load model and processor once; later calls are no-ops. Returns ``self``."""
        if self.model is not None:
            return self
        with self._lock:
            if self.model is not None:
                return self
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor

            source = self.model_id_or_path
            path = Path(source).expanduser()
            looks_local = path.exists() or source.startswith((".", "/", "~")) or os.sep in source.strip("/")
            if looks_local and not path.is_dir():
                raise VLMLoadError(f"VLM folder not found: {path}. To use a local model: {HOW_TO_SUPPLY_VLM}")
            if path.is_dir():
                source = str(path.resolve())
            dtype = torch.float16 if str(self.device).startswith("cuda") else torch.float32
            try:
                processor = AutoProcessor.from_pretrained(source, local_files_only=_offline() or path.is_dir())
                model = AutoModelForImageTextToText.from_pretrained(
                    source, dtype=dtype, local_files_only=_offline() or path.is_dir())
            except Exception as exc:  # OSError, ValueError, HF hub errors ...
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise VLMLoadError(
                    f"could not load VLM {self.model_id_or_path!r}: {first}. "
                    f"To use a local model: {HOW_TO_SUPPLY_VLM}") from exc
            model.to(self.device).eval()
            self.processor = processor
            self.model = model
            log.info("VLM loaded from %s on %s (%.1f M params)", source, self.device,
                     sum(p.numel() for p in model.parameters()) / 1e6)
        return self

    def build_prompt(self, question: str, n_images: int) -> str:
        """Chat-template prompt with one image placeholder per image."""
        self.load()
        content: list[dict[str, str]] = [{"type": "image"} for _ in range(n_images)]
        content.append({"type": "text", "text": question})
        messages = [{"role": "user", "content": content}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        image_token = getattr(self.processor, "image_token", "<image>")
        log.warning("processor has no chat template; using a plain USER/ASSISTANT prompt")
        return f"USER: {(image_token + chr(10)) * n_images}{question} ASSISTANT:"

    def answer(self, images: Sequence[Image.Image], question: str, max_new_tokens: int = 8) -> str:
        """Greedy answer to ``question`` about ``images``; only the new tokens are decoded."""
        import torch

        self.load()
        images = [im.convert("RGB") for im in images]
        prompt = self.build_prompt(question, len(images))
        inputs = self.processor(images=images or None, text=prompt, return_tensors="pt")
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        if "pixel_values" in inputs and self.model.dtype != inputs["pixel_values"].dtype:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tokenizer = getattr(self.processor, "tokenizer", None)
        pad_id = getattr(tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(tokenizer, "eos_token_id", None)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                      pad_token_id=pad_id)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.decode(new_tokens, skip_special_tokens=True).strip()
