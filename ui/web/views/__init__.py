"""The app's pages, one module each with a ``render()`` (registered in :mod:`ui.web.app`).

Modules:
    search      text search: thumbnail grid, scores, min-score slider, filters in the sidebar
    photo       one photo (metadata, tags, decision) and photos like it; upload an image for similar
    classify    zero-shot classification of an upload or a photo; tag counts
    moderation  policies, a threshold slider with a dry-run preview of what would change, calibration curve
    ask         a question answered from the photos, streamed, with its cited thumbnails
    indexing    start index jobs and follow their progress
"""
