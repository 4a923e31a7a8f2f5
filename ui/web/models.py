"""What the web needs beyond the API's own response models: policies it can send back whole.

The web reads the API with the server's response models (``ui.api.moderation_schemas``,
``ui.api.ask_schemas``, ``ui.api.schemas``: plain pydantic, importing them loads no retrieval,
answerer, catalog or FastAPI code). A policy the threshold page reads is stored again as a new
version, so its models keep fields they do not name (a newer server's) instead of dropping them.
"""

from __future__ import annotations

from pydantic import ConfigDict

from ui.api.moderation_schemas import ConceptOut, PolicyOut, PolicyVersionOut


class ConceptBody(ConceptOut):
    model_config = ConfigDict(extra="allow")


class PolicyBody(PolicyOut):
    """A stored policy as it can be sent back (``POST /policies``), unknown fields included."""

    model_config = ConfigDict(extra="allow")

    concepts: list[ConceptBody]  # type: ignore[assignment]

    def concept(self, name: str) -> ConceptBody:
        return next(c for c in self.concepts if c.name == name)


class PolicyVersion(PolicyVersionOut):
    """``PolicyVersionOut`` whose policy keeps unknown fields."""

    policy: PolicyBody
