"""A seeded random tiny open_clip model (32-pixel ViT, 32-d embeddings), saved like a real one.

It has no meaning (the trained tiny CLIP of ``tests/assets/tiny_clip`` has); it makes indexing and search runs
cheap where only the mechanics count.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

TINY_NAME = "photodex-test-tiny"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_PREPROCESS = {"size": 32, "interpolation": "bicubic", "resize_mode": "shortest"}


def register_tiny_config() -> None:
    """Register the tiny config with open_clip under ``TINY_NAME`` (``add_model_config`` reads a JSON file)."""
    import open_clip

    folder = Path(tempfile.gettempdir()) / "photodex-test-configs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{TINY_NAME}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)


def save_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Save a random tiny CLIP as an open_clip ``local-dir`` folder and as a bare weights file next to it;
    returns (folder, weights file)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    register_tiny_config()
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": TINY_PREPROCESS}))
    weights = folder.parent / f"{folder.name}.safetensors"
    save_file(state, str(weights))
    return folder, weights
