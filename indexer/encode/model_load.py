"""Build an open_clip model straight from its checkpoint: no random init that the weights then overwrite.

``open_clip.create_model`` (3.3.0 has no option for it) first initialises every parameter randomly — for
ViT-B-32 ~1.3 s of CPU and 605 MB of memory — and then copies the checkpoint, read whole into a second
605 MB, over them. Here the parameters are created on the ``meta`` device (no memory, no init; buffers such
as attention masks are still computed for real), and the checkpoint's tensors become the parameters
(``load_state_dict(assign=True)``): a safetensors file is memory-mapped (``torch.load(mmap=True)`` for a
``.bin``/``.pth``), so a page of weights is read only when the model first uses it and is never copied.
An indexing run never touches the text tower's pages, so they cost it no memory at all.

Anything this path does not cover (a random init, a SigLIP ``.npz``, a parameter left without a value)
goes through ``open_clip.create_model`` as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LOCAL_DIR_WEIGHTS = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
)  # open_clip's own order of preference in a local-dir folder

_meta_owner = threading.local()
_patch_lock = threading.Lock()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[list[tuple[torch.nn.Module, str, torch.Tensor]]]:
    """Modules constructed in this thread meanwhile get ``meta`` parameters; yields the buffers they registered,
    as computed (``(module, name, tensor)``), for :func:`restore_buffers`.

    ``torch.device("meta")`` would put the buffers on meta too, and a non-persistent one (CLIP's causal
    attention mask) is not in the checkpoint to restore it. Other threads constructing modules meanwhile
    are unaffected: the hooks act only for the thread that entered."""
    original_param, original_buffer = torch.nn.Module.register_parameter, torch.nn.Module.register_buffer
    buffers: list[tuple[torch.nn.Module, str, torch.Tensor]] = []

    def register_parameter(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original_param(module, name, param)
        if param is not None and getattr(_meta_owner, "active", False):
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    def register_buffer(module: torch.nn.Module, name: str, tensor: torch.Tensor | None,
                        persistent: bool = True) -> None:
        original_buffer(module, name, tensor, persistent)
        if tensor is not None and getattr(_meta_owner, "active", False):
            buffers.append((module, name, tensor))

    with _patch_lock:
        torch.nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        torch.nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]
        _meta_owner.active = True
        try:
            yield buffers
        finally:
            _meta_owner.active = False
            torch.nn.Module.register_parameter = original_param  # type: ignore[method-assign]
            torch.nn.Module.register_buffer = original_buffer  # type: ignore[method-assign]


def restore_buffers(buffers: list[tuple[torch.nn.Module, str, torch.Tensor]]) -> None:
    """Put back the buffers that ``model.to("meta")`` replaced (the checkpoint then sets the persistent ones)."""
    for module, name, tensor in buffers:
        if name in module._buffers and module._buffers[name] is not None and module._buffers[name].is_meta:
            module._buffers[name] = tensor


def checkpoint_path(model: str, pretrained: str | None) -> Path | None:
    """The full-CLIP checkpoint ``open_clip.create_model(model, pretrained)`` would load, where it is a
    local file (``local-dir:`` folder or a weights path); None otherwise (hub, tag, random init)."""
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        return next((folder / n for n in LOCAL_DIR_WEIGHTS if (folder / n).is_file()), None)
    if model.startswith("hf-hub:") or not pretrained or not os.path.isfile(pretrained):
        return None
    return Path(pretrained)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, memory-mapped (not read, not copied); open_clip's ``load_state_dict`` layout
    rules (a ``state_dict`` key, a ``module.`` prefix)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path), device="cpu")  # views of an mmap: nothing read yet
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state dict")
    if next(iter(state)).startswith("module"):
        state = {k[7:]: v for k, v in state.items()}
    return state


def assign_checkpoint(model: Any, path: Path) -> None:
    """open_clip's ``load_checkpoint`` (the same key conversions, ``strict=True``), but the checkpoint's
    tensors become the model's parameters instead of being copied into them."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, read_state_dict(path))
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        target = getattr(model, key, None)
        if key in state and target is not None and target.ndim != state[key].ndim:
            state[key] = state[key].reshape(target.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    state.pop("text.transformer.embeddings.position_ids", None)  # as open_clip does (transformers >= 4.31)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    built = model.state_dict()  # meta tensors: the dtypes the model was built with (a copy would convert to them)
    for key, tensor in state.items():
        want = built.get(key)
        if want is not None and want.dtype != tensor.dtype and tensor.is_floating_point():
            state[key] = tensor.to(want.dtype)  # e.g. an fp16 checkpoint into an fp32 model: as a copy would
    model.load_state_dict(state, strict=True, assign=True)


class _DropRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("No pretrained weights loaded", "Potential checkpoint path"))


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """open_clip warns on the root logger that the model is "initialized randomly" when told not to load the
    weights; here they are loaded right after, so the warning would be false."""
    root, drop = logging.getLogger(), _DropRecords()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _left_on_meta(model: torch.nn.Module) -> list[str]:
    return [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]


def create_model(model: str, pretrained: str | None, require_pretrained: bool) -> torch.nn.Module:
    """``open_clip.create_model(model, pretrained, device="cpu")``, built from the checkpoint without a random
    init where the checkpoint is a local file; a random init is seeded (the same model in every process)."""
    import open_clip

    path = checkpoint_path(model, pretrained)
    if path is not None and path.suffix in (".safetensors", ".bin", ".pth", ".pt"):
        try:
            with parameters_on_meta() as buffers, _quiet_random_init_warning():
                # device "meta": open_clip moves the model there (a no-op for meta parameters, where "cpu"
                # would try to copy them); the buffers it moved are put back before the weights are assigned
                net = open_clip.create_model(model, pretrained=pretrained, load_weights=False, device="meta",
                                             pretrained_image=False, pretrained_text=False)
            restore_buffers(buffers)
            assign_checkpoint(net, path)
            left = _left_on_meta(net)
            if not left:
                return net
            log.info("%s: %d tensors have no value in %s (e.g. %s); building it the usual way",
                     model, len(left), path, left[0])
        except Exception as exc:  # noqa: BLE001 - any surprise here: the usual (slower) path still works
            log.info("could not build %s straight from %s (%s: %s); building it the usual way",
                     model, path, type(exc).__name__, exc)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random model in every process, so queries match the index
        return open_clip.create_model(model, pretrained=pretrained, device="cpu", require_pretrained=require_pretrained)
