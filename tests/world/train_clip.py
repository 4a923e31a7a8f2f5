"""Train the tiny open_clip model of the synthetic world.

Usage (the 3-stage ``STAGES`` recipe; ~2-3 minutes on 2 idle CPU cores, much longer on a busy box)::

    HF_HUB_OFFLINE=1 python -m tests.world.train_clip --out tests/assets/tiny_clip

The result is an open_clip *local-dir* folder::

    tests/assets/tiny_clip/open_clip_config.json      {"model_cfg": ..., "preprocess_cfg": ...}
    tests/assets/tiny_clip/open_clip_model.safetensors

so the product loads it like a real model::

    open_clip.create_model_and_transforms("local-dir:tests/assets/tiny_clip")

or, after :func:`register_tiny_clip_config`, as a named architecture with a
weights file::

    open_clip.create_model_and_transforms("photodex-tiny-clip",
                                          pretrained="tests/assets/tiny_clip/open_clip_model.safetensors")

The tokenizer is open_clip's bundled ``SimpleTokenizer`` (no download).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

from ui.demo.world import IMAGE_SIZE, captions_for, generate_samples

logger = logging.getLogger(__name__)

MODEL_NAME = "photodex-tiny-clip"
CONFIG_PATH = Path(__file__).with_name(f"{MODEL_NAME}.json")
WEIGHTS_NAME = "open_clip_model.safetensors"
TRAIN_SEED = 1234

#: open_clip architecture (also stored in ``photodex-tiny-clip.json`` next to this file).
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    # A tiny CLIP-style ModifiedResNet (conv stem + attention pooling): in this budget it learns
    # shapes far faster than a from-scratch ViT (a 3-layer ViT/8 reached only ~74 % zero-shot).
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "layers": [1, 1, 1, 1],
        "width": 16,
        "head_width": 64,
    },
    "text_cfg": {
        "context_length": 24,
        "vocab_size": 49408,
        "width": 48,
        "heads": 4,
        "layers": 2,
    },
}
PREPROCESS_CFG: dict[str, Any] = {
    "size": IMAGE_SIZE,
    "mode": "RGB",
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}


def register_tiny_clip_config() -> str:
    """Register ``photodex-tiny-clip`` with open_clip; returns the model name. Idempotent."""
    import open_clip

    text = json.dumps(MODEL_CFG, indent=2) + "\n"
    if not CONFIG_PATH.is_file() or CONFIG_PATH.read_text() != text:  # keep the shipped file in sync
        CONFIG_PATH.write_text(text)
    if MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(CONFIG_PATH)
    return MODEL_NAME


def write_local_dir(model: Any, out: Path, *, half: bool = True, extra: dict[str, Any] | None = None) -> Path:
    """Save ``model`` as an open_clip local-dir folder; returns the weights path."""
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:  # halves the committed size; open_clip casts back to fp32 on load
        state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    weights = out / WEIGHTS_NAME
    save_file(state, str(weights), metadata={"format": "pt"})
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    if extra:
        config["photodex_training"] = extra
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return weights


def train(out: Path, *, steps: int = 300, batch_size: int = 64, n_train: int = 6000,
          lr: float = 2e-3, seed: int = TRAIN_SEED, threads: int = 2, init: Path | None = None,
          count_weights: tuple[float, float, float] = (0.6, 0.25, 0.15),
          class_weight: float = 0.0) -> dict[str, Any]:
    """Train contrastively on generated (image, caption) pairs and save to ``out``.

    With ``init`` (a local-dir folder written by this script) training resumes from those weights.
    ``class_weight`` > 0 also gives pairs of the same ``"{colour} {shape}"`` class (different count
    or position) that weight in the soft contrastive targets, so "a red circle" ranks images of
    two red circles above other classes.
    """
    import open_clip
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    register_tiny_clip_config()
    model, _, preprocess = open_clip.create_model_and_transforms(
        MODEL_NAME)  # default preprocess == PREPROCESS_CFG at IMAGE_SIZE
    if init is not None:
        open_clip.load_checkpoint(model, str(Path(init) / WEIGHTS_NAME))
        logger.info("initialised from %s", init)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model %s: %.2f M params", MODEL_NAME, n_params / 1e6)

    t0 = time.time()
    samples = generate_samples(n_train, seed, count_weights=count_weights)
    images = torch.stack([preprocess(s.image) for s in samples])
    keys = [(s.colour, s.shape, s.count, s.position) for s in samples]
    key_ids = {k: i for i, k in enumerate(sorted(set(keys), key=str))}
    key_idx = torch.tensor([key_ids[k] for k in keys])
    class_ids = {c: i for i, c in enumerate(sorted({s.class_name for s in samples}))}
    class_idx = torch.tensor([class_ids[s.class_name] for s in samples])
    variants = {k: tokenizer(captions_for(*k)) for k in key_ids}
    logger.info("generated %d samples in %.1fs", n_train, time.time() - t0)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    rng = random.Random(seed)
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = torch.tensor(rng.sample(range(n_train), batch_size))
        text = torch.stack([variants[keys[i]][rng.randrange(len(variants[keys[i]]))] for i in idx.tolist()])
        img_f = F.normalize(model.encode_image(images[idx]), dim=-1)
        txt_f = F.normalize(model.encode_text(text), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T
        # Paraphrases of the same scene are positives too (soft targets), not false negatives.
        same = (key_idx[idx][:, None] == key_idx[idx][None, :]).float()
        if class_weight:
            same_class = (class_idx[idx][:, None] == class_idx[idx][None, :]).float()
            same = torch.maximum(same, class_weight * same_class)
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == steps - 1:
            logger.info("step %d/%d loss %.4f (%.1fs)", step, steps, loss.item(), time.time() - t0)
    train_s = time.time() - t0
    model.eval()
    info = {"seed": seed, "steps": steps, "init": str(init) if init else None,
            "count_weights": list(count_weights), "class_weight": class_weight, "batch_size": batch_size, "n_train": n_train, "lr": lr,
            "params": n_params, "train_seconds": round(train_s, 1)}
    if init is not None:  # keep the history of earlier stages
        prev = json.loads((Path(init) / "open_clip_config.json").read_text()).get("photodex_training")
        info["previous"] = prev
    weights = write_local_dir(model, out, extra=info)
    logger.info("saved %s (%.1f MB) after %.1fs of training", weights, weights.stat().st_size / 1e6, train_s)
    return info


#: The recipe that produced the committed ``tests/assets/tiny_clip``: a base run, then four
#: fine-tuning stages (resumed from the saved weights, fresh optimiser) with more multi-object
#: scenes; the last one adds class-level soft targets.
STAGES: list[dict[str, Any]] = [
    {"steps": 300, "batch_size": 64, "lr": 2e-3, "seed": 1234, "n_train": 6000, "count_weights": (0.6, 0.25, 0.15)},
    {"steps": 120, "batch_size": 64, "lr": 7e-4, "seed": 1235, "n_train": 4000, "count_weights": (0.3, 0.35, 0.35)},
    {"steps": 300, "batch_size": 64, "lr": 5e-4, "seed": 1236, "n_train": 4000, "count_weights": (0.3, 0.35, 0.35)},
    {"steps": 300, "batch_size": 64, "lr": 3e-4, "seed": 1237, "n_train": 4000, "count_weights": (0.3, 0.35, 0.35)},
    {"steps": 300, "batch_size": 64, "lr": 3e-4, "seed": 1238, "n_train": 4000, "count_weights": (0.3, 0.35, 0.35),
     "class_weight": 0.5},
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/assets/tiny_clip"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--single-stage", action="store_true",
                        help="run one stage with the options below instead of the STAGES recipe")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=TRAIN_SEED)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--init", type=Path, default=None, help="resume from this local-dir folder")
    parser.add_argument("--count-weights", type=float, nargs=3, default=(0.6, 0.25, 0.15))
    parser.add_argument("--class-weight", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.single_stage:
        train(args.out, steps=args.steps, batch_size=args.batch_size, n_train=args.n_train,
              seed=args.seed, threads=args.threads, lr=args.lr, init=args.init,
              count_weights=tuple(args.count_weights), class_weight=args.class_weight)
        return
    t0 = time.time()
    for i, stage in enumerate(STAGES):
        logger.info("stage %d/%d: %s", i + 1, len(STAGES), stage)
        train(args.out, threads=args.threads, init=args.out if i else None, **stage)
    logger.info("all stages done in %.1fs", time.time() - t0)


if __name__ == "__main__":
    main()
