"""The training-only patch head: max-pooled ViT patch tokens, its loss by hand, its weight beside the label
head's, its gradient to the ViT, the warm-up's ViT rate, and configs it refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radfm.data.datamodule import Collator
from radfm.model import factory, presets
from radfm.train.module import RadFMLitModule, patch_label_indices
from radfm.train.warmup import warm_up_vision

NAMES = ["cyst", "cyst left", "mass", "modality CT"]


def _module(tokenizer, **kw) -> RadFMLitModule:
    return RadFMLitModule(presets.tiny(), tokenizer, label_names=NAMES, label_head_weight=2.0,
                          patch_head_weight=1.0, **kw)


def test_encode_images_pools_patch_tokens(tiny_tokenizer):
    """patch_max: the tokens unchanged, plus each image's ViT patch tokens max-pooled — 2D and 3D mixed."""
    torch.manual_seed(0)
    model = factory.build_model(presets.tiny(), tiny_tokenizer).eval()
    images = [torch.randn(3, 64, 64, 1), torch.randn(3, 64, 64, 8), torch.randn(3, 64, 64, 1)]
    with torch.no_grad():
        tokens, pooled = model.encode_images(images, patch_max=True)
        assert torch.allclose(tokens, model.encode_images(images), atol=1e-6)
        for i, img in enumerate(images):
            want = model.vision.encoder(img.unsqueeze(0))[0].amax(dim=0)
            assert torch.allclose(pooled[i], want, atol=1e-5)
    assert pooled.shape == (3, presets.tiny().vision.width)
    assert model.encode_images(None, patch_max=True) == (None, None)


def test_patch_labels():
    """findings: the types and the names that qualify one; types: presence only; whole-image names never."""
    names = ["count 1", "cyst", "cyst left", "cyst left upper", "cyst small", "mass", "modality CT", "plane axial"]
    assert patch_label_indices(names) == [1, 2, 3, 4, 5]
    assert patch_label_indices(names, "types") == [1, 5]
    with pytest.raises(ValueError, match="patch_labels"):
        patch_label_indices(names, "all")


def test_patch_loss_by_hand(tiny_tokenizer):
    """label loss = label-head BCE + (patch weight / label weight) × patch-head BCE on the unqualified names,
    each row's patches max-pooled over its images."""
    module = _module(tiny_tokenizer, patch_labels="types")
    assert module.patch_labels == [0, 2]  # "cyst", "mass": presence, not where or which modality
    assert _module(tiny_tokenizer).patch_labels == [0, 1, 2]  # the default adds "cyst left"
    hidden, width = presets.tiny().lm.hidden_size, presets.tiny().vision.width
    torch.manual_seed(0)
    features, patches = torch.randn(3, 4, hidden), torch.randn(3, width)  # row A one image, B none, C two
    batch = {"n_images": [1, 0, 2], "label_names": [["mass", "modality CT"], ["cyst"], ["cyst", "cyst left"]]}
    got = module.label_loss(features, batch, patches)
    base = module.label_loss(features, batch)

    w, b = module.patch_head.weight.detach(), module.patch_head.bias.detach()
    rows = torch.stack([patches[0], patches[1:3].amax(dim=0)])
    p = torch.sigmoid(rows @ w.T + b)
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    bce = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    assert float(got) == pytest.approx(float(base) + 0.5 * float(bce), rel=1e-5)


def test_patch_head_trains_the_vit_and_stays_out_of_the_export(tiny_tokenizer):
    module = _module(tiny_tokenizer)
    enc = tiny_tokenizer.format_prompt("Is there a cyst?", "yes", ["start"])
    torch.manual_seed(1)
    batch = Collator(tiny_tokenizer)([
        {"id": "a", "task": "diagnosis", "encoded": enc, "images": [torch.randn(3, 64, 64, 4)],
         "label_names": ["cyst"]},
        {"id": "b", "task": "diagnosis", "encoded": enc, "images": [torch.randn(3, 64, 64, 1)], "label_names": []},
    ])
    plain = RadFMLitModule(presets.tiny(), tiny_tokenizer)
    plain.model.load_state_dict(module.model.state_dict())
    features, _, patches = module.image_features(batch, patches=True)
    aux = module.label_loss(features, batch, patches)
    assert float(module._step(batch, "train")) == pytest.approx(
        float(plain._step(batch, "train")) + 2.0 * float(aux), rel=1e-4)

    module.zero_grad()
    head_only = RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=NAMES, label_head_weight=2.0)
    head_only.model.load_state_dict(module.model.state_dict())
    head_only.label_head.load_state_dict(module.label_head.state_dict())
    assert float(aux) != pytest.approx(float(head_only.label_loss(features, batch)), rel=1e-4)
    F.mse_loss(aux, torch.zeros(())).backward()
    assert module.patch_head.weight.grad.abs().sum() > 0
    assert module.model.vision.encoder.patch_proj.weight.grad.abs().sum() > 0
    assert not any("patch_head" in k for k in module.model.state_dict())
    grouped = {id(p) for g in module.param_groups() for p in g["params"]}
    assert all(id(p) in grouped for p in module.patch_head.parameters())


def test_warm_up_trains_the_patch_head_and_takes_an_encoder_rate(tiny_tokenizer):
    """encoder_lr applies to the ViT alone: at 0 it stays put while the resampler and both heads learn."""
    torch.manual_seed(0)
    module = _module(tiny_tokenizer)
    enc = tiny_tokenizer.format_prompt("Is there a mass?", "yes", ["start"])
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(2):
        bright = torch.randn(3, 64, 64, 4, generator=g) * 0.1
        bright[:, 16:24, 16:24] += 1.0
        batches.append(Collator(tiny_tokenizer)([
            {"id": "a", "task": "diagnosis", "encoded": enc, "images": [bright], "label_names": ["mass"]},
            {"id": "b", "task": "diagnosis", "encoded": enc, "images": [torch.randn(3, 64, 64, 4, generator=g) * 0.1],
             "label_names": []}]))
    vit = {k: v.clone() for k, v in module.model.vision.encoder.state_dict().items()}
    resampler = {k: v.clone() for k, v in module.model.vision.resampler.state_dict().items()}
    patch_head = module.patch_head.weight.detach().clone()
    stats = warm_up_vision(module, batches, steps=10, lr=3e-4, head_lr=3e-3, encoder_lr=1e-30)
    assert stats["last_loss"] < stats["first_loss"]
    assert all(torch.allclose(v, vit[k]) for k, v in module.model.vision.encoder.state_dict().items()
               if v.is_floating_point() and "running" not in k and "num_batches" not in k)
    assert any(not torch.equal(v, resampler[k]) for k, v in module.model.vision.resampler.state_dict().items())
    assert not torch.equal(module.patch_head.weight, patch_head)


def test_patch_head_configs_it_refuses(tiny_tokenizer):
    with pytest.raises(ValueError, match="patch_head_weight .* must be >= 0"):
        _module(tiny_tokenizer).__class__(presets.tiny(), tiny_tokenizer, label_names=NAMES,
                                          label_head_weight=1.0, patch_head_weight=-1.0)
    with pytest.raises(ValueError, match="needs the label head"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=NAMES, patch_head_weight=1.0)
    with pytest.raises(ValueError, match="no label name without a qualifier"):
        RadFMLitModule(presets.tiny(), tiny_tokenizer, label_names=["modality CT"], label_head_weight=1.0,
                       patch_head_weight=1.0)
