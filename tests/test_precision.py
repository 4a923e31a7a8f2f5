"""precision=auto and forced precisions: the probe's choice, the answers it keeps, what is recorded, bad input."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from indexer.collection import Collection
from indexer.encode.cpu_features import CpuFeatures, cpu_features, parse_cpuinfo
from indexer.encode.encoders import load_encoder
from indexer.core.errors import ConfigError
from indexer.encode.precision import (MIN_COSINE, Candidate, PrecisionChoice, ProbeCache, choose_cpu_precision,
                               default_candidates, probe_pixels)
from indexer.run import RunOptions, index_paths
from tests.helpers import env_offline, make_library
from tests.world.generate import CLASSES, class_prompt

FAKE_CPU = CpuFeatures("Fake CPU", frozenset({"avx2", "avx512_bf16", "avx512_vnni"}))
BARE_CPU = CpuFeatures("Bare CPU", frozenset({"avx2"}))


def _model(clip_dir: Path) -> tuple[torch.nn.Module, str, torch.Tensor]:
    enc = load_encoder("local-dir:" + str(clip_dir), device="cpu", precision="fp32")
    return enc.model, enc.spec.id, probe_pixels(enc.preprocess, enc.image_size, 8)


class _Wrong(torch.nn.Module):
    """Fast and wrong: random features of the right shape, no work."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape[0], self.dim, generator=torch.Generator().manual_seed(x.shape[0]))


class _Slow(torch.nn.Module):
    """fp32's answers, slower: a copy of the tower and a pause per batch."""

    def __init__(self, inner: torch.nn.Module, pause: float) -> None:
        super().__init__()
        self.inner, self.pause = inner, pause

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.pause)
        return self.inner(x)


class _Remembers(torch.nn.Module):
    """fp32's answers, faster after the first sight of a batch (it remembers them): fast and right."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = hash(x.numpy().tobytes())
        if key not in self.seen:
            self.seen[key] = self.inner(x)
        return self.seen[key]


def wrong(precision: str = "bf16") -> Candidate:
    return Candidate("fake-wrong", precision, lambda v: _Wrong(int(v.output_dim)))


def slow(precision: str = "bf16") -> Candidate:
    return Candidate("fake-slow", precision, lambda v: _Slow(copy.deepcopy(v), 0.2))


def right(precision: str = "bf16", name: str = "fake-right", units: tuple[str, ...] = ()) -> Candidate:
    return Candidate(name, precision, lambda v: _Remembers(copy.deepcopy(v)), units=units)


def crashing(precision: str = "int8") -> Candidate:
    def build(_v: torch.nn.Module) -> torch.nn.Module:
        raise RuntimeError("kernel not supported")
    return Candidate("fake-crash", precision, build)


# ---- the probe's choice ----------------------------------------------------------------------------------------

def test_auto_refuses_a_fast_but_wrong_candidate(world_tiny_clip_dir, tmp_path, caplog):
    model, spec_id, pixels = _model(world_tiny_clip_dir)
    tower = model.visual
    choice = choose_cpu_precision(model, spec_id, "auto", lambda: pixels, [wrong()], ProbeCache(tmp_path), FAKE_CPU)
    assert choice.precision == "fp32" and model.visual is tower
    assert "fake-wrong min cosine" in choice.reason and f"< {MIN_COSINE}" in choice.reason


def test_auto_refuses_a_slow_candidate_but_a_forced_one_is_kept(world_tiny_clip_dir, tmp_path):
    model, spec_id, pixels = _model(world_tiny_clip_dir)
    tower = model.visual
    choice = choose_cpu_precision(model, spec_id, "auto", lambda: pixels, [slow()], ProbeCache(tmp_path), FAKE_CPU)
    assert choice.precision == "fp32" and model.visual is tower
    assert "fake-slow only" in choice.reason and "fp32's speed" in choice.reason
    # forced: accuracy is all that is checked; the slow but right path is used (and it said how slow)
    forced = choose_cpu_precision(model, spec_id, "bf16", lambda: pixels, [slow()], ProbeCache(tmp_path), FAKE_CPU)
    assert forced.precision == "bf16" and forced.candidate == "fake-slow" and forced.min_cosine >= MIN_COSINE
    assert isinstance(model.visual, _Slow)


def test_auto_keeps_a_fast_right_candidate_and_later_runs_skip_the_probe(world_tiny_clip_dir, tmp_path):
    model, spec_id, pixels = _model(world_tiny_clip_dir)
    cands = [wrong(), slow(), right()]
    choice = choose_cpu_precision(model, spec_id, "auto", lambda: pixels, cands, ProbeCache(tmp_path), FAKE_CPU)
    assert choice.candidate == "fake-right" and choice.precision == "bf16", choice
    assert choice.min_cosine > 0.99999 and choice.speedup > 1.1
    assert isinstance(model.visual, _Remembers)
    cached = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert set(cached["candidates"]) == {"fake-wrong", "fake-slow", "fake-right"}
    assert cached["key"]["spec_id"] == spec_id and cached["key"]["cpu"] == "Fake CPU"

    def no_probe() -> torch.Tensor:
        raise AssertionError("the probe ran again although its outcome is cached")

    model2, _, _ = _model(world_tiny_clip_dir)
    again = choose_cpu_precision(model2, spec_id, "auto", no_probe, cands, ProbeCache(tmp_path), FAKE_CPU)
    assert again.candidate == "fake-right" and isinstance(model2.visual, _Remembers)
    # another machine (CPU model) is probed afresh
    other = CpuFeatures("Other CPU", FAKE_CPU.flags)
    model3, _, _ = _model(world_tiny_clip_dir)
    choose_cpu_precision(model3, spec_id, "auto", lambda: pixels, cands, ProbeCache(tmp_path), other)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_forced_precision_failing_the_cosine_check_says_so_and_runs_fp32(world_tiny_clip_dir, tmp_path, caplog):
    model, spec_id, pixels = _model(world_tiny_clip_dir)
    with caplog.at_level(logging.WARNING, logger="indexer.encode.precision"):
        choice = choose_cpu_precision(model, spec_id, "bf16", lambda: pixels, [wrong()], ProbeCache(tmp_path),
                                      FAKE_CPU)
    assert choice.precision == "fp32" and choice.requested == "bf16"
    text = caplog.text
    assert "bf16 requested but refused" in text and "min cosine" in text and "encoding in fp32" in text
    cos = float(text.split("min cosine ")[1].split()[0])
    assert cos < MIN_COSINE  # the measured value is in the message


def test_forced_precision_without_the_units_says_which_and_runs_fp32(world_tiny_clip_dir, tmp_path, caplog):
    model, spec_id, pixels = _model(world_tiny_clip_dir)
    needs_amx = right(units=("amx_bf16", "avx512_bf16"))

    def no_probe() -> torch.Tensor:
        raise AssertionError("no probe without the units")

    with caplog.at_level(logging.WARNING, logger="indexer.encode.precision"):
        choice = choose_cpu_precision(model, spec_id, "bf16", no_probe, [needs_amx], ProbeCache(tmp_path), BARE_CPU)
    assert choice.precision == "fp32"
    assert "bf16 requested but this CPU (Bare CPU) has none of the units it needs (amx_bf16 or avx512_bf16)" in caplog.text
    assert "encoding in fp32" in caplog.text
    auto = choose_cpu_precision(model, spec_id, "auto", no_probe, [needs_amx], ProbeCache(tmp_path), BARE_CPU)
    assert auto.precision == "fp32" and "has none of" in auto.reason


def test_a_crashing_probe_falls_back_to_fp32_with_a_warning(world_tiny_clip_dir, tmp_path, caplog):
    model, spec_id, pixels = _model(world_tiny_clip_dir)
    with caplog.at_level(logging.WARNING, logger="indexer.encode.precision"):
        choice = choose_cpu_precision(model, spec_id, "auto", lambda: pixels, [crashing()], ProbeCache(tmp_path),
                                      FAKE_CPU)
    assert choice.precision == "fp32" and "kernel not supported" in caplog.text

    def broken_batch() -> torch.Tensor:
        raise MemoryError("no memory for the probe batch")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="indexer.encode.precision"):
        choice = choose_cpu_precision(model, spec_id, "auto", broken_batch, [right()], ProbeCache(tmp_path / "b"),
                                      FAKE_CPU)
    assert choice.precision == "fp32" and "precision probe failed" in caplog.text


def test_a_crashing_probe_does_not_stop_an_index_run(world_tiny_clip_dir, tmp_path):
    enc = load_encoder("local-dir:" + str(world_tiny_clip_dir), device="cpu", precision="auto",
                       candidates=[crashing("bf16")])
    assert enc.precision.precision == "fp32"
    make_library(tmp_path / "lib", 5)
    coll = Collection.open_for_encoder(tmp_path / "coll", enc.spec)
    summary = index_paths(coll, enc, [tmp_path / "lib"], RunOptions(workers=0))
    assert summary.encode.encoded == 5
    assert coll.stats()["precision"]["photos_by_precision"] == {"fp32 (torch)": 5}
    coll.close()


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        load_encoder("ViT-B-32", precision="fp8")


def test_cpu_flags_are_read_from_cpuinfo():
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
            "flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nmodel name\t: other\n")
    feats = parse_cpuinfo(text)
    assert feats.model == "AMD EPYC 9R14"
    assert feats.bf16_units == ("avx512_bf16",) and feats.int8_units == ("avx512_vnni",)
    assert cpu_features().model  # this machine's, whatever it is


# ---- same answers --------------------------------------------------------------------------------------------------

def _unit_checked(name: str) -> Candidate:
    """A default candidate without its unit requirement: its numerics are under test, not the CPU's flags."""
    cand = next(c for c in default_candidates() if c.name == name)
    return Candidate(cand.name, cand.precision, cand.build, (), cand.backend, cand.version)


@pytest.fixture(scope="module")
def world_pair(world_tiny_clip_dir, world_library, tmp_path_factory):
    """The tiny CLIP in fp32 and with its image tower in bf16 (forced; it passed the cosine check)."""
    root = tmp_path_factory.mktemp("precision_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PHOTODEX_PRECISION_CACHE", str(root))
        fp32 = load_encoder("local-dir:" + str(world_tiny_clip_dir), device="cpu", precision="fp32")
        bf16 = load_encoder("local-dir:" + str(world_tiny_clip_dir), device="cpu", precision="bf16",
                            candidates=[_unit_checked("torch-bf16")])
    assert bf16.precision.precision == "bf16", bf16.precision
    from retrieval.classify.tagging import encode_files

    paths = [str(p) for p, _ in world_library]
    return fp32, bf16, encode_files(fp32, paths)[0], encode_files(bf16, paths)[0]


def test_bf16_world_vectors_match_fp32_per_photo_in_search_and_in_zero_shot(world_pair, tmp_path):
    from retrieval.classify.tagging import ZeroShotClassifier

    fp32, bf16, a, b = world_pair
    cos = (a * b).sum(1)
    assert cos.min() >= MIN_COSINE, cos.min()
    queries = fp32.encode_texts([class_prompt(c) for c in CLASSES] + ["a photo of two blue squares",
                                                                      "a photo of a skull", "a yellow triangle"])
    assert np.array_equal(queries, bf16.encode_texts([class_prompt(c) for c in CLASSES] + [
        "a photo of two blue squares", "a photo of a skull", "a yellow triangle"]))  # text stays fp32
    top_a = np.argsort(-(queries @ a.T), axis=1)[:, :10]
    top_b = np.argsort(-(queries @ b.T), axis=1)[:, :10]
    overlap = [len(set(x) & set(y)) / 10 for x, y in zip(top_a, top_b)]
    assert min(overlap) >= 0.9, overlap
    za = ZeroShotClassifier(fp32, list(CLASSES), ["a photo of a {}"], cache_dir=tmp_path / "za").top_k(a, 1)
    zb = ZeroShotClassifier(bf16, list(CLASSES), ["a photo of a {}"], cache_dir=tmp_path / "zb").top_k(b, 1)
    assert [r[0][0] for r in za] == [r[0][0] for r in zb]


def test_exported_text_tower_of_a_bf16_encoder_stays_within_1e3_of_fp32(world_pair, tmp_path):
    from retrieval.search.text_tower import load_text_tower, text_tower_folder
    from retrieval.search.text_tower_export import ensure_text_tower

    fp32, bf16, _, _ = world_pair
    coll = Collection.open_for_encoder(tmp_path / "coll", bf16.spec)
    coll.close()
    ensure_text_tower(tmp_path / "coll", bf16)
    tower = load_text_tower(text_tower_folder(tmp_path / "coll"), bf16.spec.id)
    texts = [class_prompt(c) for c in CLASSES]
    assert np.abs(tower.encode_texts(texts) - fp32.encode_texts(texts)).max() <= 1e-3


def test_random_vit_b32_bf16_and_int8_stay_within_the_cosine_floor(tmp_path, monkeypatch):
    """The real candidates on the real architecture, kept to a handful of images (a random ViT-B-32 builds
    in ~4 s; each encode of 4 images takes well under a second on 2 cores)."""
    monkeypatch.setenv("PHOTODEX_PRECISION_CACHE", str(tmp_path))
    from PIL import Image

    fp32 = load_encoder("ViT-B-32", None, device="cpu", precision="fp32")
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)) for _ in range(3)]
    images.append(Image.new("RGB", (224, 224), (200, 30, 30)))
    want = fp32.encode_images(images)
    visual = fp32.model.visual
    for name in ("torch-bf16", "torch-int8"):
        cand = _unit_checked(name)
        got = cand.build(visual)
        pixels = torch.stack([fp32.preprocess(im) for im in images])
        with torch.inference_mode():
            out = got(pixels).float()
        out = (out / out.norm(dim=-1, keepdim=True)).numpy()
        assert (out * want).sum(1).min() >= MIN_COSINE, (name, (out * want).sum(1))


# ---- recorded and shown --------------------------------------------------------------------------------------------

def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ui.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_info_shows_the_precision_of_each_run(world_tiny_clip_dir, tmp_path):
    lib = tmp_path / "lib"
    make_library(lib, 4)
    env = {**env_offline(), "PHOTODEX_PRECISION_CACHE": str(tmp_path / "cache")}
    model = ["--model", "local-dir:" + str(world_tiny_clip_dir), "--collection", str(tmp_path / "coll")]
    r = _cli("index", str(lib), *model, "--workers", "0", "--precision", "fp32", env=env)
    assert r.returncode == 0, r.stderr
    # a second run of another precision (forced, checked), in process: bf16 with the unit check lifted
    make_library(lib, 3, start=10)
    enc = load_encoder("local-dir:" + str(world_tiny_clip_dir), device="cpu", precision="bf16",
                       candidates=[_unit_checked("torch-bf16")])
    with Collection.open(tmp_path / "coll") as coll:
        index_paths(coll, enc, [lib], RunOptions(workers=0))
    info = _cli("info", "--collection", str(tmp_path / "coll"), "--json", env=env)
    assert info.returncode == 0, info.stderr
    prec = json.loads(info.stdout)["precision"]
    assert prec["photos_by_precision"] == {"fp32 (torch)": 4, "bf16 (torch)": 3}
    assert prec["last_run"]["requested"] == "bf16" and prec["last_run"]["min_cosine"] >= MIN_COSINE
    text = _cli("info", "--collection", str(tmp_path / "coll"), env=env).stdout
    line = next(x for x in text.splitlines() if x.startswith("precision: "))
    assert "fp32 (torch) for 4 photos" in line and "bf16 (torch) for 3 photos" in line and "min cosine" in line


def test_vectors_of_an_unchecked_precision_are_never_stored(world_tiny_clip_dir, tmp_path):
    enc = load_encoder("local-dir:" + str(world_tiny_clip_dir), device="cpu", precision="fp32")
    enc.precision = PrecisionChoice("bf16", "bf16", "torch", "cpu", "hand-made", min_cosine=0.98)
    make_library(tmp_path / "lib", 3)
    coll = Collection.open_for_encoder(tmp_path / "coll", enc.spec)
    with pytest.raises(ConfigError, match="min cosine to fp32 0.98 is below"):
        index_paths(coll, enc, [tmp_path / "lib"], RunOptions(workers=0))
    assert coll.stats()["vectors"] == 0
    coll.close()


# ---- the command line ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["flag", "env"])
def test_unknown_precision_on_the_command_line_is_one_line_and_exit_2(tmp_path, how):
    make_library(tmp_path / "lib", 1)
    env = env_offline()
    args = ["index", str(tmp_path / "lib"), "--collection", str(tmp_path / "coll")]
    if how == "flag":
        args += ["--precision", "fp8"]
    else:
        env["PHOTODEX_PRECISION"] = "fp8"
    r = _cli(*args, env=env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "precision" in lines[0] and "int8" in lines[0], r.stderr
    assert not (tmp_path / "coll").exists()


def test_forced_precision_the_cpu_cannot_do_says_so_and_indexes_in_fp32(world_tiny_clip_dir, tmp_path):
    if cpu_features().flags & {"amx_fp16", "avx512_fp16"}:
        pytest.skip("this CPU has fp16 units; the refusal needs a CPU without them")
    make_library(tmp_path / "lib", 2)
    env = {**env_offline(), "PHOTODEX_PRECISION_CACHE": str(tmp_path / "cache"), "PHOTODEX_PRECISION": "fp16"}
    coll = tmp_path / "coll"
    r = _cli("index", str(tmp_path / "lib"), "--model", "local-dir:" + str(world_tiny_clip_dir),
             "--collection", str(coll), "--workers", "0", env=env)
    assert r.returncode == 0, r.stderr
    assert "fp16 requested but this CPU" in r.stderr and "encoding in fp32" in r.stderr
    with Collection.open(coll) as c:
        assert c.stats()["precision"]["photos_by_precision"] == {"fp32 (torch)": 2}


def test_text_tower_exports_when_the_image_tower_is_int8(tiny_clip, tmp_path, monkeypatch):
    """The ONNX exporter refuses a model holding quantised modules: the int8 image tower must not be one of the
    CLIP model's submodules, or ``photodex index`` at int8 loses its fast text path."""
    from retrieval.search.text_tower import load_text_tower
    from retrieval.search.text_tower_export import export_text_tower

    monkeypatch.setenv("PHOTODEX_PRECISION_CACHE", str(tmp_path / "cache"))
    folder, _ = tiny_clip
    fp32 = load_encoder("local-dir:" + str(folder), device="cpu", precision="fp32")
    int8 = load_encoder("local-dir:" + str(folder), device="cpu", precision="int8",
                        candidates=[_unit_checked("torch-int8")])
    assert int8.precision.precision == "int8", int8.precision
    export_text_tower(int8, tmp_path / "tt")
    tower = load_text_tower(tmp_path / "tt", int8.spec.id)
    texts = ["a photo of a dog", "a red square", ""]
    assert np.abs(tower.encode_texts(texts) - fp32.encode_texts(texts)).max() <= 1e-3


# ---- the ONNX candidates -------------------------------------------------------------------------------------------

def _onnx_candidate(spec_id: str, name: str = "onnxruntime-int8") -> Candidate:
    from indexer.encode.precision_onnx import onnx_candidates

    cand = next(c for c in onnx_candidates(spec_id) if c.name == name)
    return Candidate(cand.name, cand.precision, cand.build, (), cand.backend, cand.version)


def test_onnxruntime_int8_tower_matches_fp32_and_its_export_is_cached(tiny_clip, tmp_path, monkeypatch):
    from indexer.encode.precision_onnx import INT8_FILE, graphs_dir

    monkeypatch.setenv("PHOTODEX_PRECISION_CACHE", str(tmp_path / "cache"))
    folder, _ = tiny_clip
    fp32 = load_encoder("local-dir:" + str(folder), device="cpu", precision="fp32")
    int8 = load_encoder("local-dir:" + str(folder), device="cpu", precision="int8",
                        candidates=[_onnx_candidate(fp32.spec.id)])
    assert int8.precision.candidate == "onnxruntime-int8" and int8.precision.min_cosine >= MIN_COSINE
    rng = np.random.default_rng(5)
    from PIL import Image

    images = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(6)]
    assert (fp32.encode_images(images) * int8.encode_images(images)).sum(1).min() >= MIN_COSINE
    (graph,) = graphs_dir().glob(f"*/{INT8_FILE}")
    stamp = graph.stat().st_mtime_ns
    again = load_encoder("local-dir:" + str(folder), device="cpu", precision="int8",
                         candidates=[_onnx_candidate(fp32.spec.id)])
    assert again.precision.candidate == "onnxruntime-int8" and graph.stat().st_mtime_ns == stamp  # not re-exported
    graph.write_bytes(b"not an onnx graph")  # a damaged cache is exported again, not a failure
    healed = load_encoder("local-dir:" + str(folder), device="cpu", precision="int8",
                          candidates=[_onnx_candidate(fp32.spec.id)])
    assert healed.precision.candidate == "onnxruntime-int8"
    assert (fp32.encode_images(images) * healed.encode_images(images)).sum(1).min() >= MIN_COSINE


def test_forced_int8_on_the_world_clip_is_refused_with_its_measured_cosine(world_tiny_clip_dir, tmp_path,
                                                                           monkeypatch, caplog):
    """A real case of the cosine floor: the world's tiny ResNet CLIP loses too much in onnxruntime int8."""
    monkeypatch.setenv("PHOTODEX_PRECISION_CACHE", str(tmp_path / "cache"))
    spec_id = load_encoder("local-dir:" + str(world_tiny_clip_dir), device="cpu", precision="fp32").spec.id
    with caplog.at_level(logging.WARNING, logger="indexer.encode.precision"):
        enc = load_encoder("local-dir:" + str(world_tiny_clip_dir), device="cpu", precision="int8",
                           candidates=[_onnx_candidate(spec_id)])
    assert enc.precision.precision == "fp32"
    assert "int8 requested but refused: onnxruntime-int8 min cosine 0.99" in caplog.text
    assert "encoding in fp32" in caplog.text


def test_the_probe_cache_lives_under_the_user_cache_dir(tmp_path, monkeypatch):
    from indexer.encode.precision_towers import precision_cache_dir

    monkeypatch.delenv("PHOTODEX_PRECISION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert precision_cache_dir() == tmp_path / "xdg" / "photodex" / "precision"
    assert ProbeCache().directory == tmp_path / "xdg" / "photodex" / "precision"
    monkeypatch.setenv("PHOTODEX_PRECISION_CACHE", str(tmp_path / "elsewhere"))
    assert ProbeCache().directory == tmp_path / "elsewhere"
