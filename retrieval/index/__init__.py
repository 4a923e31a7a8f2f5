"""The vector index: FAISS index types, their choice, persistence and keeping them in step.

Modules:
    choice        IndexSpec, SearchParams and the index-type choice by collection size
    vector_index  VectorIndex: build / add / remove / rebuild / search / save / load by photo id
    selectors     input coercion and faiss IDSelectors for filtered search
    locking       the in-process reader/writer lock of one VectorIndex
    persistence   the index file's sidecar: spec, counts and per-block checksums
    gpu           GPU FAISS availability and mirroring
    recall        exact k-NN ground truth and recall@k
    state         which index file is current (index/state.json), readable without faiss
    store         the collection's index file: refreshed by the writer, opened by readers
    loader        a server's view of the index, kept current off the request path
    sharded       one index per photo-id range, every shard searched, top-k merged exactly
    settings      the index's settings part (PHOTODEX_INDEX_SHARDS)
"""
