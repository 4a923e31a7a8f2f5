"""The exported text tower (ONNX) and the query-vector cache: exact vectors, staleness, no torch at search time."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexer.core.errors import ConfigError, EncoderMismatchError
from retrieval.search.query_cache import QueryCache, open_query_cache
from retrieval.search.text_tower import (
    BPE_FILE,
    ENCODE_BATCH,
    MODEL_FILE,
    SIDECAR,
    WEIGHTS_FILE,
    TextTowerCorruptError,
    TextTowerExportError,
    TextTowerMismatchError,
    TextTowerMissingError,
    load_text_tower,
    text_tower_folder,
    try_load_text_tower,
)
from retrieval.search.text_tower_export import ensure_text_tower, export_text_tower
from retrieval.search.tokenizer import ClipBpeTokenizer
from tests.helpers import env_offline

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("torch", "open_clip", "transformers")
QUERIES = [
    "a red car parked in the snow", "Two DOGS playing fetch", "sunset over the sea", "", "  ",
    "photo of my grandmother's birthday cake 🎂", "Zürich Hauptbahnhof at night", "猫", "x" * 500,
    "the quick brown fox jumps over the lazy dog " * 10,
] + [f"query number {i} with a beach" for i in range(ENCODE_BATCH + 6)]  # > one ONNX batch


def _export_dir(folder: Path) -> Path:
    return folder / json.loads((folder / SIDECAR).read_text())["export_dir"]


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape and a.dtype == np.float32
    return float(np.abs(a - b).max())


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = env_offline()
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def world_tower(world_encoder, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(collection, text tower folder) holding the export of the trained tiny CLIP."""
    collection = tmp_path_factory.mktemp("tower-collection")
    return collection, ensure_text_tower(collection, world_encoder)


@pytest.fixture(scope="module")
def vitb32_encoder():
    """Random-weight ViT-B-32 (no download): the real text-tower shape, context 77, vocab 49408."""
    from indexer.encode.encoders import load_encoder

    return load_encoder("ViT-B-32", pretrained=None, device="cpu")


# ---- tokenizer ------------------------------------------------------------------------------------------------

def _awkward_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabets = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", " \t\n\r ", "'\"!?.,;:-_()[]{}&#<>/@*",
        "éèêëàâäôöûüçñßøåæœÉÀ", "ひらがなカタカナ漢字東京", "абвгдеёжзий", "αβγδεζηθ", "🐶🐱🌅🎂👍🏽‍♀️", "ﬁﬂ“”‘’—…½№∞©™",
        "\u0301\u200b\u00ad\ufeff\x00\x07\x1b",
    ]
    words = ["a", "photo", "of", "the", "dog's", "don't", "&amp;", "&lt;b&gt;", "&#39;", "it'll", "HTML", "ﬁsh"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(0, 30)):
            if rng.random() < 0.4:
                parts.append(rng.choice(words))
            else:
                alphabet = rng.choice(alphabets)
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))))
        out.append(rng.choice([" ", "", "  "]).join(parts))
    return out


@pytest.mark.parametrize("context_length", [24, 77])
def test_torch_free_tokenizer_gives_open_clips_ids(world_tower, context_length: int) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    meta = json.loads((world_tower[1] / SIDECAR).read_text())["tokenizer"]
    ours = ClipBpeTokenizer(_export_dir(world_tower[1]) / BPE_FILE, meta["n_merges"], meta["special_tokens"],
                            context_length, meta["clean"])
    theirs = SimpleTokenizer(context_length=context_length)
    texts = QUERIES + _awkward_texts(400) + ["word " * 200, "🐶" * 100, "Hello World"]
    got, want = ours(texts), theirs(texts).numpy()
    bad = [t for t, a, b in zip(texts, got, want) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} texts tokenised differently, e.g. {bad[:3]!r}"
    assert got.dtype == np.int64 and got.shape == (len(texts), context_length)
    sot, eot = theirs.sot_token_id, theirs.eot_token_id
    assert list(ours([""])[0][:3]) == [sot, eot, 0]
    long = ours(["word " * 200])[0]
    assert long[0] == sot and long[-1] == eot and (long != 0).all()  # truncated, EOT kept last


# ---- exactness ------------------------------------------------------------------------------------------------

def test_trained_tiny_clip_matches_full_model(world_encoder, world_tower) -> None:
    tower = load_text_tower(world_tower[1], world_encoder.spec.id)
    got, want = tower.encode_texts(QUERIES), world_encoder.encode_texts(QUERIES)
    assert _max_diff(got, want) < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert tower.encode_texts([]).shape == (0, world_encoder.spec.embed_dim)
    assert tower.spec_id == world_encoder.spec.id


def test_random_vitb32_matches_full_model(vitb32_encoder, tmp_path: Path) -> None:
    folder = ensure_text_tower(tmp_path, vitb32_encoder)
    tower = load_text_tower(folder, vitb32_encoder.spec.id)
    texts = QUERIES[:12] + _awkward_texts(8, seed=5)
    got, want = tower.encode_texts(texts), vitb32_encoder.encode_texts(texts)
    assert got.shape == (len(texts), 512)
    assert _max_diff(got, want) < 1e-4
    meta = json.loads((folder / SIDECAR).read_text())
    assert meta["spec_id"] == vitb32_encoder.spec.id and meta["context_length"] == 77
    assert meta["tokenizer"]["kind"] == "clip_bpe" and meta["tokenizer"]["vocab_size"] == 49408
    assert set(meta["files"]) == {MODEL_FILE, WEIGHTS_FILE, BPE_FILE}
    one_shot = load_text_tower(folder, vitb32_encoder.spec.id, prepack=False)  # what a CLI query loads
    assert _max_diff(one_shot.encode_texts(texts), want) < 1e-4


def test_plain_ascii_skips_ftfy_only_where_ftfy_changes_nothing() -> None:
    import html
    import string

    import ftfy

    from retrieval.search.tokenizer import _basic_clean, _is_plain

    rng = random.Random(11)
    alphabet = string.printable  # includes &, tab, CR, LF, VT, FF
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(3000)]
    texts += ["<b>bold</b> &amp; co", "a\r\nb", "tab\there", "\x1b[31mred\x1b[0m", "caf\u00e9", "x\x00y"]
    plain = [t for t in texts if _is_plain(t)]
    assert 100 < len(plain) < len(texts)  # the sample exercises both branches
    for t in plain:  # the shortcut is taken only where ftfy and html.unescape are identities
        assert ftfy.fix_text(t) == t and html.unescape(html.unescape(t)) == t, repr(t)
    for t in texts:  # and cleaning gives what the full ftfy path gives
        assert _basic_clean(t) == html.unescape(html.unescape(ftfy.fix_text(t))).strip(), repr(t)
    assert not _is_plain("fish &amp; chips") and not _is_plain("two\nlines") and not _is_plain("caf\u00e9")


def test_searching_process_imports_neither_torch_nor_open_clip(world_encoder, world_tower, tmp_path: Path) -> None:
    collection, _ = world_tower
    out = tmp_path / "vectors.npy"
    proc = _python(
        """
        import json, sys
        import numpy as np
        from retrieval.search.query_cache import open_query_cache
        from retrieval.search.text_tower import try_load_text_tower
        collection, spec_id, out = sys.argv[1:4]
        texts = json.loads(sys.argv[4])
        tower = try_load_text_tower(collection, spec_id)
        assert tower is not None
        vecs = tower.encode_texts(texts)
        cache = open_query_cache(collection, spec_id)
        cache.put_many(dict(zip(texts, vecs)))
        assert len(cache.get_many(texts)) == len(set(texts))
        np.save(out, vecs)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "transformers"))))
        """,
        str(collection), world_encoder.spec.id, str(out), json.dumps(QUERIES),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert _max_diff(np.load(out), world_encoder.encode_texts(QUERIES)) < 1e-4


# ---- staleness, refusal, corruption ---------------------------------------------------------------------------

def test_rebuilt_when_the_spec_changes_and_refused_for_another_encoder(world_encoder, tiny_encoder,
                                                                        tmp_path: Path) -> None:
    folder = ensure_text_tower(tmp_path, world_encoder)
    first = _export_dir(folder)
    assert ensure_text_tower(tmp_path, world_encoder) == folder and _export_dir(folder) == first  # kept

    ensure_text_tower(tmp_path, tiny_encoder)  # another encoder's spec: stale, so re-exported
    second = _export_dir(folder)
    assert second != first and not first.exists()
    tower = load_text_tower(folder, tiny_encoder.spec.id)
    assert _max_diff(tower.encode_texts(QUERIES[:8]), tiny_encoder.encode_texts(QUERIES[:8])) < 1e-4

    with pytest.raises(TextTowerMismatchError) as err:
        load_text_tower(folder, world_encoder.spec.id)
    assert isinstance(err.value, ConfigError) and isinstance(err.value, EncoderMismatchError)
    assert world_encoder.spec.id in str(err.value) and tiny_encoder.spec.id in str(err.value)
    assert try_load_text_tower(tmp_path, world_encoder.spec.id) is None

    # a collection built with another encoder: no export from this one
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "encoder": tiny_encoder.spec.to_dict()}))
    with pytest.raises(TextTowerMismatchError):
        ensure_text_tower(tmp_path, world_encoder)
    assert _export_dir(folder) == second


def test_same_model_new_spec_id_is_stale(world_encoder, tmp_path: Path) -> None:
    from indexer.encode.encoders import Encoder

    folder = ensure_text_tower(tmp_path, world_encoder)
    first = _export_dir(folder)
    moved = Encoder(world_encoder.model, world_encoder.preprocess, world_encoder.tokenizer,
                    replace(world_encoder.spec, weights_fingerprint="0123456789abcdef"))
    assert try_load_text_tower(tmp_path, moved.spec.id) is None
    ensure_text_tower(tmp_path, moved)
    assert _export_dir(folder) != first
    assert load_text_tower(folder, moved.spec.id).spec_id == moved.spec.id


def _flip_middle_byte(path: Path, keep_mtime: bool = False) -> None:
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


CORRUPTIONS = {
    "weights bit flip": lambda d, s: _flip_middle_byte(d / WEIGHTS_FILE),
    "graph truncated": lambda d, s: (d / MODEL_FILE).write_bytes((d / MODEL_FILE).read_bytes()[:1000]),
    "tokenizer garbage": lambda d, s: (d / BPE_FILE).write_bytes(b"not gzip"),
    "weights deleted": lambda d, s: (d / WEIGHTS_FILE).unlink(),
    "sidecar garbage": lambda d, s: s.write_text("{not json"),
    "sidecar without checksums": lambda d, s: s.write_text(json.dumps({**json.loads(s.read_text()), "files": {}})),
    "sidecar pointing outside": lambda d, s: s.write_text(json.dumps({**json.loads(s.read_text()),
                                                                      "export_dir": f"../{d.parent.name}/{d.name}"})),
    "sidecar of another format": lambda d, s: s.write_text(json.dumps({**json.loads(s.read_text()), "format": "x"})),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_export_is_treated_as_missing_and_rebuilt(world_encoder, tmp_path: Path, corruption: str) -> None:
    folder = ensure_text_tower(tmp_path, world_encoder)
    first = _export_dir(folder)
    CORRUPTIONS[corruption](first, folder / SIDECAR)
    assert try_load_text_tower(tmp_path, world_encoder.spec.id) is None  # never raises
    with pytest.raises((TextTowerCorruptError, TextTowerMissingError)):
        load_text_tower(folder, world_encoder.spec.id)
    ensure_text_tower(tmp_path, world_encoder)  # re-exported, or re-installed from the intact user cache
    tower = try_load_text_tower(tmp_path, world_encoder.spec.id)
    assert tower is not None
    load_text_tower(folder, world_encoder.spec.id, verify="full")  # every checksum holds again
    assert _max_diff(tower.encode_texts(QUERIES[:5]), world_encoder.encode_texts(QUERIES[:5])) < 1e-4


def test_in_place_corruption_with_the_old_mtime_needs_a_full_check(world_encoder, tmp_path: Path) -> None:
    folder = ensure_text_tower(tmp_path, world_encoder)
    first = _export_dir(folder)
    _flip_middle_byte(first / WEIGHTS_FILE, keep_mtime=True)
    with pytest.raises(TextTowerCorruptError, match="sha256"):
        load_text_tower(folder, world_encoder.spec.id, verify="full")
    ensure_text_tower(tmp_path, world_encoder)  # always checks in full (the user cache's copy too)
    load_text_tower(folder, world_encoder.spec.id, verify="full")


def test_missing_export(tmp_path: Path) -> None:
    assert try_load_text_tower(tmp_path, "any|spec|1") is None
    with pytest.raises(TextTowerMissingError):
        load_text_tower(text_tower_folder(tmp_path), "any|spec|1")


def test_unexportable_encoder_says_so_and_leaves_the_folder_alone(world_encoder, world_tower, tmp_path: Path) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    from indexer.encode.encoders import Encoder

    random_crop = Encoder(world_encoder.model, world_encoder.preprocess,
                          SimpleTokenizer(context_length=24, reduction_mask="simple"), world_encoder.spec)
    with pytest.raises(TextTowerExportError, match="reduction"):
        ensure_text_tower(tmp_path, random_crop)

    class NoText:
        def parameters(self):
            return iter(())

    with pytest.raises(TextTowerExportError, match="encode_text"):
        export_text_tower(Encoder(NoText(), None, world_encoder.tokenizer, world_encoder.spec), tmp_path / "t")

    # a tokenizer that does not reproduce the model's ids is caught by the export check
    wrong_length = Encoder(world_encoder.model, world_encoder.preprocess, SimpleTokenizer(context_length=77),
                           world_encoder.spec)
    folder = world_tower[1]
    before = json.loads((folder / SIDECAR).read_text())
    with pytest.raises(TextTowerExportError):
        export_text_tower(wrong_length, folder)
    assert json.loads((folder / SIDECAR).read_text()) == before
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [before["export_dir"]]


# ---- SigLIP-style tower with an HF tokenizer --------------------------------------------------------------------

def _save_tiny_siglip(folder: Path) -> Path:
    """A random SigLIP-style CustomTextCLIP (no causal mask, last-token pool, proj bias) + HF fast tokenizer."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True)
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [t.lower() for t in QUERIES + _awkward_texts(200, seed=9)]
    trainer = trainers.WordPieceTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                            model_max_length=16).save_pretrained(folder)
    cfg = {
        "embed_dim": 32, "init_logit_bias": -10, "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": tok.get_vocab_size(), "hf_tokenizer_name": "local",
                     "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
    }
    torch.manual_seed(3)
    net = open_clip.model.CustomTextCLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                         init_logit_bias=cfg["init_logit_bias"])
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {"size": 32}}))
    return folder


def test_siglip_style_tower_with_hf_tokenizer(tmp_path: Path) -> None:
    from indexer.encode.encoders import load_encoder

    encoder = load_encoder("local-dir:" + str(_save_tiny_siglip(tmp_path / "siglip")), device="cpu")
    assert type(encoder.tokenizer).__name__ == "HFTokenizer"
    folder = ensure_text_tower(tmp_path / "collection", encoder)
    meta = json.loads((folder / SIDECAR).read_text())
    assert meta["tokenizer"]["kind"] == "hf_tokenizers" and meta["tokenizer"]["clean"] == "canonicalize"
    tower = load_text_tower(folder, encoder.spec.id)
    texts = QUERIES[:20] + _awkward_texts(30, seed=11)
    assert np.array_equal(tower.tokenizer(texts), encoder.tokenizer(texts).numpy())
    assert _max_diff(tower.encode_texts(texts), encoder.encode_texts(texts)) < 1e-4


# ---- query cache ----------------------------------------------------------------------------------------------

def _vec(i: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(i).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_query_cache_round_trip_lru_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "qc.sqlite"
    with QueryCache(path, "spec-a", max_entries=5) as cache:
        assert cache.get("nothing") is None and cache.get_many([]) == {}
        for i in range(5):
            cache.put(f"q{i}", _vec(i))
        assert np.array_equal(cache.get("q0"), _vec(0))  # q0 is now the most recent
        cache.put_many({"q5": _vec(5), "q6": _vec(6)})
        assert cache.stats()["entries"] == 5
        assert set(cache.get_many([f"q{i}" for i in range(7)])) == {"q0", "q3", "q4", "q5", "q6"}
        assert cache.get_many(["q0", "q0", "q9"]).keys() == {"q0"}
    with QueryCache(path, "spec-b") as other:  # vectors of another encoder are not served
        assert other.get("q0") is None
        other.put("q0", _vec(100, 16))
        assert other.get("q0").shape == (16,)

    bytes_bound = QueryCache(tmp_path / "bytes.sqlite", "spec-a", max_bytes=10 * (4 * 8 + 3))
    bytes_bound.put_many({f"b{i:02d}": _vec(i) for i in range(25)})
    stats = bytes_bound.stats()
    assert stats["bytes"] <= 10 * (4 * 8 + 3) and stats["entries"] == 10


def test_query_cache_survives_a_garbage_file_and_a_read_only_folder(tmp_path: Path) -> None:
    path = tmp_path / "qc.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    cache = QueryCache(path, "spec")
    cache.put("q", _vec(1))
    assert np.array_equal(cache.get("q"), _vec(1))
    cache.close()

    if os.geteuid() == 0:
        return  # root writes anywhere
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        cache = QueryCache(ro / "qc.sqlite", "spec")
        cache.put("q", _vec(1))  # logged, not raised
        assert cache.get("q") is None
    finally:
        ro.chmod(0o700)


_WRITER = """
import sys
import numpy as np
from retrieval.search.query_cache import QueryCache
path, worker, n, max_entries = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cache = QueryCache(path, "spec", max_entries=max_entries, timeout=10)
for i in range(n):
    v = np.full(64, worker * 10000 + i, np.float32)
    cache.put(f"w{worker}-{i}", v)
    cache.get_many([f"w{worker}-{i}", f"w{(worker + 1) % 4}-{i}"])
print("ok")
"""


@pytest.mark.parametrize("max_entries,expected", [(10_000, 4 * 60), (50, 50)])
def test_query_cache_with_concurrent_writer_processes(tmp_path: Path, max_entries: int, expected: int) -> None:
    path = tmp_path / "qc.sqlite"
    env = env_offline()
    env["PYTHONPATH"] = str(REPO)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w), "60", str(max_entries)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for w in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    cache = QueryCache(path, "spec", max_entries=max_entries)
    assert cache.stats()["entries"] == expected  # every write landed; the bound holds
    if expected == 4 * 60:
        got = cache.get_many([f"w{w}-{i}" for w in range(4) for i in range(60)])
        assert all(np.array_equal(v, np.full(64, int(k[1]) * 10000 + int(k.split("-")[1]), np.float32))
                   for k, v in got.items())
    assert open_query_cache(tmp_path, "spec").path == tmp_path / "query_cache.sqlite"


def test_concurrent_exporters_leave_one_valid_export(world_tiny_clip_dir: Path, world_encoder, tmp_path: Path) -> None:
    code = """
        import sys
        from indexer.encode.encoders import load_encoder
        from retrieval.search.text_tower_export import ensure_text_tower
        ensure_text_tower(sys.argv[2], load_encoder("local-dir:" + sys.argv[1], device="cpu"))
        """
    env = env_offline()
    env["PYTHONPATH"] = str(REPO)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(world_tiny_clip_dir), str(tmp_path)],
                              stderr=subprocess.PIPE, text=True, env=env, cwd=REPO) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
    folder = text_tower_folder(tmp_path)
    assert [p.name for p in folder.iterdir() if p.is_dir()] == [_export_dir(folder).name]
    tower = load_text_tower(folder, world_encoder.spec.id, verify="full")
    assert _max_diff(tower.encode_texts(QUERIES[:4]), world_encoder.encode_texts(QUERIES[:4])) < 1e-4
