"""Library tagging (`classify --all`) leaves out quarantined and blocked photos unless asked, like search."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import select

from indexer.catalog.models import ModerationState, Tag
from indexer.collection import Collection
from indexer.core.errors import InputError
from retrieval.classify.tagging import ZeroShotClassifier, tag_library
from retrieval.moderation.policy import parse_policy
from retrieval.moderation.rescan import rescan
from retrieval.moderation.store import save_policy
from ui.demo.world import UNSAFE_CONCEPT
from tests.helpers import WORLD
from ui.demo.collection import WorldCollection

TEMPLATES = ["a photo of a {}", "a picture of a {}"]
LABELS = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def moderated(tmp_path_factory, world_of) -> tuple[WorldCollection, dict[str, set[int]]]:
    """A world collection where some photos are quarantined (skulls) and some blocked (red circles)."""
    world = world_of(*WORLD).copy(tmp_path_factory.mktemp("tagworld") / "collection")  # moderated here
    body = {"name": "tagging", "concepts": [
        {"name": UNSAFE_CONCEPT, "prompts": [UNSAFE_CONCEPT], "templates": TEMPLATES, "threshold": 0.0,
         "action": "quarantine"},
        {"name": "red circle", "prompts": ["red circle"], "templates": TEMPLATES, "threshold": 0.0,
         "action": "block"}]}
    with world.open() as c:
        probe = save_policy(c, parse_policy(body), world.encoder)
        _, vecs = c.load_vectors()
        scores = probe.compiled().scores(vecs)
        body["concepts"][0]["threshold"] = round(float(np.quantile(scores[:, 0], 0.92)), 6)
        body["concepts"][1]["threshold"] = round(float(np.quantile(scores[:, 1], 0.9)), 6)
        rescan(c, save_policy(c, parse_policy(body), world.encoder, activate=True))
        with c.catalog.session() as s:
            state = s.execute(select(ModerationState.photo_id, ModerationState.action)).all()
        every = set(c.vector_ids().tolist())
    by_action: dict[str, set[int]] = {}
    for pid, action in state:
        by_action.setdefault(action, set()).add(pid)
    by_action["all"] = every
    assert by_action.get("quarantine") and by_action.get("block")
    return world, by_action


def _tagged(c: Collection, taxonomy: str) -> set[int]:
    with c.catalog.session() as s:
        return set(s.scalars(select(Tag.photo_id).where(Tag.taxonomy == taxonomy)))


def test_tagging_skips_quarantined_and_blocked_unless_asked(moderated, tmp_path):
    world, ids = moderated
    hidden = ids["quarantine"] | ids["block"]
    clf = ZeroShotClassifier(world.encoder, LABELS, TEMPLATES, cache_dir=tmp_path / "zs")
    with world.open() as c:
        everything = tag_library(c, clf, "shapes", moderation="any")
        assert everything["photos"] == len(ids["all"]) and everything["skipped_by_moderation"] == 0
        assert _tagged(c, "shapes") == ids["all"]
        default = tag_library(c, clf, "shapes")
        assert default["photos"] == len(ids["all"] - hidden) and default["skipped_by_moderation"] == len(hidden)
        assert _tagged(c, "shapes") == ids["all"] - hidden  # the re-run replaced the hidden photos' tags too
        assert _tagged(c, "shapes").isdisjoint(hidden)
        tag_library(c, clf, "only-q", moderation="quarantine")
        assert _tagged(c, "only-q") == ids["quarantine"]
        tag_library(c, clf, "only-allow", moderation="allow")
        assert _tagged(c, "only-allow") == ids.get("allow", set())
        with pytest.raises(InputError, match="must not be empty"):
            tag_library(c, clf, "x", moderation=" ")


def _main(capsys, *args):
    from ui.cli.app import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_classify_all_moderation_option(moderated, capsys):
    world, ids = moderated
    hidden = ids["quarantine"] | ids["block"]
    c = ["--collection", str(world.path), "--labels", ",".join(LABELS), "--templates", "photos"]
    code, out, err = _main(capsys, "classify", "--all", "--taxonomy", "cli", "--json", *c)
    assert code == 0, err
    assert json.loads(out)["photos"] == len(ids["all"] - hidden)
    code, out, err = _main(capsys, "classify", "--all", "--taxonomy", "cli", "--moderation", "block", "--json", *c)
    assert code == 0 and json.loads(out)["photos"] == len(ids["block"]), err
    with world.open() as coll:
        assert _tagged(coll, "cli") == ids["block"]
    code, out, err = _main(capsys, "classify", "some.png", "--moderation", "any", *c)
    assert code == 2 and "--moderation goes with --all" in err and "Traceback" not in err
