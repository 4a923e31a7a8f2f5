"""An encoder built straight from its checkpoint: the same model as open_clip's, without a random init."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.encode.encoders import load_encoder


def _reference(model: str, pretrained: str | None = None) -> torch.nn.Module:
    import open_clip

    return open_clip.create_model(model, pretrained=pretrained).eval()


def _same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())  # non-persistent ones too (CLIP's attention mask)
    assert set(ba) == set(bb) and all(torch.equal(ba[k], bb[k]) for k in ba)
    assert not [n for n, t in [*b.named_parameters(), *b.named_buffers()] if t.is_meta]


@pytest.fixture()
def init_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of torch.nn.init functions that were given real (non-meta) tensors to fill."""
    calls: list[str] = []
    for name in ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "constant_", "zeros_", "ones_"):
        original = getattr(torch.nn.init, name)

        def wrapper(tensor, *args, _original=original, _name=name, **kwargs):
            if not tensor.is_meta:
                calls.append(_name)
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, name, wrapper)
    return calls


def test_local_dir_checkpoint_builds_the_same_model_without_a_random_init(world_tiny_clip_dir: Path,
                                                                           init_calls: list[str]) -> None:
    """The trained tiny CLIP (ModifiedResNet vision with BatchNorm buffers, fp16 weights in an fp32 model)."""
    encoder = load_encoder(f"local-dir:{world_tiny_clip_dir}", device="cpu", precision="fp32")
    assert init_calls == []  # no parameter was filled randomly first
    reference = _reference(f"local-dir:{world_tiny_clip_dir}")
    _same_model(reference, encoder.model)
    x = torch.randn(2, 3, encoder.image_size, encoder.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = reference.encode_image(x)
        want_t = reference.encode_text(encoder.tokenizer(["a red circle", ""]))
    assert np.array_equal(encoder.encode_images(x), (want / want.norm(dim=-1, keepdim=True)).numpy())
    assert np.array_equal(encoder.encode_texts(["a red circle", ""]),
                          (want_t / want_t.norm(dim=-1, keepdim=True)).numpy())
    assert encoder.spec.embed_dim == want_t.shape[-1]


@pytest.mark.parametrize("kind", ["local-dir", "safetensors file", "pth file"])
def test_vit_checkpoints_of_every_kind(tiny_clip: tuple[Path, Path], tmp_path: Path, kind: str,
                                       init_calls: list[str]) -> None:
    from safetensors.torch import load_file

    from tests.helpers import TINY_NAME, register_tiny_config

    folder, weights = tiny_clip
    register_tiny_config()
    if kind == "local-dir":
        model, pretrained = f"local-dir:{folder}", None
    elif kind == "safetensors file":
        model, pretrained = TINY_NAME, str(weights)
    else:
        pth = tmp_path / "weights.pth"
        torch.save({"state_dict": {f"module.{k}": v for k, v in load_file(str(weights)).items()}}, pth)
        model, pretrained = TINY_NAME, str(pth)
    encoder = load_encoder(model, pretrained, device="cpu", precision="fp32")
    assert init_calls == []
    _same_model(_reference(model, pretrained), encoder.model)


def test_a_random_init_is_still_the_seeded_one(tiny_clip) -> None:
    """No checkpoint: open_clip's own seeded random init, the same in every process."""
    from tests.helpers import TINY_NAME, register_tiny_config

    register_tiny_config()
    a = load_encoder(TINY_NAME, None, device="cpu", precision="fp32")
    b = load_encoder(TINY_NAME, None, device="cpu", precision="fp32")
    _same_model(a.model, b.model)


def test_a_checkpoint_that_does_not_fit_is_refused(tiny_clip, tmp_path: Path) -> None:
    """A checkpoint with a missing tensor fails as loudly as open_clip's own loader (one EncoderLoadError)."""
    from safetensors.torch import load_file, save_file

    from indexer.core.errors import EncoderLoadError

    folder, weights = tiny_clip
    bad = tmp_path / "bad"
    bad.mkdir()
    state = load_file(str(weights))
    state.pop("visual.proj")
    save_file(state, str(bad / "open_clip_model.safetensors"))
    (bad / "open_clip_config.json").write_text((folder / "open_clip_config.json").read_text())
    with pytest.raises(EncoderLoadError, match="could not load encoder"):
        load_encoder(f"local-dir:{bad}", device="cpu")
