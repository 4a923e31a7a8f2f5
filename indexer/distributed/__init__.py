"""Indexing on Ray Data: the same run as :mod:`indexer.run`, with decoding and encoding spread out.

The scan, the catalog and every commit stay in the driver (the collection's one writer); Ray Data
decodes in CPU tasks and encodes in an actor pool; results stream back and are committed per batch
exactly as the local engine commits them. Needs the ``ray`` extra (``pip install photodex[ray]``).

Modules:
    recipe      EncoderRecipe: how each actor loads its own encoder (picklable; the model never is)
    stages      the decode stage (CPU tasks) and the encode actor, and the rows passed between them
    gpu_decode  batched nvJPEG decoding with hand-applied EXIF orientation and per-image CPU fallback
    engine      RayOptions and encode_pending_ray: build the dataset, stream results, commit per batch
"""

from .engine import RayOptions, encode_pending_ray, ray_available
from .recipe import EncoderRecipe

__all__ = ["EncoderRecipe", "RayOptions", "encode_pending_ray", "ray_available"]
