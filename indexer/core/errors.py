"""The one error family of photodex; the CLI and API map it once (exit code 2, HTTP 4xx).

* :class:`PhotodexError` — anything photodex reports to the user as one clear line.
* :class:`InputError` — a bad user input (query, filter, template, label, image, option);
  also a ``ValueError`` so pure functions keep the usual Python contract.
* :class:`ConfigError` — bad configuration or environment (model, collection, settings).
* :class:`WriterBusyError` — another process holds the collection's writer lock.

Anything else escaping a command is a bug: a traceback and exit code 1.
"""


class PhotodexError(Exception):
    """Base class for errors photodex reports to the user as one clear line."""


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


class WriterBusyError(PhotodexError):
    """The collection's writer lock is held by another live process (its holder is named)."""
