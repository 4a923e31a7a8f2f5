"""The CPU image-tower candidates as modules (bf16 / fp16 casts, int8 dynamic quantisation) and where their
probe outcomes and exports are cached; shared by :mod:`indexer.encode.precision` and
:mod:`indexer.encode.precision_onnx` (so neither imports the other back)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


TowerBuild = Callable[["torch.nn.Module"], "torch.nn.Module"]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/photodex`` (default ``~/.cache/photodex``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "photodex"


def precision_cache_dir() -> Path:
    """Where probe outcomes and exported graphs live: ``$PHOTODEX_PRECISION_CACHE``, else
    ``$XDG_CACHE_HOME/photodex/precision`` (a read-only home, or one cache for many containers, can point it
    elsewhere)."""
    given = os.environ.get("PHOTODEX_PRECISION_CACHE")
    return Path(given).expanduser() if given else user_cache_dir() / "precision"



@dataclass(frozen=True)
class Candidate:
    """One way to run the image tower: ``build(fp32 tower)`` returns a module taking the same fp32 pixels and
    returning the same features (any float dtype). ``units``: CPU flags of which one is needed (none: any CPU).
    ``version`` is part of the probe cache key, so a new library version is measured again."""

    name: str
    precision: str
    build: TowerBuild
    units: tuple[str, ...] = ()
    backend: str = "torch"
    version: str = ""


class _CastInput:
    """Picklable ``x -> x.to(dtype)`` for :class:`ConvertedTower`."""

    def __init__(self, dtype: "torch.dtype") -> None:
        self.dtype = dtype

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        return x.to(self.dtype)


def _converted(inner: "torch.nn.Module", original: "torch.nn.Module",
               prepare: Callable[["torch.Tensor"], "torch.Tensor"] | None = None) -> "torch.nn.Module":
    """``inner`` wrapped to take fp32 pixels and to keep the plain attributes of ``original`` (preprocess config,
    image size) that the rest of photodex reads from ``model.visual``."""
    import torch

    class ConvertedTower(torch.nn.Module):
        """The converted tower is kept out of the module tree (``__dict__``, not a submodule): nothing that walks
        the CLIP model (``.to()``, ``state_dict``, the text tower's ONNX export, which refuses a model holding
        quantised modules) sees it; it is an inference-only artifact of the fp32 weights."""

        def __init__(self) -> None:
            super().__init__()
            self.__dict__["inner"] = inner
            self.prepare = prepare
            for name in ("preprocess_cfg", "image_size", "output_dim", "patch_size", "image_mean", "image_std"):
                if hasattr(original, name) and not isinstance(getattr(original, name), torch.nn.Module):
                    setattr(self, name, getattr(original, name))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(self.prepare(x) if self.prepare is not None else x)

    return ConvertedTower()


def _cast_copy(visual: "torch.nn.Module", dtype: "torch.dtype") -> "torch.nn.Module":
    """A copy of ``visual`` whose floating tensors are ``dtype``, made without a second fp32 copy (the deepcopy
    memo maps each fp32 tensor straight to its cast): peak memory is the fp32 tower plus the cast one."""
    import torch

    memo: dict[int, Any] = {}
    for t in [*visual.parameters(), *visual.buffers()]:
        if t.is_floating_point():
            cast = t.detach().to(dtype)
            memo[id(t)] = torch.nn.Parameter(cast, requires_grad=False) if isinstance(t, torch.nn.Parameter) else cast
    return copy.deepcopy(visual, memo).eval()


def _bf16_tower(visual: "torch.nn.Module") -> "torch.nn.Module":
    """Weights and activations in bf16; oneDNN's bf16 GEMMs accumulate in fp32, and the CPU LayerNorm and softmax
    kernels compute bf16 inputs in fp32 internally."""
    import torch

    return _converted(_cast_copy(visual, torch.bfloat16), visual, _CastInput(torch.bfloat16))


def _fp16_tower(visual: "torch.nn.Module") -> "torch.nn.Module":
    import torch

    return _converted(_cast_copy(visual, torch.float16), visual, _CastInput(torch.float16))


def _int8_tower(visual: "torch.nn.Module") -> "torch.nn.Module":
    """Dynamic int8 quantisation of every ``nn.Linear`` (weights int8 per tensor, activations quantised per batch);
    the attention's fused input projection stays fp32."""
    import warnings

    import torch

    shared = {id(t): t for t in [*visual.parameters(), *visual.buffers()]}  # modules copied, fp32 tensors shared
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        quantised = torch.ao.quantization.quantize_dynamic(copy.deepcopy(visual, shared), {torch.nn.Linear},
                                                           dtype=torch.qint8, inplace=True)
    return _converted(quantised.eval(), visual)
