"""The model demo: build the tiny preset, train it briefly on generated images, and answer questions.

``radfm demo --quick`` runs this (``make demo`` runs the whole pipeline flow). The images are simple
phantoms (a disc of tissue, with or without a bright nodule) so that the answer is in the image and a
few CPU minutes suffice to see the model learn it; held-out accuracy is printed beside chance.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from radfm.model import factory, presets
from radfm.model.checkpoint import load_pretrained, save_pretrained
from radfm.paths import home_path

QUESTION = "Is there a nodule in this image?"
ANSWERS = {True: "Yes, there is a nodule.", False: "No, there is no nodule."}


def phantom(rng: np.random.Generator, size: int, depth: int, nodule: bool) -> torch.Tensor:
    """A ``3×size×size×depth`` zero-centred phantom: a noisy disc, plus a bright nodule when asked."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2) < 0.16
    img = 0.3 * body + 0.05 * rng.standard_normal((size, size))
    if nodule:
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        r = rng.uniform(0.06, 0.1)
        img += 0.7 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
    vol = np.repeat(img[:, :, None], depth, axis=2) - 0.3
    return torch.from_numpy(np.repeat(vol[None], 3, axis=0)).float()


def run(steps: int = 120, batch_size: int = 8, seed: int = 0, out_name: str = "demo-model") -> dict[str, float]:
    """Train ``steps`` steps, evaluate held-out yes/no accuracy, save and reload the checkpoint."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = presets.tiny()
    size, depth = cfg.vision.image_size, cfg.vision.min_depth
    model, tok = factory.create(cfg, texts=list(ANSWERS.values()) + [QUESTION])
    factory.freeze(model, "none")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    train_samples = [tok.format_prompt(QUESTION, ANSWERS[flag], ["start"]) for flag in (True, False)]
    model.train()
    t0 = time.perf_counter()
    first_loss = last_loss = float("nan")
    for step in range(steps):
        flags = rng.integers(0, 2, size=batch_size).astype(bool)
        batch = tok.pad([train_samples[0 if f else 1] for f in flags])
        images = torch.stack([phantom(rng, size, depth, bool(f)) for f in flags])
        loss = model(**batch, images=images)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        first_loss = loss.item() if step == 0 else first_loss
        last_loss = loss.item()
        if step % 20 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    train_s = time.perf_counter() - t0

    ckpt = save_pretrained(model, tok, home_path("checkpoints", out_name))
    model, tok = load_pretrained(ckpt)
    n_eval = 32
    flags = rng.integers(0, 2, size=n_eval).astype(bool)
    prompt = tok.format_prompt(QUESTION, None, ["start"])
    batch = tok.pad([prompt] * n_eval, side="left")
    images = torch.stack([phantom(rng, size, depth, bool(f)) for f in flags])
    new = model.generate(batch["input_ids"], batch["attention_mask"], images=images, max_new_tokens=12,
                         eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    answers = [tok.decode(row) for row in new]
    correct = sum(a.lower().startswith("yes") == bool(f) for a, f in zip(answers, flags))
    majority = max(flags.mean(), 1 - flags.mean())
    print(f"\nexample: Q: {QUESTION}  A: {answers[0]!r} (truth: {ANSWERS[bool(flags[0])]!r})")
    print(f"held-out accuracy {correct / n_eval:.3f} (majority baseline {majority:.3f}) "
          f"after {steps} steps, {train_s:.1f} s; checkpoint: {ckpt}")
    return {"first_loss": first_loss, "last_loss": last_loss, "accuracy": correct / n_eval,
            "majority": float(majority), "train_seconds": train_s}
