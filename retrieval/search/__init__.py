"""Search a collection by text, image or photo id.

Modules:
    searcher  Searcher, SearchOptions, SearchHit: filters, minimum score, pagination, hydration
    filters   KEY=VALUE metadata filters → the set of photo ids a search may return
    query     query arithmetic ("beach +sunset -people") → one unit vector
    collapse  near-duplicate collapse of ranked results
    captions  BM25 match scores over stored VLM captions, for hybrid text search (Searcher.search_hybrid)
"""
