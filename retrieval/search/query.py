"""Query arithmetic: ``beach +sunset -people`` → one unit query vector."""

from __future__ import annotations

import shlex
from collections.abc import Callable

import numpy as np

from indexer.core.errors import InputError


class QueryError(InputError):
    """A query that cannot be searched (empty, or only negative terms)."""


def parse_query(text: str) -> tuple[list[str], list[str]]:
    """Split into positive and negative terms. ``+term`` adds, ``-term`` subtracts; quotes group words.

    Plain words before the first ``+``/``-`` form the base phrase: ``red car +night`` → ["red car", "night"].
    """
    try:
        tokens = shlex.split(text)
    except ValueError:
        tokens = text.split()
    base: list[str] = []
    plus: list[str] = []
    minus: list[str] = []
    current = base
    for tok in tokens:
        if len(tok) > 1 and tok[0] in "+-":
            current = plus if tok[0] == "+" else minus
            current.append(tok[1:])
        elif current is base:
            base.append(tok)
        else:  # a plain word after an operator continues that term: "+night sky"
            current[-1] += " " + tok
    positive = ([" ".join(base)] if base else []) + plus
    if not positive:
        raise QueryError("a query needs at least one positive term (e.g. 'beach -people')")
    return positive, minus


def query_vector(text: str, encode_texts: Callable[[list[str]], np.ndarray], negative_weight: float = 0.5) -> np.ndarray:
    """Unit vector of sum(positive) - negative_weight * sum(negative)."""
    if not text or not text.strip():
        raise QueryError("empty query")
    positive, negative = parse_query(text)
    vecs = encode_texts(positive + negative)
    q = vecs[: len(positive)].sum(axis=0) - negative_weight * vecs[len(positive):].sum(axis=0)
    norm = float(np.linalg.norm(q))
    if norm < 1e-6:
        raise QueryError("the query's terms cancel out")
    return (q / norm).astype(np.float32)
