"""The encoder spec: what a collection's vectors were made with, pinned in its manifest."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class EncoderSpec:
    """Identity of an open_clip encoder and the preprocessing that belongs to it."""

    model: str
    pretrained: str | None
    embed_dim: int
    weights_fingerprint: str = ""
    preprocess: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def id(self) -> str:
        """Stable identifier: two specs with the same id produce comparable vectors."""
        model = self.model
        if model.startswith("local-dir:"):  # the folder may move; its content identifies it
            model = "local-dir:" + Path(model[len("local-dir:"):]).name
        pretrained = self.pretrained or ("local" if self.weights_fingerprint else "random")
        if self.weights_fingerprint:
            pretrained = f"{Path(pretrained).name}@{self.weights_fingerprint}"
        return f"{model}|{pretrained}|{self.embed_dim}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["id"] = self.id
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderSpec":
        return cls(
            model=data["model"],
            pretrained=data.get("pretrained"),
            embed_dim=int(data["embed_dim"]),
            weights_fingerprint=data.get("weights_fingerprint", ""),
            preprocess=dict(data.get("preprocess") or {}),
        )


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """Cheap content fingerprint of a weights file or folder (size + head/tail bytes).

    Moving or renaming weights keeps the fingerprint; different weights change it.
    """
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            digest.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), os.SEEK_END)
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]
