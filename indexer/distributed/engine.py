"""``encode_pending_ray``: encode every pending photo on Ray Data, committing per batch in the driver.

The pipeline (one Ray Data dataset per run)::

    pending (id, path) rows ──map_batches(decode_stage)──> CPU tasks: decode + preprocess (or JPEG bytes)
        ──map_batches(EncodeActor, compute=ActorPoolStrategy(size=actors), num_gpus=...)──> unit vectors
        ──iter_batches──> driver: _commit_batch (vectors + statuses + EXIF facts + on_commit, one transaction)

Only the driver writes the catalog, under the writer lock the run already holds. Each streamed batch
is committed in its own transaction exactly as the local engine commits, so:

* a killed driver leaves whole batches; the next run encodes only what is still pending;
* a lost encode actor is restarted by Ray and its unfinished batches retried (Ray Data's actor pools
  run with ``max_restarts=-1, max_task_retries=-1``). A retried batch may stream a row twice; the
  driver commits each photo id once per run and drops repeats;
* an actor lost for good (killed without restart, its node gone) fails the pipeline: it is started
  again for the photos still pending (``RayOptions.attempts``), exactly as a rerun would.

The driver never holds the whole pending list: it walks it by photo id in windows of
``RayOptions.pending_chunk`` rows (one keyset query each) and runs one pipeline per window, so its
memory (the rows, Ray Data's input blocks, the ids committed this window) is bounded by the window,
whatever the library's size. The price is the pipeline start-up (encode actors load their model)
once per window: keep windows large, and larger on fast clusters (docs/scaling.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import ConfigError
from .recipe import EncoderRecipe
from .stages import DecodeConfig, EncodeActor, decode_stage, facts_from_json

if TYPE_CHECKING:
    from ..collection import Collection
    from ..encode.run import BatchHook, EncodeReport
    from ..core.progress import Progress

log = logging.getLogger(__name__)

# Memory reserved per decode task: a decode worker holds ~550 MB once torch and open_clip are imported
# (measured here), plus the batch's pixels and decoder buffers.
DECODE_MEMORY_BASE = 512 << 20
DECODE_MEMORY_PER_PHOTO = 4 << 20
INSTALL_HINT = "the ray engine needs Ray Data: pip install 'photodex[ray]'"


def ray_available() -> tuple[bool, str]:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        return False, f"{INSTALL_HINT} ({exc})"
    return True, "ok"


@dataclass(frozen=True)
class RayOptions:
    """How an index run uses Ray.

    ``address``: a running cluster (``ray://`` or ``host:port``); None uses ``RAY_ADDRESS`` or starts
    a local one for the run (shut down after it). ``actors``: encode actors (None: one per
    ``gpus_per_worker`` share of the cluster's GPUs; CPU actors: as many as hosts). ``torch_threads``: per
    actor (None: Ray's share for GPU actors, every core of the host for CPU actors, as the local
    engine does; decode tasks share those cores). ``gpu_decode``: decode baseline JPEGs
    with nvJPEG in the actors (None: on when the actors get GPUs). ``jpeg_device``: where that batched
    decode runs (``"cpu"`` runs the same tensor path on the CPU). ``recipe``: how each actor loads
    its encoder (default: the collection's own encoder on ``device``/``precision``). ``attempts``: how
    often the pipeline is started (again) when a worker is lost for good."""

    address: str | None = None
    actors: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    decode_cpus: float = 1.0
    torch_threads: int | None = None
    gpu_decode: bool | None = None
    jpeg_device: str = "cuda"
    device: str = "auto"
    precision: str = "auto"
    recipe: Callable[[], Any] | None = None
    log_to_driver: bool = False
    attempts: int = 3  # pipeline restarts after a worker is lost for good
    pending_chunk: int = 200_000  # pending photos the driver reads (and runs one pipeline on) at a time

    def validate(self) -> "RayOptions":
        if self.gpus_per_worker < 0 or self.cpus_per_worker < 0 or self.decode_cpus <= 0:
            raise ConfigError("--gpus-per-worker/cpus per worker must be >= 0 and decode cpus > 0")
        if self.pending_chunk < 1:
            raise ConfigError("the ray engine needs a pending window of at least one photo")
        if self.actors is not None and self.actors < 1:
            raise ConfigError("the ray engine needs at least one encode actor")
        if self.attempts < 1:
            raise ConfigError("the ray engine needs at least one attempt")
        return self


@contextmanager
def ray_connection(options: RayOptions) -> Iterator[None]:
    """Connect to (or start) Ray for the run; leave an already initialised Ray as it was."""
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=options.log_to_driver,
                 configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"cannot connect to Ray at {options.address or 'a new local cluster'}: {exc}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _actor_count(options: RayOptions) -> int:
    import ray

    if options.actors:
        return options.actors
    if options.gpus_per_worker > 0:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if gpus < options.gpus_per_worker:
            raise ConfigError(f"--gpus-per-worker {options.gpus_per_worker} but the Ray cluster has {gpus:g} GPUs")
        return max(1, int(gpus // options.gpus_per_worker))
    # CPU actors: as many as hosts with CPUs to spare for decoding (Ray places them; it may pair two
    # on one host, so on CPU clusters give --ray-actors and torch threads explicitly)
    hosts = [n for n in ray.nodes()
             if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > options.cpus_per_worker]
    return max(1, len(hosts))


def _recipe(coll: "Collection", encoder: Any, options: RayOptions) -> Callable[[], Any]:
    if options.recipe is not None:
        return options.recipe
    if isinstance(encoder, EncoderRecipe):
        return encoder
    if hasattr(encoder, "spec"):  # a loaded Encoder: the same weights, device kind and precision
        return EncoderRecipe.like(encoder)
    return EncoderRecipe.for_spec(coll.spec, options.device, options.precision)


def build_dataset(items: list[tuple[int, bytes]], spec: Any, recipe: Callable[[], Any], batch_size: int,
                  max_image_pixels: int, options: RayOptions) -> Any:
    """The Ray Data pipeline for ``items`` (lazy: nothing runs until it is iterated)."""
    import ray.data

    from .gpu_decode import TensorPreprocess

    preprocess = dict(spec.preprocess)
    size = preprocess.get("size", 224)
    size = tuple(int(v) for v in size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    target_size = max(size)
    pixel_shape = (3, *size)  # every open_clip eval transform ends at exactly `size` (crop, pad or squash)
    gpu_decode = options.gpu_decode if options.gpu_decode is not None else options.gpus_per_worker > 0
    raw = bool(gpu_decode) and TensorPreprocess.supports(preprocess)
    if gpu_decode and not raw:
        log.warning("GPU decoding cannot reproduce resize mode %r; decoding on the CPU",
                    preprocess.get("resize_mode"))
    cfg = DecodeConfig(preprocess, target_size, pixel_shape, max_image_pixels, raw_jpegs=raw)
    actors = _actor_count(options)
    log.info("ray engine: %d photos, batch %d, %d encode actor(s) x (%g GPU, %g CPU), decode %s",
             len(items), batch_size, actors, options.gpus_per_worker, options.cpus_per_worker,
             f"JPEGs on the actors' {options.jpeg_device}" if raw else "on CPU tasks")
    ds = ray.data.from_items([{"id": pid, "path": path} for pid, path in items],
                             override_num_blocks=max(1, -(-len(items) // batch_size)))
    # The memory reservation bounds how many decode tasks share a node; being a resource the encode
    # actors do not ask for, it also keeps Ray Data from fusing decoding into the actors.
    ds = ds.map_batches(decode_stage, fn_args=(cfg,), batch_size=batch_size, batch_format="numpy",
                        num_cpus=options.decode_cpus,
                        memory=DECODE_MEMORY_BASE + batch_size * DECODE_MEMORY_PER_PHOTO)
    # Ray Data gives actor pools max_restarts=-1 and max_task_retries=-1: a lost actor is restarted
    # and the batches it held are run again.
    return ds.map_batches(
        EncodeActor,
        fn_constructor_args=(recipe, spec.id, cfg, options.jpeg_device, options.torch_threads),
        batch_size=batch_size, batch_format="numpy", zero_copy_batch=True,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=options.gpus_per_worker or None, num_cpus=options.cpus_per_worker,
    )


def _commit_rows(out: dict[str, np.ndarray], seen: set[int]) -> tuple[dict[str, Any], np.ndarray]:
    """A streamed result batch in ``_commit_batch``'s shape, without ids already committed this run."""
    ids = np.asarray(out["id"], np.int64)
    fresh = np.array([int(i) not in seen for i in ids], dtype=bool)
    if not fresh.all():
        log.info("dropping %d rows streamed twice (a retried batch)", int((~fresh).sum()))
    ok = np.asarray(out["ok"], bool)
    good, bad = np.flatnonzero(ok & fresh), np.flatnonzero(~ok & fresh)
    batch = {"ids": ids[good].tolist(), "facts": [facts_from_json(out["facts"][i]) for i in good],
             "errors": [(int(ids[i]), str(out["error"][i])) for i in bad]}
    return batch, np.asarray(out["vector"], np.float32)[good]


def _lost_worker_errors() -> tuple[type[BaseException], ...]:
    """Ray errors that mean a worker, actor or node went away (not an error in photodex's code)."""
    import ray.exceptions as rex

    names = ("RayActorError", "WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


def encode_pending_ray(coll: "Collection", encoder: Any, batch_size: int = 64,
                       max_image_pixels: int = 178_956_970, progress: "Progress | None" = None,
                       on_commit: "BatchHook | None" = None, options: RayOptions | None = None) -> "EncodeReport":
    """Encode all pending photos of ``coll`` on Ray; same result and report as ``encode_pending``.

    ``encoder``: a loaded :class:`~indexer.encode.encoders.Encoder` (rebuilt in each actor from its spec),
    an :class:`EncoderRecipe`, or a loader (not called: the actors load the collection's encoder).
    Pending photos are read and encoded in windows of ``options.pending_chunk`` (module docstring).
    If a window's pipeline fails because a worker was lost for good (an actor killed without
    restart, a node gone), it is started again for the photos still pending, up to
    ``options.attempts`` times per window."""
    from ..encode import pending

    ok, why = ray_available()
    if not ok:
        raise ConfigError(why)
    options = (options or RayOptions()).validate()
    report = pending.EncodeReport()
    total = pending.pending_count(coll)
    if not total:
        return report
    start = time.perf_counter()
    recipe = _recipe(coll, encoder, options)
    if progress:
        progress("encode", 0, total)

    def window(after: int | None) -> list[tuple[int, bytes]]:
        return pending.pending_items(coll, after=after, limit=options.pending_chunk)

    with ray_connection(options):
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False  # the caller draws progress
        after: int | None = None  # every photo up to this id has been committed (vector or error)
        while items := window(after):
            last = items[-1][0]
            for attempt in range(1, options.attempts + 1):
                try:
                    _run_window(coll, items, recipe, batch_size, max_image_pixels, options, on_commit, report,
                                progress, total)
                    break
                except _lost_worker_errors() as exc:
                    items = window(after)  # every committed batch stays; only the rest is redone
                    if attempt == options.attempts or not items:
                        raise
                    last = max(last, items[-1][0])
                    log.warning("a Ray worker was lost (%s); restarting the pipeline for the %d photos still "
                                "pending in this window (attempt %d of %d)", type(exc).__name__, len(items),
                                attempt + 1, options.attempts)
            after = last
    report.seconds = time.perf_counter() - start
    return report


def _run_window(coll: "Collection", items: list[tuple[int, bytes]], recipe: Callable[[], Any], batch_size: int,
                max_image_pixels: int, options: RayOptions, on_commit: "BatchHook | None", report: "EncodeReport",
                progress: "Progress | None", total: int) -> None:
    """One pipeline over one window of pending photos, committing each streamed batch."""
    from ..encode.run import _commit_batch
    from ..encode.precision_record import check_mixable

    seen: set[int] = set()  # a retried batch repeats rows of this pipeline only
    ds = build_dataset(items, coll.spec, recipe, batch_size, max_image_pixels, options)
    for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
        batch, vectors = _commit_rows(out, seen)
        if not batch["ids"] and not batch["errors"]:
            continue
        committed = set(batch["ids"])
        made_by = [str(label) for pid, label in zip(out["id"], out.get("precision", ())) if int(pid) in committed]
        for label in set(made_by) - {""}:
            check_mixable(json.loads(label))  # an unchecked precision never reaches the catalog
        _commit_batch(coll, batch, vectors, on_commit)
        for label in made_by:
            if label:
                report.precisions[label] = report.precisions.get(label, 0) + 1
        seen.update(batch["ids"])
        seen.update(pid for pid, _ in batch["errors"])
        for photo_id, reason in batch["errors"]:
            log.warning("photo %d skipped: %s", photo_id, reason)
        report.encoded += len(batch["ids"])
        report.errors += len(batch["errors"])
        if progress:
            progress("encode", report.encoded + report.errors, total)
