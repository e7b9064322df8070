"""The training-only patch head in the model and the module: the ViT's patch tokens from ``encode``, its weight
beside the label head's, its gradient to the ViT, the warm-up's ViT rate, alone, and configs it refuses. (Its
loss by hand: tests/train/test_objectives.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radfm.data.datamodule import Collator
from radfm.model import factory, presets
from radfm.train.callbacks.vision_warmup import warm_up_vision
from radfm.train.module import RadFMLitModule
from radfm.train.objectives import AnswerLoss, LabelHead, PatchHead, StepEncoding
from radfm.train.objectives.patch_head import max_patches

NAMES = ["cyst", "cyst left", "mass", "modality CT"]


def _module(tokenizer, **kw) -> RadFMLitModule:
    return RadFMLitModule(presets.tiny(), tokenizer, objectives=[AnswerLoss(), LabelHead(2.0), PatchHead(1.0, **kw)],
                          label_names=NAMES)


def test_encode_gives_the_patch_tokens_that_max_pool_per_image(tiny_tokenizer):
    """with_patches: the tokens unchanged, plus the ViT's patch tokens per shape group, each image's max-pooled
    by max_patches — 2D and 3D mixed."""
    torch.manual_seed(0)
    model = factory.build_model(presets.tiny(), tiny_tokenizer).eval()
    images = [torch.randn(3, 64, 64, 1), torch.randn(3, 64, 64, 8), torch.randn(3, 64, 64, 1)]
    with torch.no_grad():
        enc = model.encode(images, with_patches=True)
        assert torch.allclose(enc.tokens, model.encode_images(images), atol=1e-6)
        assert model.encode(images).patches is None  # patch tokens only when asked for
        assert sorted(i for idx, _ in enc.patches for i in idx) == [0, 1, 2]
        pooled = max_patches(enc.patches)
        for i, img in enumerate(images):
            want = model.vision.encoder(img.unsqueeze(0))[0].amax(dim=0)
            assert torch.allclose(pooled[i], want, atol=1e-5)
    assert pooled.shape == (3, presets.tiny().vision.width)
    assert model.encode(None, with_patches=True) is None and model.encode_images(None) is None


def test_patch_head_trains_the_vit_and_stays_out_of_the_export(tiny_tokenizer):
    module = _module(tiny_tokenizer)
    label_head, patch_head = module.objectives["label_head"], module.objectives["patch_head"]
    enc = tiny_tokenizer.format_prompt("Is there a cyst?", "yes", ["start"])
    torch.manual_seed(1)
    batch = Collator(tiny_tokenizer)([
        {"id": "a", "task": "diagnosis", "encoded": enc, "images": [torch.randn(3, 64, 64, 4)],
         "label_names": ["cyst"]},
        {"id": "b", "task": "diagnosis", "encoded": enc, "images": [torch.randn(3, 64, 64, 1)], "label_names": []},
    ])
    plain = RadFMLitModule(presets.tiny(), tiny_tokenizer)
    plain.model.load_state_dict(module.model.state_dict())
    images = module.encode(batch)
    assert images.patches is not None  # an objective reads patches: the step asks for them
    encoding = StepEncoding(images, None, True)
    label, patch = label_head.loss(batch, encoding), patch_head.loss(batch, encoding)
    assert float(module._step(batch, "train")) == pytest.approx(
        float(plain._step(batch, "train")) + 2.0 * float(label) + 1.0 * float(patch), rel=1e-4)

    # The patch head adds its own loss: the same module without it sums to less.
    head_only = RadFMLitModule(presets.tiny(), tiny_tokenizer, objectives=[AnswerLoss(), LabelHead(2.0)],
                               label_names=NAMES)
    head_only.model.load_state_dict(module.model.state_dict())
    head_only.objectives["label_head"].load_state_dict(label_head.state_dict())
    assert head_only.encode(batch).patches is None  # no objective reads patches: none are kept
    assert float(head_only._step(batch, "train")) != pytest.approx(float(module._step(batch, "train")), rel=1e-4)
    module.zero_grad()
    F.mse_loss(patch, torch.zeros(())).backward()
    assert patch_head.head.weight.grad.abs().sum() > 0
    assert module.model.vision.encoder.patch_proj.weight.grad.abs().sum() > 0
    assert not any("patch_head" in k for k in module.model.state_dict())
    grouped = {id(p) for g in module.param_groups() for p in g["params"]}
    assert all(id(p) in grouped for p in patch_head.parameters())


def _warmup_batches(tokenizer) -> list[dict]:
    enc = tokenizer.format_prompt("Is there a mass?", "yes", ["start"])
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        bright = torch.randn(3, 64, 64, 4, generator=g) * 0.1
        bright[:, 16:24, 16:24] += 1.0
        batches.append(Collator(tokenizer)([
            {"id": "a", "task": "diagnosis", "encoded": enc, "images": [bright], "label_names": ["mass"]},
            {"id": "b", "task": "diagnosis", "encoded": enc, "images": [torch.randn(3, 64, 64, 4, generator=g) * 0.1],
             "label_names": []}]))
    return batches


def test_warm_up_trains_the_patch_head_and_takes_an_encoder_rate(tiny_tokenizer):
    """encoder_lr applies to the ViT alone: at 0 it stays put while the resampler and both heads learn."""
    torch.manual_seed(0)
    module = _module(tiny_tokenizer)
    batches = _warmup_batches(tiny_tokenizer)
    vit = {k: v.clone() for k, v in module.model.vision.encoder.state_dict().items()}
    resampler = {k: v.clone() for k, v in module.model.vision.resampler.state_dict().items()}
    patch_head = module.objectives["patch_head"].head.weight.detach().clone()
    label_head = module.objectives["label_head"].head.weight.detach().clone()
    stats = warm_up_vision(module, batches, steps=10, lr=3e-4, head_lr=3e-3, encoder_lr=1e-30)
    assert stats["last_loss"] < stats["first_loss"]
    assert all(torch.allclose(v, vit[k]) for k, v in module.model.vision.encoder.state_dict().items()
               if v.is_floating_point() and "running" not in k and "num_batches" not in k)
    assert any(not torch.equal(v, resampler[k]) for k, v in module.model.vision.resampler.state_dict().items())
    assert not torch.equal(module.objectives["patch_head"].head.weight, patch_head)
    assert not torch.equal(module.objectives["label_head"].head.weight, label_head)


def test_patch_head_alone_binds_and_trains(tiny_tokenizer):
    """Each objective is independent: a patch head without the label head (or the answer loss) binds, its step
    loss is its own (the LM is not run), and a few steps lower it through the ViT."""
    module = RadFMLitModule(presets.tiny(), tiny_tokenizer, objectives=[PatchHead(1.0)], label_names=NAMES)
    assert list(module.objectives) == ["patch_head"] and module.objectives["patch_head"].columns == [0, 1, 2]
    batch = _warmup_batches(tiny_tokenizer)[0]
    lm = {k: v.clone() for k, v in module.model.lm.state_dict().items()}
    vit = module.model.vision.encoder.patch_proj.weight.detach().clone()
    opt = module.configure_optimizers()
    losses = []
    for _ in range(8):
        loss = module._step(batch, "train")
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        own = module.objectives["patch_head"].loss(batch, StepEncoding(module.encode(batch), None, True))
        assert float(module._step(batch, "train")) == pytest.approx(float(own), rel=1e-5)
    assert losses[-1] < losses[0]
    assert not torch.equal(module.model.vision.encoder.patch_proj.weight, vit)
    assert all(torch.equal(v, lm[k]) for k, v in module.model.lm.state_dict().items())  # the LM never ran


def test_patch_head_configs_it_refuses(tiny_tokenizer):
    with pytest.raises(ValueError, match="must be a number >= 0"):
        PatchHead(-1.0)
    with pytest.raises(ValueError, match="finds nothing a patch can show"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, objectives=[LabelHead(1.0), PatchHead(1.0)],
                       label_names=["modality CT"])
    with pytest.raises(ValueError, match="finds nothing a patch can show"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, objectives=[PatchHead(1.0)])  # no label names at all
