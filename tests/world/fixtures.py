"""Pytest fixtures for the synthetic world (import them from ``tests/conftest.py``).

    from tests.world.fixtures import vlm, world_tiny_clip_dir, world_tiny_vlm_dir, world_library  # noqa: F401
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ui.demo.world import WorldSample, write_library

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TINY_CLIP_DIR = ASSETS / "tiny_clip"
TINY_VLM_DIR = ASSETS / "tiny_vlm"
LIBRARY_SEED = 2024
LIBRARY_SIZE = 120


@pytest.fixture(scope="session")
def world_tiny_clip_dir() -> Path:
    """open_clip local-dir folder of the trained tiny CLIP (``"local-dir:" + str(path)``)."""
    if not (TINY_CLIP_DIR / "open_clip_config.json").is_file():
        pytest.skip(f"tiny CLIP missing; run: python -m tests.world.train_clip --out {TINY_CLIP_DIR}")
    return TINY_CLIP_DIR


@pytest.fixture(scope="session")
def world_tiny_vlm_dir() -> Path:
    """``save_pretrained`` folder of the trained tiny LLaVA-style VLM."""
    if not (TINY_VLM_DIR / "config.json").is_file():
        pytest.skip(f"tiny VLM missing; run: python -m tests.world.train_vlm --out {TINY_VLM_DIR}")
    return TINY_VLM_DIR


@pytest.fixture(scope="module")
def vlm(world_tiny_vlm_dir: Path):
    """The trained tiny VLM loaded on the CPU (at most two torch threads); a fresh one per test module."""
    import torch

    from answerer.vlm import VLM

    torch.set_num_threads(min(2, torch.get_num_threads()))
    return VLM(str(world_tiny_vlm_dir), device="cpu").load()


@pytest.fixture(scope="session")
def world_library(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, WorldSample]]:
    """A small photo library (``LIBRARY_SIZE`` jpg/png files in nested folders) with ground truth."""
    root = tmp_path_factory.mktemp("world_library")
    return write_library(root, LIBRARY_SIZE, LIBRARY_SEED)
