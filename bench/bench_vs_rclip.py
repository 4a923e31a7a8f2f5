#!/usr/bin/env python
"""Cold-process ``photodex search TEXT`` vs rclip (github.com/yurijmikhalevich/rclip) on the same photos, same weights.

rclip 3.3.0 runs ViT-B-32-256 as two ONNX graphs with onnxruntime (no torch). Offline, this bench builds the
seeded random-init ViT-B-32-256 exactly as photodex does (``indexer.encode.encoders.load_encoder``), exports its
``encode_image`` / ``encode_text`` the way rclip's ``scripts/convert_model.py`` does (TorchScript exporter,
opset 18, one fp32 file per tower, input "input", output "output", un-normalised) into a temporary
``$RCLIP_DATADIR`` with open_clip's BPE vocabulary, so rclip finds its files and downloads nothing. Before
timing it checks, through rclip's own ``Model`` in rclip's venv, that rclip's tokenizer gives open_clip's ids,
its text vector equals photodex's (torch encoder and the collection's ONNX text tower) and its image vectors
equal photodex's for a few photos (cosine > 0.999), and compares both tools' top-10 for one query.

The seeded random init is saved once as an open_clip ``local-dir`` folder (safetensors), which photodex indexes
with, as it would a downloaded model; rclip's ONNX files are exported from the same weights.

Then it indexes the library once with each tool (photodex: ``index --workers 1``, whose text-tower export then
runs in the background and is waited for before any search is timed; rclip: its first search run, which indexes
the current directory) and times fresh processes,
interleaved rclip, photodex, rclip, ... : ``rclip -n -t 10 Q`` (cwd = the library) and
``python -m ui.cli search Q -k 10 --no-collapse --collection C`` (cwd = the repo; rclip has no near-duplicate
collapse, and with random weights every photo is a near-duplicate of every other: ``--collapse`` keeps it),
first with a new query per pair (no cache can answer), then one repeated query (photodex answers from its
query cache; rclip has none). Wall = spawn to exit; peak RSS of the child by GNU time. One untimed run of each
tool first, so the page cache holds both tools' files. All writes go to one temp dir (HOME, XDG, RCLIP_DATADIR).

    python3 -m venv /tmp/rclipenv && /tmp/rclipenv/bin/pip install rclip==3.3.0   # its own venv, no torch
    python bench/bench_vs_rclip.py --rclip /tmp/rclipenv/bin/rclip --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ui.demo.photos import make_library  # noqa: E402

MODEL = "ViT-B-32-256"
RCLIP_MODEL_DIR = "ViT-B-32-256-datacomp_s34b_b86k"  # rclip/model_download.py: MODEL_SUBDIR
RCLIP_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
CHECK_QUERY = "a photo of a dog on the beach"
OTHER_QUERY = "a photo of a cat"  # baseline: how far apart two different texts are
INSTALL = "python3 -m venv /tmp/rclipenv && /tmp/rclipenv/bin/pip install rclip==3.3.0"

# Runs in rclip's interpreter: its own Model (ONNX sessions, tokenizer, preprocess), nothing of photodex.
RCLIP_PROBE = r"""
import json, sys
from PIL import Image
from rclip import model_download
from rclip.model import Model
from rclip.utils.tokenizer import SimpleTokenizer
req = json.load(sys.stdin)
model = Model()
model.ensure_downloaded()
tok = SimpleTokenizer(bpe_path=model_download.download_tokenizer_vocab())
print(json.dumps({"tokens": tok(req["texts"]).tolist(),
                  "text": model.compute_text_features(req["queries"]).tolist(),
                  "images": model.compute_image_features([Image.open(p) for p in req["images"]]).tolist()}))
"""


def timed(cmd: list[str], cwd: Path, env: dict[str, str], stdout: bool = False) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MiB, stdout if asked) of one fresh process; RSS by GNU time (the child's own)."""
    with tempfile.NamedTemporaryFile("r") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-o", out.name, "-f", "%M", *cmd], cwd=cwd, env=env,
                              stdout=subprocess.PIPE if stdout else subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{cmd} failed: {proc.stderr.decode()[-800:]}")
        return wall, int(out.read().split()[-1]) / 1024, proc.stdout.decode() if stdout else ""


def save_local_dir(folder: Path) -> Any:
    """photodex's seeded random ViT-B-32-256 as an open_clip local-dir folder; returns the photodex Encoder."""
    from safetensors.torch import save_file

    from indexer.encode.encoders import load_encoder

    enc = load_encoder(MODEL, None, "cpu", "fp32")  # seeded: the same random init in every process
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    import open_clip

    cfg = {"model_cfg": open_clip.get_model_config(MODEL), "preprocess_cfg": enc.spec.preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    return enc


def export_for_rclip(enc: Any, datadir: Path) -> Any:
    """Export photodex's seeded ViT-B-32-256 as rclip's visual.onnx / textual.onnx; returns the photodex Encoder."""
    import open_clip
    import torch

    class Tower(torch.nn.Module):  # the CLIP is a submodule, so its weights export as initializers
        def __init__(self, net: torch.nn.Module, text: bool) -> None:
            super().__init__()
            self.net, self.text = net, text

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.encode_text(x) if self.text else self.net.encode_image(x)

    out = datadir / RCLIP_MODEL_DIR
    out.mkdir(parents=True)
    dummies = {"visual.onnx": (Tower(enc.model, False), torch.randn(1, 3, enc.image_size, enc.image_size)),
               "textual.onnx": (Tower(enc.model, True), enc.tokenizer(["a photo of a dog"]).long())}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # _native_multi_head_attention has no ONNX symbolic
    try:
        for name, (module, dummy) in dummies.items():
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), (dummy,), str(out / name), dynamo=False, opset_version=18,
                                  input_names=["input"], output_names=["output"],
                                  dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    (datadir / RCLIP_VOCAB).parent.mkdir(parents=True)
    shutil.copy2(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", datadir / RCLIP_VOCAB)
    return enc


def _spec_id(coll: Path) -> str:
    from indexer.collection import read_manifest
    from indexer.core.spec import EncoderSpec

    return EncoderSpec.from_dict(read_manifest(coll)["encoder"]).id


def rclip_python(rclip: str) -> str:
    """The interpreter of rclip's venv (the console script's shebang)."""
    first = Path(rclip).read_bytes()[:300].split(b"\n")[0].decode(errors="replace")
    if first.startswith("#!") and "python" in first:
        return first[2:].strip().split()[0]
    return str(Path(rclip).resolve().parent / "python")


def top_paths(cmd: list[str], cwd: Path, env: dict[str, str], photodex: bool) -> list[str]:
    out = subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout
    paths = [r["paths"][0] for r in json.loads(out)] if photodex else [ln for ln in out.splitlines() if ln.strip()]
    return [str(Path(p).resolve()) for p in paths]


def verify(enc: Any, rclip: str, env: dict[str, str], coll: Path, photos: list[Path]) -> None:
    """Print how closely rclip's own Model reproduces photodex's tokenizer, text and image vectors."""
    from PIL import Image

    from retrieval.search.text_tower import try_load_text_tower
    from retrieval.search.text_tower_export import PROBE_TEXTS

    req = {"queries": [CHECK_QUERY, OTHER_QUERY], "texts": list(PROBE_TEXTS), "images": [str(p) for p in photos]}
    proc = subprocess.run([rclip_python(rclip), "-c", RCLIP_PROBE], input=json.dumps(req), env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rclip's Model failed: {proc.stderr[-800:]}")
    got = json.loads(proc.stdout)
    ref_ids = enc.tokenizer(list(PROBE_TEXTS)).numpy()
    bad = [t[:30] for t, a, b in zip(PROBE_TEXTS, np.array(got["tokens"]), ref_ids) if not np.array_equal(a, b)]
    print(f"  tokenizer: rclip == open_clip on {len(PROBE_TEXTS) - len(bad)}/{len(PROBE_TEXTS)} probe texts"
          + (f"; differs on {bad}" if bad else ""))
    r_text = np.asarray(got["text"], np.float32)
    tower = try_load_text_tower(coll, _spec_id(coll))
    refs = {"photodex torch encoder": enc.encode_texts([CHECK_QUERY, OTHER_QUERY])}
    if tower is not None:
        refs["photodex ONNX text tower (what search uses)"] = tower.encode_texts([CHECK_QUERY, OTHER_QUERY])
    worst = 0.0
    for name, vecs in refs.items():
        gap = float(1 - (r_text * vecs).sum(axis=1).min())
        worst = max(worst, gap)
        print(f"  text:  1 - cosine(rclip, {name}) = {gap:.1e} (max of 2 queries)")
    print(f"         baseline, 1 - cosine({CHECK_QUERY!r}, {OTHER_QUERY!r}) = {float(1 - vecs[0] @ vecs[1]):.3f}")
    r_img = np.asarray(got["images"], np.float32)
    p_img = enc.encode_images([Image.open(p) for p in photos])
    gap = float(1 - (r_img * p_img).sum(axis=1).min())
    between = 1 - p_img @ p_img.T
    apart = between[~np.eye(len(photos), dtype=bool)].min()
    print(f"  image: 1 - cosine(rclip, photodex) = {gap:.1e} (max over {len(photos)} photos, each tool's own decode "
          f"+ preprocessing); baseline, between different photos >= {apart:.3f}")
    if max(worst, gap) > 1e-3:
        raise SystemExit("rclip and photodex do not compute the same vectors: the comparison would be unfair")


def summary(name: str, runs: list[tuple[float, float, str]]) -> float:
    walls = [w for w, _, _ in runs]
    rss = [r for _, r, _ in runs]
    med = statistics.median(walls)
    print(f"  {name:9s} wall median {med:5.2f} s (min {min(walls):.2f}, max {max(walls):.2f})   peak RSS median "
          f"{statistics.median(rss):4.0f} MiB (max {max(rss):.0f})   runs {', '.join(f'{w:.2f}' for w in walls)}")
    return med


def bench(args: argparse.Namespace, root: Path) -> None:
    w, h = (int(v) for v in args.size.lower().split("x"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHOTODEX_", "RCLIP_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RCLIP_DATADIR=str(root / "rclip-data"),
               HOME=str(root / "home"), XDG_DATA_HOME=str(root / "xdg-data"), XDG_CACHE_HOME=str(root / "xdg-cache"),
               XDG_CONFIG_HOME=str(root / "xdg-config"))
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "XDG_CACHE_HOME")})
    lib, coll = root / "lib", root / "coll"
    photos = make_library(lib, args.n, size=(w, h))
    print(f"{args.n} random {w}x{h} JPEGs in {lib}; load average {os.getloadavg()[0]:.2f}; {os.cpu_count()} cores")
    if not args.rclip:
        print(f"rclip not found: install it in its own venv ({INSTALL}) and pass --rclip "
              "/tmp/rclipenv/bin/rclip; timing photodex alone")

    enc = save_local_dir(root / "model")
    pd_index = timed([sys.executable, "-m", "ui.cli", "index", str(lib), "--collection", str(coll), "--model",
                      f"local-dir:{root / 'model'}", "--workers", "1", "--json"], REPO, env, stdout=True)
    pd_out = json.loads(pd_index[2])
    pd_encode = float(pd_out["seconds"])
    print(f"photodex index ({MODEL} random init as local-dir, --workers 1): {pd_index[0]:.1f} s, peak RSS "
          f"{pd_index[1]:.0f} MiB; of which scan + decode + encode {pd_encode:.1f} s (the rest: imports, model "
          f"load, index build, exit); text tower {pd_out['text_tower']['state']}")
    from retrieval.search.text_tower_job import wait_for_export

    t0 = time.perf_counter()
    done = wait_for_export(coll, _spec_id(coll))
    print(f"  its background text-tower export: {done['state']} {time.perf_counter() - t0:.1f} s after the run "
          "returned (untimed, before any search)")
    tools: dict[str, tuple[list[str], Path]] = {}
    if args.rclip:
        t0 = time.perf_counter()
        export_for_rclip(enc, root / "rclip-data")
        print(f"exported {MODEL} for rclip (opset 18, fp32, one file per tower) in {time.perf_counter() - t0:.1f} s")
        rc_index = timed([args.rclip, "-t", "1", "first indexing run"], lib, env)
        print(f"rclip first run (indexes the library, then searches): {rc_index[0]:.1f} s, "
              f"peak RSS {rc_index[1]:.0f} MiB")
        print(f"  index ratio photodex/rclip: whole process {pd_index[0] / rc_index[0]:.2f}; photodex scan + decode + "
              f"encode only / rclip whole process {pd_encode / rc_index[0]:.2f}")
        print("same weights? (rclip's own Model in its venv vs photodex)")
        verify(enc, args.rclip, env, coll, photos[:4])
        rc_top = top_paths([args.rclip, "-n", "-f", "-t", "10", CHECK_QUERY], lib, env, photodex=False)
        pd_top = top_paths([sys.executable, "-m", "ui.cli", "search", CHECK_QUERY, "-k", "10", "--json",
                            "--no-collapse", "--collection", str(coll)], REPO, env, photodex=True)
        print(f"  top-10 for {CHECK_QUERY!r}: {len(set(rc_top) & set(pd_top))}/10 photos in common, "
              f"same top-1: {bool(rc_top and pd_top and rc_top[0] == pd_top[0])}")
        tools["rclip"] = ([args.rclip, "-n", "-t", "10"], lib)
    del enc
    collapse = [] if args.collapse else ["--no-collapse"]  # rclip has no near-duplicate collapse
    tools["photodex"] = ([sys.executable, "-m", "ui.cli", "search", "--collection", str(coll), "-k", "10", *collapse],
                         REPO)

    def block(queries: list[str]) -> dict[str, list[tuple[float, float, str]]]:
        runs: dict[str, list[tuple[float, float, str]]] = {name: [] for name in tools}
        for q in queries:  # interleaved: rclip, photodex, rclip, photodex, ...
            for name, (cmd, cwd) in tools.items():
                runs[name].append(timed([*cmd, q], cwd, env))
        return runs

    block(["warm up the page cache"])
    blocks = {"new query per run": [f"a photo of thing number {i}" for i in range(args.repeats)],
              "same query repeated": ["a red bicycle in the snow"] * args.repeats}
    block(["a red bicycle in the snow"])  # photodex's first sight of the repeated query fills its cache: untimed
    print(f"load average before timing {os.getloadavg()[0]:.2f}; {args.repeats} cold runs of each tool per block, "
          "interleaved")
    for label, queries in blocks.items():
        runs = block(queries)
        print(f"{label}:")
        medians = {name: summary(name, r) for name, r in runs.items()}
        if "rclip" in medians:
            print(f"  ratio photodex/rclip (median wall): {medians['photodex'] / medians['rclip']:.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="photos in the generated library")
    p.add_argument("--size", default="640x480", help="photo size WxH")
    p.add_argument("--repeats", type=int, default=7, help="cold runs of each tool per block")
    p.add_argument("--rclip", default=shutil.which("rclip"), help="rclip executable (default: rclip on PATH)")
    p.add_argument("--collapse", action="store_true", help="time photodex with its default near-duplicate collapse")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (library, collection, ONNX files)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="photodex-vs-rclip-"))
    try:
        bench(args, root)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

if __name__ == "__main__":
    main()
