"""A tiny SigLIP-style model (open_clip ``CustomTextCLIP`` with ``init_logit_bias``, a tokenizer made here with the
``tokenizers`` library) through index -> text search -> zero-shot -> moderation -> eval, offline; its label
probabilities are its own sigmoid scores, and the reports say so."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.classify.scoring import classify_vectors, cosine_scores, zero_shot_probs
from tests.world.eval_sets import write_caption_sets
from ui.demo.world import CLASSES, world_corpus, write_imagefolder, write_library
from ui.cli import main


def save_tiny_siglip(folder: Path, seed: int = 5) -> Path:
    """A random SigLIP-style local-dir model: no causal mask, last-token pool, logit bias, HF fast tokenizer."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True)
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([t.lower() for t in world_corpus()],
                            trainers.WordPieceTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=16).save_pretrained(folder)
    cfg = {"embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
           "text_cfg": {"context_length": 16, "vocab_size": tok.get_vocab_size(), "hf_tokenizer_name": "local",
                        "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 2, "layers": 2,
                        "no_causal_mask": True, "proj_bias": True, "pool_type": "last"}}
    torch.manual_seed(seed)
    net = open_clip.model.CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                         init_logit_bias=cfg["init_logit_bias"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"size": 32}}))
    return folder


@pytest.fixture(autouse=True)
def _one_process(monkeypatch):
    monkeypatch.setenv("PHOTODEX_WORKERS", "0")
    monkeypatch.setenv("PHOTODEX_DEVICE", "cpu")


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    return save_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny_siglip")


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_sigmoid_scoring_by_hand():
    rng = np.random.default_rng(0)
    vecs, weights = rng.standard_normal((7, 8)), rng.standard_normal((5, 8))
    cos = cosine_scores(vecs, weights)
    probs = zero_shot_probs(vecs, weights, 10.0, logit_bias=-3.0)
    np.testing.assert_allclose(probs, sigmoid(10.0 * cos - 3.0), rtol=1e-5)
    np.testing.assert_allclose(zero_shot_probs(vecs, weights, 10.0).sum(axis=1), 1.0, rtol=1e-5)  # softmax
    top = classify_vectors(vecs, weights, 10.0, k=3, logit_bias=-3.0, chunk=3)
    order = np.argsort(-cos, axis=1)[:, :3]
    np.testing.assert_array_equal(top.indices, order)  # sigmoid keeps the cosine order
    np.testing.assert_allclose(top.values, np.take_along_axis(sigmoid(10.0 * cos - 3.0), order, 1), rtol=1e-5)
    # a label's sigmoid probability does not move when other labels are added
    more = zero_shot_probs(vecs, np.vstack([weights, rng.standard_normal((3, 8))]), 10.0, logit_bias=-3.0)
    np.testing.assert_allclose(more[:, :5], probs, rtol=1e-6)


def test_tiny_siglip_end_to_end(capsys, tmp_path, siglip):
    from indexer.encode.encoders import load_encoder

    model = f"local-dir:{siglip}"
    encoder = load_encoder(model, device="cpu")
    assert encoder.logit_bias == pytest.approx(-10.0) and type(encoder.tokenizer).__name__ == "HFTokenizer"
    lib = tmp_path / "library"
    library = write_library(lib, 12, seed=21)
    coll = ["--collection", str(tmp_path / "coll")]
    index = json.loads(run(capsys, "index", str(lib), *coll, "--model", model, "--json"))
    assert index["encode"]["encoded"] == 12
    # text search over the fast text path (the exported tower and its HF tokenizer, no torch model)
    hits = json.loads(run(capsys, "search", "a photo of a red circle", *coll, "-k", "5", "--no-collapse", "--json"))
    assert len(hits["results"] if isinstance(hits, dict) else hits) == 5
    # zero-shot of one file: the probabilities are the model's sigmoid scores, not a softmax over the labels
    labels = ["red circle", "blue square", "green triangle"]
    out = json.loads(run(capsys, "classify", str(library[0][0]), "--labels", ",".join(labels), "--templates",
                         "imagenet7", "-k", "3", "--model", model, "--json"))
    got = {x["label"]: x["score"] for x in out[0]["labels"]}
    from retrieval.classify.tagging import ZeroShotClassifier, encode_files

    clf = ZeroShotClassifier(encoder, labels, "imagenet7")
    vec, _ = encode_files(encoder, [str(library[0][0])])
    expected = sigmoid(encoder.logit_scale * cosine_scores(vec, clf.weights)[0] + encoder.logit_bias)
    assert [got[lab] for lab in labels] == pytest.approx(expected.tolist(), abs=1e-5)
    assert abs(sum(got.values()) - 1.0) > 1e-3
    tagged = json.loads(run(capsys, "classify", "--all", "--labels", ",".join(labels), *coll, "--json"))
    assert tagged["scoring"] == "sigmoid" and tagged["photos"] == 12
    # moderation with the shipped policy, from the stored vectors
    run(capsys, "policy", "set", "starter", "--activate", *coll)
    moderated = json.loads(run(capsys, "moderate", "--all", *coll, "--json"))
    assert moderated
    # the evaluations
    folder = tmp_path / "folder"
    write_imagefolder(folder, 1, seed=4)
    zs = json.loads(run(capsys, "eval", "zeroshot", str(folder), "--model", model, "--no-cache", "--json"))
    assert zs["scoring"] == "sigmoid" and zs["classes"] == len(CLASSES)
    text = run(capsys, "eval", "zeroshot", str(folder), "--model", model, "--no-cache")
    assert "(sigmoid scoring)" in text
    sets = write_caption_sets(tmp_path / "sets")
    ret = json.loads(run(capsys, "eval", "retrieval", str(sets.karpathy), "--images", str(sets.images), "--model",
                         model, "--no-cache", "--json"))
    assert ret["embed_dim"] == 32 and set(ret["metrics"]) >= {"image_retrieval_recall@1", "text_retrieval_recall@10"}


def test_clip_keeps_softmax(capsys, tmp_path, world_tiny_clip_dir):
    folder = tmp_path / "folder"
    write_imagefolder(folder, 1, seed=4)
    zs = json.loads(run(capsys, "eval", "zeroshot", str(folder), "--model", f"local-dir:{world_tiny_clip_dir}",
                        "--no-cache", "--json"))
    assert zs["scoring"] == "softmax"
