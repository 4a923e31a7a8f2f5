"""SQLAlchemy models of the catalog. Schema changes go through Alembic (``indexer/catalog/migrations``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .status import ERROR, INDEXED, PENDING  # noqa: F401 - re-exported with the models


class Base(DeclarativeBase):
    pass


class Photo(Base):
    """One distinct image content (by sha256); byte-identical files share one photo."""

    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    format: Mapped[str | None] = mapped_column(String(16))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    taken_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    camera_make: Mapped[str | None] = mapped_column(String(128), index=True)
    camera_model: Mapped[str | None] = mapped_column(String(128), index=True)
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    orientation: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=PENDING, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime)

    files: Mapped[list["PhotoFile"]] = relationship(back_populates="photo", passive_deletes=True)


class PhotoFile(Base):
    """A path on disk. Points at a photo, or carries the reason it could not be read."""

    __tablename__ = "photo_files"
    __table_args__ = (UniqueConstraint("path_bytes", name="uq_photo_files_path_bytes"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text, nullable=False, index=True)  # display form; not unique
    path_bytes: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # exact file-system name: the key
    photo_id: Mapped[int | None] = mapped_column(ForeignKey("photos.id", ondelete="SET NULL"), index=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, nullable=False)
    error: Mapped[str | None] = mapped_column(Text)
    # what the path was when indexed (indexer.file_identity): resolved path, device and inode; NULL: not recorded
    real_path_bytes: Mapped[bytes | None] = mapped_column(LargeBinary)
    device: Mapped[int | None] = mapped_column(BigInteger)
    inode: Mapped[int | None] = mapped_column(BigInteger)

    photo: Mapped[Photo | None] = relationship(back_populates="files")


class Embedding(Base):
    """The durable vector of a photo (float16 bytes); the FAISS index is rebuilt from these."""

    __tablename__ = "embeddings"

    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class Tag(Base):
    """A label given to a photo by a taxonomy (a zero-shot label list, a few-shot head, a user)."""

    __tablename__ = "tags"
    __table_args__ = (
        UniqueConstraint("photo_id", "taxonomy", "label", name="uq_tag"),
        Index("ix_tags_label", "label"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), index=True, nullable=False)
    taxonomy: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    label: Mapped[str] = mapped_column(String(256), nullable=False)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    manual: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class Meta(Base):
    """Small key/value facts about the catalog (e.g. the vector generation counter)."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


# ---- moderation (retrieval/moderation; migrations 0003, 0006) ---------------------------------------

class ModerationPolicy(Base):
    """One immutable version of a named moderation policy; at most one version is active.

    ``body`` is the validated policy JSON, ``weights`` the float32 prompt vectors computed with
    the collection's encoder when the version was stored (so decisions need no text model), and
    ``calibration`` the stored precision-recall curves and chosen points (JSON) if any.
    """

    __tablename__ = "moderation_policies"
    # One active version per catalog is enforced by the partial unique index ``uq_moderation_policies_one_active``
    # (``WHERE active``), created by migration 0003 (the schema comes from migrations, never from create_all). It is
    # not declared here: a ``postgresql_where`` argument imports the PostgreSQL dialect (~0.03-0.05 s) into every
    # process, SQLite ones included, and ``photodex info`` / a cold search pay for it.
    __table_args__ = (UniqueConstraint("name", "version", name="uq_moderation_policy_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)
    encoder_spec_id: Mapped[str] = mapped_column(String(512), nullable=False)
    weights: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    calibration: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class ModerationRun(Base):
    """One re-evaluation of the library under a policy version (its counts, for the audit trail)."""

    __tablename__ = "moderation_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy_id: Mapped[int] = mapped_column(ForeignKey("moderation_policies.id"), nullable=False, index=True)
    source: Mapped[str] = mapped_column(String(16), nullable=False)  # rescan | ingest
    photos: Mapped[int] = mapped_column(Integer, nullable=False)
    changed: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    finished_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class ModerationDecision(Base):
    """Append-only history: one row each time a photo's decision changes (never updated).

    Rows outlive their photo (no foreign key on ``photo_id``, migration 0006): ``photo_sha256``
    identifies the photo after it is deleted, since SQLite may give its id to a later photo.
    """

    __tablename__ = "moderation_decisions"
    __table_args__ = (Index("ix_moderation_decisions_photo", "photo_id", "id"),
                      Index("ix_moderation_decisions_photo_sha256", "photo_sha256", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    photo_id: Mapped[int] = mapped_column(Integer, nullable=False)
    photo_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    policy_id: Mapped[int] = mapped_column(ForeignKey("moderation_policies.id"), nullable=False, index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("moderation_runs.id"), index=True)
    action: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    hits: Mapped[str] = mapped_column(Text, nullable=False, default="")  # comma-joined concept names
    review: Mapped[str] = mapped_column(Text, nullable=False, default="")  # comma-joined concept names
    adjusted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)  # special care applied
    scores: Mapped[str] = mapped_column(Text, nullable=False)  # JSON {concept: score}
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)


class ModerationState(Base):
    """The current decision of each moderated photo (a pointer into the history, for fast filters).

    ``scores`` are the photo's exact float32 concept scores under policy ``scores_policy_id`` (its
    concept order); a re-evaluation re-decides from them for concepts whose prompt vectors did not
    change. NULL: score from the stored vector.
    """

    __tablename__ = "moderation_state"

    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("moderation_decisions.id", ondelete="CASCADE"),
                                             nullable=False, index=True)
    action: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    hits: Mapped[str] = mapped_column(Text, nullable=False, default="")
    review: Mapped[str] = mapped_column(Text, nullable=False, default="")
    scores: Mapped[bytes | None] = mapped_column(LargeBinary)
    scores_policy_id: Mapped[int | None] = mapped_column(Integer)


# ---- API keys (ui/api/security; migration 0004) -------------------------------------------------

class ApiKey(Base):
    """An API key of the HTTP API: only its sha256 is stored; ``prefix`` is its public lookup part."""

    __tablename__ = "api_keys"
    __table_args__ = (UniqueConstraint("name", name="uq_api_keys_name"),
                      UniqueConstraint("key_hash", name="uq_api_keys_key_hash"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False, index=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    scope: Mapped[str] = mapped_column(String(16), nullable=False)  # read | write | admin
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


# ---- captions (answerer; migration 0005) -----------------------------------------------------------

class PhotoCaption(Base):
    """A caption of a photo written by the VLM (``photodex caption --all``); one per photo, replaced on re-run."""

    __tablename__ = "photo_captions"

    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), primary_key=True)
    caption: Mapped[str] = mapped_column(Text, nullable=False)
    model: Mapped[str] = mapped_column(String(512), nullable=False)  # VLM id or path that wrote it
    created_at: Mapped[datetime] = mapped_column(DateTime, nullable=False)
