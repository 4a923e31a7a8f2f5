"""What search and tagging may show: quarantined and blocked photos are hidden unless the caller asks for them.

The ``moderation=`` search filter is the way to ask: ``moderation=quarantine`` returns only
quarantined photos, ``moderation=any`` (or ``all``) returns every photo whatever its decision.
A photo's decision is its current row in ``moderation_state``; a manual tag in the
``moderation`` taxonomy (the filter's earlier meaning) still counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.catalog.read import in_list
from indexer.collection import Collection
from indexer.core.errors import InputError

from .outcomes import HIDDEN_ACTIONS, OUTCOMES

TAXONOMY = "moderation"
SHOW_ALL = ("any", "all")


def moderation_condition(value: str) -> tuple[str, dict[str, Any]] | None:
    """SQL condition on ``photos`` (with its parameters) for ``moderation=value``; None when every
    photo is wanted."""
    v = value.strip().lower()
    if v in SHOW_ALL:
        return None
    params: dict[str, Any] = {"mod_taxonomy": TAXONOMY, "mod_label": value.strip()}
    tagged = ("EXISTS (SELECT 1 FROM tags mt WHERE mt.photo_id = photos.id AND mt.taxonomy = :mod_taxonomy "
              "AND mt.label = :mod_label)")
    if v not in OUTCOMES:
        return tagged, params
    decided = "EXISTS (SELECT 1 FROM moderation_state ms WHERE ms.photo_id = photos.id AND ms.action = :mod_action)"
    return f"({decided} OR {tagged})", {**params, "mod_action": v}


def asks_for_moderated(filters: Any) -> bool:
    """Whether a search's filters name a moderation value (then nothing is hidden by default)."""
    return bool(getattr(filters, "moderation", None))


def hidden_ids(coll: Collection, filters: Any = None) -> np.ndarray:
    """Sorted ids that a search with ``filters`` must not return (quarantined or blocked).

    Empty when the filters ask for a moderation value (the caller chose what to see).
    """
    if asks_for_moderated(filters):
        return np.zeros(0, dtype=np.int64)
    hidden, params = in_list("action", HIDDEN_ACTIONS)
    rows = coll.reader.rows(f"SELECT photo_id FROM moderation_state WHERE action IN ({hidden}) "
                            f"UNION SELECT photo_id FROM tags WHERE taxonomy = :taxonomy AND label IN ({hidden})",
                            {**params, "taxonomy": TAXONOMY})
    return np.unique(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))


def visible_mask(coll: Collection, ids: np.ndarray, moderation: str | None = None) -> np.ndarray:
    """Which of ``ids`` a listing (such as library tagging) includes.

    Without ``moderation``: every photo but the quarantined and blocked ones. With it: the photos
    that the search filter ``moderation=VALUE`` selects (``any`` or ``all``: every photo).
    """
    ids = np.asarray(ids, dtype=np.int64)
    if moderation is None:
        return ~np.isin(ids, hidden_ids(coll))
    if not moderation.strip():
        raise InputError(f"moderation value must not be empty; use one of {', '.join(OUTCOMES + SHOW_ALL)}")
    condition = moderation_condition(moderation)
    if condition is None:
        return np.ones(len(ids), bool)
    sql, params = condition
    chosen = [r[0] for r in coll.reader.rows(f"SELECT photos.id FROM photos WHERE {sql}", params)]
    return np.isin(ids, np.asarray(chosen, dtype=np.int64))
