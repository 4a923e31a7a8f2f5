"""Search a collection by text, image or photo id.

Modules:
    searcher           Searcher, SearchOptions, SearchHit: filters, minimum score, pagination, hydration
    defaults           the defaults every way in shares (collapse threshold, caption weight); import-free
    filters            KEY=VALUE metadata filters → the set of photo ids a search may return
    query              query arithmetic ("beach +sunset -people") → one unit vector
    collapse           near-duplicate collapse of ranked results
    captions           BM25 match scores over stored VLM captions, for hybrid text search (Searcher.search_hybrid)
    text_encoder       the fast text path: query cache → exported text tower → full model
    query_cache        the on-disk cache of recent query vectors
    text_tower         the exported text tower's format and its ONNX Runtime loader (no torch)
    tokenizer          torch-free tokenizers equal to open_clip's (CLIP BPE, HF tokenizers)
    text_tower_export  exporting and checking the text tower (torch side), once per user (cache), installed per collection
    text_tower_job     that export in a low-priority child after an index run; its ready/pending/failed state
    settings           the text tower's settings (PHOTODEX_TEXT_TOWER_EXPORT)
"""
