"""What every layer uses; imports nothing else of photodex.

Modules:
    errors    the one error family (PhotodexError, InputError, ConfigError, ...), mapped once by the CLI and API
    settings  the indexer's settings and the PHOTODEX_* environment config every settings part shares
    spec      EncoderSpec: what a collection's vectors were made with
    vectors   the stored vector format (float16 bytes) and L2-normalisation
    atomic    atomic file writes (temp file, fsync, replace)
    progress  the progress callback type of long runs
    storage_errors  a read-only or full disk, in whatever shape it arrives, as one StorageError
"""
