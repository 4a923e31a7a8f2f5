"""API keys: created once (shown once), stored as sha256 in the catalog, checked in constant time.

A key looks like ``pdx_<8 id chars>_<secret>``; its first 12 characters (``prefix``) are stored in
clear to find the candidate rows, and the presented key's sha256 is compared to each candidate's
stored hash with :func:`hmac.compare_digest`. Scopes are ordered: ``read`` < ``write`` < ``admin``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from indexer.catalog.engine import Catalog
from indexer.catalog.models import ApiKey
from indexer.core.errors import InputError

SCOPES: tuple[str, ...] = ("read", "write", "admin")
KEY_PREFIX = "pdx_"
PREFIX_LEN = 12  # "pdx_" + 8 id characters
MAX_KEY_LEN = 256


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and scope."""

    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)


def hash_key(key: str) -> str:
    """sha256 hex of a key (what the catalog stores)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def create_api_key(catalog: Catalog, name: str, scope: str = "read") -> str:
    """Store a new key named ``name`` and return it in clear (the only time it is available)."""
    name = name.strip()
    if not name or len(name) > 128:
        raise InputError("an API key name must be 1 to 128 characters")
    if scope not in SCOPES:
        raise InputError(f"unknown scope {scope!r}; scopes: {', '.join(SCOPES)}")
    key = f"{KEY_PREFIX}{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"
    try:
        with catalog.session() as s, s.begin():
            s.add(ApiKey(name=name, prefix=key[:PREFIX_LEN], key_hash=hash_key(key), scope=scope,
                         created_at=_now()))
    except IntegrityError:
        raise InputError(f"an API key named {name!r} exists already (revoke it first)") from None
    return key


def list_api_keys(catalog: Catalog) -> list[dict[str, object]]:
    """Every key's name, scope, prefix and dates (never the hash)."""
    with catalog.session() as s:
        rows = s.scalars(select(ApiKey).order_by(ApiKey.name)).all()
    return [{"name": r.name, "scope": r.scope, "prefix": r.prefix, "created_at": r.created_at.isoformat(),
             "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None} for r in rows]


def revoke_api_key(catalog: Catalog, name: str) -> None:
    """Delete the key named ``name``; an :class:`InputError` if there is none."""
    with catalog.session() as s, s.begin():
        row = s.scalar(select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise InputError(f"no API key named {name!r}")
        s.delete(row)


def verify_api_key(catalog: Catalog, presented: str) -> Principal | None:
    """The key's principal, or None for an unknown or malformed key (constant-time hash compare)."""
    if not presented or len(presented) > MAX_KEY_LEN or not presented.isascii():
        return None
    digest = hash_key(presented)
    with catalog.session() as s:
        rows = s.execute(select(ApiKey.name, ApiKey.scope, ApiKey.key_hash)
                         .where(ApiKey.prefix == presented[:PREFIX_LEN], ApiKey.revoked_at.is_(None))).all()
    found: Principal | None = None
    for name, scope, stored in rows:
        if hmac.compare_digest(digest, stored) and scope in SCOPES:
            found = Principal(name, scope)
    return found
