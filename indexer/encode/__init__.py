"""Turning photos into vectors.

Modules:
    encoders  the encoder registry: open_clip models, local files, hf-hub: and local-dir: models
    model_load  an open_clip model built straight from its checkpoint (meta parameters, mmap'd weights, no random init)
    decode    decoding photos (Pillow, HEIC, camera RAW) into RGB sized for the encoder, with EXIF facts
    pending   what an index run has left to encode and its report (no torch)
    run       the encode run: decode in workers, encode in batches, commit per batch
"""
