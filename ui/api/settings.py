"""The HTTP API's settings (``PHOTODEX_API_*``), one part of :class:`ui.settings.Settings`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from indexer.core.settings import SETTINGS_CONFIG


class ApiSettings(BaseSettings):
    """What the API accepts and from whom."""

    model_config = SETTINGS_CONFIG

    # read routes need an X-API-Key (scope read): None (unset) decides by the bind address (a key beyond
    # loopback); an explicit true or false always wins
    api_require_key_for_reads: bool | None = None
    api_host: str | None = None  # the address the API server binds (`photodex serve --host` sets it)
    api_max_failed_keys_per_minute: int = Field(default=20, ge=1)  # refused keys per client address; 429 beyond
    api_library_roots: list[Path] = Field(default_factory=list)  # index jobs may only index under these
    api_max_upload_bytes: int = Field(default=32 * 1024 * 1024, ge=1)  # largest request body (413 beyond)
    api_max_upload_pixels: int = Field(default=50_000_000, ge=1)  # largest uploaded image (422 beyond)
    api_cors_origins: list[str] = Field(default_factory=list)  # CORS off unless origins are listed
    api_encoder_batching: bool = True  # gather concurrent requests' encoder work into shared model calls
    api_batch_window_ms: float = Field(default=2.0, ge=0, le=1000)  # how long a batch waits for more requests
    api_encoder_threads: int = Field(default=16, ge=1, le=1024)  # requests doing encoder work at once
