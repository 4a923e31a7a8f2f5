"""How a worker gets its encoder: a small picklable recipe, called inside the worker.

A model is never pickled to a worker (it may be gigabytes, and an :class:`~indexer.encode.encoders.Encoder`
holds a lock): each actor loads its own copy from the same weights, and refuses to run if what it
loaded is not the collection's encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.spec import EncoderSpec

if TYPE_CHECKING:
    from ..encode.encoders import Encoder


@dataclass(frozen=True)
class EncoderRecipe:
    """``load_encoder(model, pretrained, device, precision)``, deferred to the process that calls it."""

    model: str
    pretrained: str | None = None
    device: str = "auto"
    precision: str = "auto"

    def __call__(self) -> "Encoder":
        from ..encode.encoders import load_encoder

        return load_encoder(self.model, self.pretrained, self.device, self.precision)

    @classmethod
    def for_spec(cls, spec: EncoderSpec, device: str = "auto", precision: str = "auto") -> "EncoderRecipe":
        """The recipe for a collection's encoder (its manifest spec holds resolved model and weights)."""
        return cls(spec.model, spec.pretrained, device, precision)

    @classmethod
    def like(cls, encoder: Any) -> "EncoderRecipe":
        """The recipe that rebuilds an already loaded encoder in another process: same weights,
        same device kind, same precision: the one the encoder settled on (forced there, so it is checked
        against fp32 again but never chosen differently by the speed probe)."""
        choice = getattr(encoder, "precision", None)
        precision = getattr(choice, "precision", "fp32")
        device = "cpu" if getattr(encoder, "device", "cpu") == "cpu" else "auto"
        return cls(encoder.spec.model, encoder.spec.pretrained, device, precision)
