"""Exceptions shared by every layer; the CLI and API map them to exit codes and 4xx responses."""


class PhotodexError(Exception):
    """Base class for errors photodex reports to the user as one clear line."""


class ConfigError(PhotodexError):
    """Bad configuration: unknown model, unwritable collection, bad option (CLI exit code 2)."""


class EncoderLoadError(ConfigError):
    """The encoder weights or config could not be found or loaded."""


class EncoderMismatchError(ConfigError):
    """A collection was built with one encoder and is being used with another."""


class CollectionError(ConfigError):
    """The collection is missing, unreadable or of an unsupported format."""
