"""What the CPU offers for low-precision matrix maths, read from ``/proc/cpuinfo``.

``precision=auto`` uses these flags to decide which candidates are worth probing (bf16 needs ``avx512_bf16`` or
``amx_bf16``; int8 needs ``avx512_vnni``/``avx_vnni``/``amx_int8`` to beat fp32), and the benches print them next
to every figure. Off Linux (no ``/proc/cpuinfo``) the flags are empty and ``auto`` stays at fp32.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# flags that matter to the encoder's GEMMs (shown by the benches and kept in the probe's machine key)
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni",
                  "amx_bf16", "amx_int8", "amx_tile", "amx_fp16")
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU model name and its feature flags (lower case, as the kernel spells them)."""

    model: str
    flags: frozenset[str]

    @property
    def relevant(self) -> tuple[str, ...]:
        return tuple(f for f in RELEVANT_FLAGS if f in self.flags)

    @property
    def bf16_units(self) -> tuple[str, ...]:
        return tuple(f for f in BF16_FLAGS if f in self.flags)

    @property
    def int8_units(self) -> tuple[str, ...]:
        return tuple(f for f in INT8_FLAGS if f in self.flags)


def parse_cpuinfo(text: str) -> CpuFeatures:
    """Model name and flags of the first processor listed in a ``/proc/cpuinfo`` text."""
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return CpuFeatures(model or platform.processor() or platform.machine(), flags)


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU features (cached: they do not change while a process runs)."""
    try:
        return parse_cpuinfo(CPUINFO.read_text(errors="replace"))
    except OSError:
        return CpuFeatures(platform.processor() or platform.machine(), frozenset())


def cpu_description() -> str:
    """One line for bench output: model, cores and the flags that matter."""
    import os

    feats = cpu_features()
    return f"CPU: {feats.model}, {os.cpu_count()} logical cores, flags: {' '.join(feats.relevant) or 'none relevant'}"
