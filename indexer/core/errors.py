"""The one error family of photodex; the CLI and API map it once (exit code 2, HTTP 4xx).

* :class:`PhotodexError` — anything photodex reports to the user as one clear line.
* :class:`InputError` — a bad user input (query, filter, template, label, image, option);
  also a ``ValueError`` so pure functions keep the usual Python contract.
* :class:`ConfigError` — bad configuration or environment (model, collection, settings).
* :class:`StorageError` — the disk under the collection is read-only or full.
* :class:`WriterBusyError` — another process holds the collection's writer lock.

Anything else escaping a command is a bug: a traceback and exit code 1.

What to do next is worded twice, because a CLI user and an HTTP client can do different things:
``hint`` may name a flag or a command, ``http_hint`` names a route, a field or a header. The CLI
prints ``str(exc)`` (message and ``hint``), the API :meth:`PhotodexError.for_http` (message and
``http_hint``), so an HTTP client is never told to pass a CLI flag.
"""

from __future__ import annotations

from typing import Any


class PhotodexError(Exception):
    """Base class for errors photodex reports to the user as one clear line."""

    def __init__(self, message: str = "", *, hint: str = "", http_hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.http_hint = http_hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def for_http(self) -> str:
        """The message for an HTTP client: the CLI ``hint`` left out, ``http_hint`` in its place."""
        return f"{self.message}; {self.http_hint}" if self.http_hint else self.message


class InputError(PhotodexError, ValueError):
    """A user-facing input that cannot be used: the message says which and why."""


class ConfigError(PhotodexError):
    """Bad configuration: unknown model, unwritable collection, bad option (CLI exit code 2)."""


class EncoderLoadError(ConfigError):
    """The encoder weights or config could not be found or loaded."""


class EncoderMismatchError(ConfigError):
    """A collection was built with one encoder and is being used with another."""


class CollectionError(ConfigError):
    """The collection is missing, unreadable or of an unsupported format."""


class StorageError(ConfigError):
    """The collection's storage refused a write: read-only, not permitted, or full (the message says which path,
    how far the work got and what to do; see :mod:`indexer.core.storage_errors`)."""


class WriterBusyError(PhotodexError):
    """The collection's writer lock is held by another live process (its holder is named).

    ``holder`` is what the holder wrote about itself (pid, host, started_at, command, and ``job``
    for an API index job), so the API can name the job or say when to retry."""

    def __init__(self, message: str = "", *, holder: dict[str, Any] | None = None, hint: str = "",
                 http_hint: str = "") -> None:
        super().__init__(message, hint=hint, http_hint=http_hint)
        self.holder = dict(holder or {})
