"""Test helpers: tiny open_clip models built in-process and a generator of awkward photo files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

TINY_NAME = "photodex-test-tiny"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_PREPROCESS = {"size": 32,
                   "interpolation": "bicubic", "resize_mode": "shortest"}


def register_tiny_config() -> None:
    """Register the tiny config with open_clip (``add_model_config`` reads a JSON file)."""
    import tempfile

    import open_clip

    folder = Path(tempfile.gettempdir()) / "photodex-test-configs"
    folder.mkdir(exist_ok=True)
    path = folder / f"{TINY_NAME}.json"
    path.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(path)


def save_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Save a random tiny CLIP as an open_clip ``local-dir`` folder and as a bare weights file."""
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


def random_photo(path: Path, size: tuple[int, int] = (64, 48), seed: int = 0, **save_kw: object) -> Path:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **save_kw)
    return path


def make_library(root: Path, n: int, start: int = 0, size: tuple[int, int] = (64, 48)) -> list[Path]:
    """``n`` distinct JPEGs spread over nested folders."""
    return [random_photo(root / f"{i % 3}" / f"sub{i % 2}" / f"img_{i:04d}.jpg", size, seed=i)
            for i in range(start, start + n)]


def env_offline() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


# ---- index files: exact answers and damage (tests/test_index_file.py, tests/test_shard_store.py) ----

def exact_search(coll, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of an exact top-k over the collection's stored vectors."""
    from retrieval.scoring import top_k

    ids, vecs = coll.load_vectors()
    idx, vals = top_k(queries @ vecs.T, k, ids, pad=True)
    return vals, idx


def queries_near_stored(coll, n: int = 6) -> np.ndarray:
    """``n`` unit queries near the first stored vectors (seeded)."""
    _, vecs = coll.load_vectors()
    q = vecs[:n] + 0.3 * np.random.default_rng(0).standard_normal(vecs[:n].shape).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def damage_index_file(path: Path, how: str) -> None:
    """Damage an index file: ``truncated``, ``same-size`` (bytes overwritten), ``no-sidecar`` or ``missing``."""
    from retrieval.index.vector_index import VectorIndex

    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    elif how == "same-size":
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = b"\x7f" * 64  # float32 0x7f7f7f7f ~ 3.4e38: huge scores if read
        path.write_bytes(bytes(data))
    elif how == "no-sidecar":
        VectorIndex.sidecar_path(path).unlink()
    elif how == "missing":
        path.unlink()
    else:
        raise ValueError(how)

