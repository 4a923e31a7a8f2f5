"""SQLAlchemy models of the catalog. Schema changes go through Alembic (``indexer/migrations``)."""

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

# Photo status values.
PENDING = "pending"
INDEXED = "indexed"
ERROR = "error"


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
