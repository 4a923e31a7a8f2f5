"""Everything computed from stored vectors.

Sub-packages (each may import only the ones named after it, and retrieval's modules):
    index       FAISS index types, choice, persistence with checksums, the index file's upkeep
    classify    labels, templates, zero-shot weights and cache, few-shot heads, tagging, metrics
    moderation  versioned policies, decisions and their history, re-evaluation, calibration (imports classify)
    search      text / image / id search, filters, query arithmetic, collapse, the fast text path (imports index)
    evaluation  caption files, Recall@K and zero-shot as clip_benchmark reports them, the eval
                vector cache, model comparison (imports classify, index)
Modules (below every sub-package):
    scoring     L2-normalisation, top-k and softmax shared by all of them
    outcomes    moderation's decision vocabulary (actions, outcomes, which hide a photo)
    visibility  which photos search and tagging hide (quarantine, block) and the ``moderation=`` filter condition
"""
