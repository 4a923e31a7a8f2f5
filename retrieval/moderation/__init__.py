"""Content moderation from stored vectors: versioned policies, decisions, re-evaluation, calibration.

Its vocabulary and what it hides from search are :mod:`retrieval.outcomes` and :mod:`retrieval.visibility`.

Modules:
    policy      the policy file schema (pydantic), its validation and JSON/YAML loading
    store       policy versions in the catalog (set creates a new version; one version active)
    decide      scoring vectors against a policy: per-concept scores, thresholds, review band, special care
    service     deciding image files, uploaded bytes and catalogued ids (nothing stored)
    history     the append-only decision history, each photo's current decision, listing them
    rescan      re-evaluating the whole collection from stored vectors (dry run or real, under the writer lock);
                the ingest hook that decides freshly encoded photos in the index run's transaction
    calibrate   precision-recall curves from labelled examples, threshold choice, plots, new policy versions
    policies/   the shipped starter policy (``starter.json``)
"""
