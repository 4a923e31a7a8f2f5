"""GPU FAISS: whether it can be used, and mirroring a CPU index onto a GPU for unfiltered searches."""

from __future__ import annotations

import logging

import faiss

log = logging.getLogger(__name__)


def gpu_available() -> tuple[bool, str]:
    """(usable, reason) for GPU FAISS."""
    if not hasattr(faiss, "StandardGpuResources"):
        return False, "installed faiss has no GPU support (faiss-cpu)"
    n = faiss.get_num_gpus()
    return (n > 0, f"{n} GPU(s) visible" if n else "faiss has GPU support but no GPU is visible")


def mirror_to_gpu(index: faiss.Index, device: int = 0) -> tuple[faiss.Index, object] | None:  # pragma: no cover - GPU
    """(GPU copy of ``index``, its resources) or None when GPU FAISS is not usable (logged)."""
    ok, why = gpu_available()
    if not ok:
        log.info("using CPU FAISS: %s", why)
        return None
    res = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(res, device, index), res
