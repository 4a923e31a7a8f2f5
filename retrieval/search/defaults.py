"""Search defaults that every way in shares (searcher, API, CLI, web UI); import-free, so ``--help`` and the web
client stay light."""

DEFAULT_COLLAPSE = 0.95  # cosine at or above which a result counts as a near-duplicate of a better one
DEFAULT_CAPTION_WEIGHT = 0.1  # weight of the caption match in hybrid search: about the spread of CLIP cosines among
# a real model's top results
