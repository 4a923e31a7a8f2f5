"""The Ray engine: same catalog and vectors as the local engine; a lost actor or a killed driver loses
nothing and encodes nothing twice; the GPU-decoding path against the CPU path; shards on Ray actors.

One local Ray cluster (2 CPUs) serves the whole module. Test-only encoders reach the actors by
import (Ray puts the driver's working directory, the repository, on the workers' path).
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from indexer.catalog.models import Embedding, Photo, PhotoFile
from indexer.collection import Collection
from indexer.distributed import EncoderRecipe, RayOptions
from indexer.run import RunOptions, index_paths
from tests.helpers import env_offline, index_into, make_library, random_photo

REPO = Path(__file__).resolve().parents[1]
MAX_PIXELS = 50_000_000


# ---- fixtures and test doubles -------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


class _SlowEncoder:
    """An encoder that takes ``delay`` seconds per batch (so a run can be interrupted mid-way)."""

    def __init__(self, inner: Any, delay: float) -> None:
        self._inner, self._delay = inner, delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode_images(self, images: Any) -> np.ndarray:
        time.sleep(self._delay)
        return self._inner.encode_images(images)


@dataclass(frozen=True)
class SlowRecipe:
    """Loads the real encoder in the actor, slowed down; registers the actor with ``registry`` if named."""

    inner: EncoderRecipe
    delay: float = 0.0
    registry: str | None = None

    def __call__(self) -> _SlowEncoder:
        encoder = self.inner()
        if self.registry:
            import ray

            actor = ray.get_runtime_context().current_actor
            ray.get(ray.get_actor(self.registry).add.remote(actor))
        return _SlowEncoder(encoder, self.delay)


class _Registry:
    """Actor handles of every encode actor started (a restarted actor registers again)."""

    def __init__(self) -> None:
        self.handles: list[Any] = []

    def add(self, handle: Any) -> None:
        self.handles.append(handle)

    def all(self) -> list[Any]:
        return self.handles


def slow_driver(lib: str, coll_dir: str, model_dir: str, address: str) -> None:
    """A driver process for the SIGKILL test: the tiny encoder at 0.4 s per batch, on the given cluster.

    The driver itself loads no model (nor torch): the actors do."""
    coll = Collection.open(Path(coll_dir))
    recipe = SlowRecipe(EncoderRecipe("local-dir:" + model_dir, None, "cpu", "fp32"), delay=0.4)
    index_paths(coll, recipe, [lib], RunOptions(batch_size=4, workers=0, engine="ray",
                                                ray=RayOptions(address=address, recipe=recipe)))


def _catalog(coll_dir: Path) -> dict[str, tuple]:
    """path -> (status, error, facts..., vector) of every photo file."""
    coll = Collection.open(coll_dir)
    try:
        with coll.catalog.session() as s:
            rows = s.execute(select(PhotoFile.path, Photo.status, Photo.error, Photo.format, Photo.width, Photo.height,
                                    Photo.taken_at, Photo.camera_make, Photo.camera_model, Photo.orientation,
                                    Embedding.vector)
                             .join(Photo, Photo.id == PhotoFile.photo_id)
                             .outerjoin(Embedding, Embedding.photo_id == Photo.id)).all()
    finally:
        coll.close()
    return {r[0]: tuple(r[1:]) for r in rows}


def _paths(coll_dir: Path) -> dict[str, int]:
    coll = Collection.open(coll_dir)
    try:
        with coll.catalog.session() as s:
            return dict(s.execute(select(PhotoFile.path, PhotoFile.photo_id)).all())
    finally:
        coll.close()


def _mixed_library(lib: Path) -> None:
    """Ordinary photos plus files that must be recorded as errors or need conversions."""
    make_library(lib, 10)
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    (lib / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (lib / "zero.jpg").write_bytes(b"")
    (lib / "text.jpg").write_text("just text")
    Image.new("L", (9000, 9000)).save(lib / "bomb.png")  # past max_image_pixels: recorded, not decoded
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(lib / "cmyk.jpg")
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(lib / "deep16.png")
    random_photo(lib / "progressive.jpg", (80, 60), seed=77, progressive=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera Maker"
    exif[0x0132] = "2021:05:06 07:08:09"
    random_photo(lib / "rotated.jpg", (60, 40), seed=78, exif=exif)


RAY_OPTS = RunOptions(batch_size=4, workers=0, max_image_pixels=MAX_PIXELS)


def _index(coll_dir: Path, encoder: Any, lib: Path, **kw: Any):
    return index_into(coll_dir, encoder, [lib], opts=RAY_OPTS, **kw)


def _vectors(db: Path) -> dict[int, bytes]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return dict(conn.execute("SELECT photo_id, vector FROM embeddings"))


def _count(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


# ---- the Ray engine ------------------------------------------------------------------------------
def test_ray_engine_gives_the_local_engines_catalog_and_vectors(tmp_path, tiny_encoder, ray_cluster):
    lib = tmp_path / "lib"
    _mixed_library(lib)
    local = _index(tmp_path / "local", tiny_encoder, lib)
    remote = _index(tmp_path / "ray", tiny_encoder, lib, engine="ray", ray=RayOptions())
    assert (remote.encode.encoded, remote.encode.errors) == (local.encode.encoded, local.encode.errors) == (14, 4)
    a, b = _catalog(tmp_path / "local"), _catalog(tmp_path / "ray")
    assert a.keys() == b.keys()
    for path in a:
        assert a[path][:-1] == b[path][:-1], path  # status, error reason, EXIF facts
        if a[path][-1] is None:
            assert b[path][-1] is None, path
        else:
            va, vb = (np.frombuffer(r[-1], np.float16).astype(np.float32) for r in (a[path], b[path]))
            assert np.allclose(va, vb, atol=2e-3), path
    errors = {Path(p).name: r[1] for p, r in b.items() if r[0] == "error"}
    assert set(errors) == {"truncated.jpg", "zero.jpg", "text.jpg", "bomb.png"}
    assert "decompression-bomb" in errors["bomb.png"] and "empty file" in errors["zero.jpg"]
    rotated = next(r for p, r in b.items() if p.endswith("rotated.jpg"))
    assert rotated[8] == 6 and rotated[6] == "Camera Maker" and rotated[5].year == 2021
    again = _index(tmp_path / "ray", tiny_encoder, lib, engine="ray", ray=RayOptions())
    assert again.encode.encoded == 0 and again.encode.errors == 0 and again.sync.unchanged == 18
    # the actors' precision is recorded like the local engine's (the recipe carries the settled precision)
    made = [json.loads((tmp_path / d / "manifest.json").read_text())["photos_by_precision"] for d in ("local", "ray")]
    assert made[0] == made[1] and sum(made[1].values()) == 14, made


def test_lost_actors_mid_run_every_photo_once(tmp_path, tiny_encoder, ray_cluster):
    """Two actors killed mid-run: the first one Ray restarts (its batches are retried), the second one
    is killed for good (the engine starts the pipeline again for what is still pending). Each photo
    ends with exactly one vector, its own."""
    import ray

    n = 32
    lib = tmp_path / "lib"
    make_library(lib, n)
    name = f"photodex-test-encoders-{os.getpid()}"
    registry = ray.remote(num_cpus=0)(_Registry).options(name=name).remote()
    kills: list[bool] = []  # no_restart of each kill

    def kill_actors(session, ids, vectors) -> None:  # runs in the driver, in a batch's transaction
        handles = ray.get(registry.all.remote())
        if not kills:
            ray.kill(handles[0], no_restart=False)  # the process dies; Ray restarts the actor
            kills.append(False)
        elif len(kills) == 1 and len(handles) >= 2:  # the restarted actor is at work: now for good
            ray.kill(handles[-1], no_restart=True)
            kills.append(True)

    recipe = SlowRecipe(EncoderRecipe.like(tiny_encoder), delay=0.3, registry=name)
    summary = _index(tmp_path / "coll", tiny_encoder, lib, engine="ray", on_commit=kill_actors,
                     ray=RayOptions(recipe=recipe))
    assert kills == [False, True] and len(ray.get(registry.all.remote())) >= 3
    assert summary.encode.encoded == n and summary.encode.errors == 0
    coll = Collection.open(tmp_path / "coll")
    with coll.catalog.session() as s:
        vec_ids = list(s.scalars(select(Embedding.photo_id)))
        statuses = list(s.scalars(select(Photo.status)))
    assert len(vec_ids) == len(set(vec_ids)) == n and statuses == ["indexed"] * n
    ids, vectors = coll.load_vectors()
    coll.close()
    paths = {pid: Path(p).name for p, pid in _paths(tmp_path / "coll").items()}
    files = {p.name: p for p in lib.rglob("*.jpg")}
    expected = tiny_encoder.encode_images([Image.open(files[paths[int(i)]]).convert("RGB") for i in ids])
    assert np.allclose(vectors, expected, atol=2e-3)  # each photo got its own vector
    ray.kill(registry)


def test_killed_driver_resumes_with_nothing_lost_or_twice(tmp_path, tiny_clip, tiny_encoder, ray_cluster, capsys):
    from ui.cli import main

    lib, coll_dir = tmp_path / "lib", tmp_path / "coll"
    n = 24
    make_library(lib, n)
    Collection.open_for_encoder(coll_dir, tiny_encoder.spec).close()
    db = coll_dir / "catalog.db"
    cmd = [sys.executable, "-c", "import sys; from tests.test_ray_engine import slow_driver; slow_driver(*sys.argv[1:])",
           str(lib), str(coll_dir), str(tiny_clip[0]), ray_cluster]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env_offline(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _count(db, "SELECT count(*) FROM embeddings") < 4:
        assert proc.poll() is None, f"driver ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "driver made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # the driver dies mid-run; its actors and tasks go with it
    proc.wait()
    committed = _vectors(db)
    assert 4 <= len(committed) < n
    # resume with the CLI (in this process, on the same cluster): only what was not committed is encoded
    capsys.readouterr()
    rc = main(["index", str(lib), "--collection", str(coll_dir), "--engine", "ray", "--ray-address", ray_cluster,
               "--batch-size", "4", "--device", "cpu", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(out)
    assert summary["encode"]["encoded"] == n - len(committed) and summary["index"]["vectors"] == n
    final = _vectors(db)
    assert len(final) == n and all(final[pid] == vec for pid, vec in committed.items())
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM photos WHERE status != 'indexed'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM photos").fetchone()[0] == n


def test_driver_reads_pending_photos_in_bounded_windows(tmp_path, tiny_encoder, ray_cluster, monkeypatch):
    """The driver asks the catalog for at most ``pending_chunk`` pending photos at a time and runs one
    pipeline per window; a pipeline that loses a worker for good in the second window (Ray's
    RayActorError, raised from its stream after one committed batch) is restarted for the rest of that
    window only. Every photo still ends indexed exactly once."""
    import ray.exceptions

    import indexer.encode.pending as pending
    from indexer.distributed import engine

    n, window = 30, 12
    lib = tmp_path / "lib"
    make_library(lib, n)
    calls: list[tuple[int | None, int | None, int]] = []  # (after, limit, rows returned)
    built: list[int] = []
    real_items, real_build = pending.pending_items, engine.build_dataset

    def spy_items(coll, after=None, limit=None):  # noqa: ANN001, ANN202
        rows = real_items(coll, after=after, limit=limit)
        calls.append((after, limit, len(rows)))
        return rows

    class LosesAWorker:
        """The real dataset, whose stream fails after its first batch, as when an actor is lost for good."""

        def __init__(self, ds: Any) -> None:
            self.ds = ds

        def iter_batches(self, **kwargs: Any):  # noqa: ANN201
            for out in self.ds.iter_batches(**kwargs):
                yield out
                raise ray.exceptions.RayActorError()

    def spy_build(items, *args, **kwargs):  # noqa: ANN001, ANN202
        built.append(len(items))
        ds = real_build(items, *args, **kwargs)
        return LosesAWorker(ds) if len(built) == 2 else ds

    monkeypatch.setattr(pending, "pending_items", spy_items)
    monkeypatch.setattr(engine, "build_dataset", spy_build)
    summary = _index(tmp_path / "coll", tiny_encoder, lib, engine="ray", ray=RayOptions(pending_chunk=window))
    assert summary.encode.encoded == n and summary.encode.errors == 0
    assert all(limit == window for _, limit, _ in calls)  # never an unbounded read of the pending list
    assert built == [rows for *_, rows in calls if rows] and max(built) <= window and calls[-1][2] == 0
    assert built[:2] == [window, window] and len(built) >= 4
    afters = [after for after, _, _ in calls]
    assert afters[0] is None and afters[1] == afters[2]  # the restart re-reads the second window from its start
    assert all(a < b for a, b in zip(afters[2:], afters[3:]))  # then the walk goes on past it
    with Collection.open(tmp_path / "coll") as coll, coll.catalog.session() as s:
        vec_ids = list(s.scalars(select(Embedding.photo_id)))
        statuses = list(s.scalars(select(Photo.status)))
    assert len(vec_ids) == len(set(vec_ids)) == n and statuses == ["indexed"] * n


def test_shards_served_by_ray_actors_equal_one_exact_index(tmp_path, ray_cluster):
    from retrieval.index.choice import flat_spec
    from retrieval.index.sharded import ShardedIndex, ray_shards
    from retrieval.index.vector_index import VectorIndex

    rng = np.random.default_rng(0)
    ids = np.arange(1, 2001, dtype=np.int64) * 3
    vecs = rng.normal(size=(2000, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = vecs[:5] + 0.1
    ShardedIndex.build(ids, vecs, 3, flat_spec()).save(tmp_path / "shards")
    remote = ray_shards(tmp_path / "shards", num_cpus=0)
    single = VectorIndex.build(ids, vecs, flat_spec())
    for kw in ({}, {"allowed_ids": ids[::7]}):
        s1, i1 = single.search(queries, 15, **kw)
        s2, i2 = remote.search(queries, 15, **kw)
        assert np.array_equal(i1, i2) and np.allclose(s1, s2, atol=1e-6)
    assert np.allclose(remote.reconstruct(ids[[0, 1999]]), vecs[[0, 1999]], atol=1e-6)


# ---- GPU decoding: the tensor path against the CPU path ------------------------------------------
def _scene(path: Path, size: tuple[int, int], seed: int, **save_kw: Any) -> Path:
    """A smooth photo-like JPEG (gradients and discs, not noise: resampling differences stay small)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([x / w * 255, y / h * 255, np.full_like(x, 255 * rng.random())], -1)
    img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(h // 10, h // 3)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=92, **save_kw)
    return path


def _compare_tensor_path(tmp_path: Path, device: str) -> None:
    from indexer.encode.decode import decode_photo
    from indexer.distributed.gpu_decode import MEAN_ABS_TOLERANCE, TensorPreprocess, decode_jpeg_batch, probe_jpeg
    from indexer.distributed.stages import preprocess_for

    cfg = {"size": 224, "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
           "interpolation": "bicubic", "resize_mode": "shortest"}
    pre, cpu_pre = TensorPreprocess.from_spec(cfg), preprocess_for(cfg)
    mean, std = torch_tensor(cfg["mean"]), torch_tensor(cfg["std"])
    paths = []
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        paths.append(_scene(tmp_path / f"o{orientation}.jpg", (1600, 1000), seed=orientation, exif=exif))
    datas = [p.read_bytes() for p in paths]
    probes = [probe_jpeg(d) for d in datas]
    assert all(p is not None and p.gpu_ok for p in probes)
    out = decode_jpeg_batch(datas, [p.orientation for p in probes], pre, device)
    assert out is not None
    for path, tensor in zip(paths, out):
        img, _ = decode_photo(str(path), 224)
        ref = cpu_pre(img)
        assert tensor.shape == ref.shape
        diff = ((tensor.cpu() * std + mean) - (ref * std + mean)).abs().mean().item()
        assert diff <= MEAN_ABS_TOLERANCE, (path.name, diff)


def torch_tensor(values: list[float]):
    import torch

    return torch.tensor(values).view(3, 1, 1)


def test_tensor_decode_path_matches_cpu_path_incl_exif_orientation(tmp_path):
    pytest.importorskip("torchvision")
    _compare_tensor_path(tmp_path, "cpu")


@pytest.mark.gpu
def test_gpu_decode_matches_cpu_path_within_tolerance(tmp_path):
    _compare_tensor_path(tmp_path, "cuda")


def test_gpu_decode_stages_fall_back_to_cpu_per_photo(tmp_path, tiny_encoder, monkeypatch):
    """The raw-JPEG stages run in-process: CMYK, progressive, PNG and broken files take the CPU path,
    a batch nvJPEG rejects falls back photo by photo, and results match the local engine's."""
    from indexer.distributed.gpu_decode import decode_jpeg_batch, probe_jpeg
    from indexer.distributed.stages import KIND_JPEG, KIND_PIXELS, DecodeConfig, EncodeActor, decode_stage
    from indexer.encode.run import PhotoDataset

    lib = tmp_path / "lib"
    _mixed_library(lib)
    paths = sorted(p for p in lib.rglob("*") if p.is_file())
    cfg = DecodeConfig(tiny_encoder.spec.preprocess, tiny_encoder.image_size, (3, 32, 32), MAX_PIXELS, raw_jpegs=True)
    batch = {"id": np.arange(len(paths), dtype=np.int64), "path": np.array([os.fsencode(p) for p in paths], object)}
    rows = decode_stage(batch, cfg)
    kinds = {p.name: int(k) for p, k in zip(paths, rows["kind"])}
    assert kinds["cmyk.jpg"] == kinds["progressive.jpg"] == kinds["deep16.png"] == KIND_PIXELS
    assert kinds["rotated.jpg"] == kinds["img_0000.jpg"] == KIND_JPEG
    assert probe_jpeg(b"\xff\xd8 not really") is None
    assert decode_jpeg_batch([b"\xff\xd8\xff garbage"], [1], None, "cpu") is None  # the whole batch refused

    recipe = EncoderRecipe.like(tiny_encoder)
    actor = EncodeActor(recipe, tiny_encoder.spec.id, cfg, "cpu")  # the tensor path, on libjpeg-turbo
    outs = [actor(dict(rows))]
    import torchvision.io

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("nvjpeg: unsupported")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", refuse)
    outs.append(actor(dict(rows)))
    local = [PhotoDataset([(i, os.fsencode(p))], tiny_encoder.preprocess, tiny_encoder.image_size)[0]
             for i, p in enumerate(paths)]
    for out in outs:  # batched tensor decode; then the same batch with every batched decode failing
        for i, (_, tensor, facts, error) in enumerate(local):
            assert bool(out["ok"][i]) == (tensor is not None), paths[i].name
            if tensor is None:
                assert out["error"][i] == error
                continue
            ref = tiny_encoder.encode_images(tensor[None])[0]
            assert float(ref @ out["vector"][i]) > 0.98, paths[i].name
            assert json.loads(out["facts"][i])["orientation"] == facts.orientation
