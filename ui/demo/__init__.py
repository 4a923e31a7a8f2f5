"""Synthetic photo libraries and tiny models made offline, for the demo, the benchmarks and the tests.

Nothing here downloads anything: every picture is drawn from a seed, every model is built or shipped in the repo.

Modules:
    world       the synthetic world: coloured shapes (and a skull) with captions, labels and answers
    collection  a world library indexed with a tiny CLIP into a collection, with its ground truth
    photos      libraries of random-noise JPEGs in nested folders
    tiny_clip   a seeded random tiny open_clip model saved as a local-dir folder
"""
