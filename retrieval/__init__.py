"""Everything computed from stored vectors.

Sub-packages:
    index       FAISS index types, choice, persistence with checksums, the index file's upkeep
    search      text / image / id search, filters, query arithmetic, near-duplicate collapse
    classify    labels, templates, zero-shot weights and cache, few-shot heads, tagging, metrics
    moderation  versioned policies, decisions and their history, re-evaluation, calibration
Module:
    scoring     L2-normalisation, top-k and softmax shared by all of them
"""
