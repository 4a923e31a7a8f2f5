"""From photo folders to a collection: the catalog, the encoders and the index run (the bottom layer).

Packages:
    core          what every layer uses: errors, settings, encoder spec, stored vectors, atomic writes, progress
    catalog       the catalog database: engine, ORM models, plain-SQL reads, photo status, schema revisions,
                  migrations/ (Alembic)
    sync          scanning the folders and bringing the catalog in line with them (plan, types, write)
    encode        encoders, decoding photos, what is pending and the encode run
    distributed   the same encode run on Ray Data
Modules:
    collection    Collection: manifest, catalog, stored vectors, lifecycle
    writer_lock   one writer at a time per collection; readers never take it
    file_identity which file a catalogued path was when indexed; opening it only while it still is
    run           one index run: writer lock, sync, encode
    child_processes  what forked workers drop (lock fds, listening sockets) and dying with their parent
    priority      index runs yield the CPU to a server holding the collection (serving mark, nice)
"""
