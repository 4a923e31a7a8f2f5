"""Bringing the catalog in line with the photo folders.

Modules:
    scan   finding photo files under the roots (globs, symlink rules, RAW beside a JPEG)
    plan   comparing a scan with the catalog, hashing new and changed files (sync_catalog)
    types  SyncReport and the rows passed from plan to write
    write  the catalog writes of a sync (the ORM, imported only when there is something to write)
"""
