"""What a sync reports and the shapes passed from its planning (:mod:`.plan`) to its writes (:mod:`.write`).

Kept apart so the two modules depend on this one and not on each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .scan import ScannedFile

HASH_CHUNK = 256  # files hashed, then committed, per chunk: a killed run re-hashes at most one chunk


@dataclass
class SyncReport:
    """What one sync changed, counted per kind."""

    scanned: int = 0
    unchanged: int = 0
    hashed: int = 0
    new_photos: int = 0
    linked_existing: int = 0  # moved, renamed or duplicate files matched by content hash
    removed_files: int = 0
    removed_photos: int = 0
    file_errors: int = 0
    raw_beside_processed: int = 0  # RAW files left out: a JPEG (or HEIC, ...) of the same name is indexed instead
    outside_roots: int = 0  # symlinked files or folders skipped: they resolve outside the allowed roots

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: "SyncReport") -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


HashResult = tuple[ScannedFile, "str | None", "str | None"]  # entry, sha256 or None, error or None
