"""The decision vocabulary of moderation (no pydantic, so search can import it cheaply)."""

from __future__ import annotations

ACTIONS = ("flag", "quarantine", "block")  # what a concept over its threshold does, weakest first
OUTCOMES = ("allow", "review", *ACTIONS)  # every decision, weakest first (its rank is its index)
HIDDEN_ACTIONS = ("quarantine", "block")  # excluded from search unless asked for
