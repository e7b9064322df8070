"""Import of the released RadFM checkpoint: names, shapes, placement and semantics of every mapped tensor."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from radfm.model.checkpoint import CONFIG, WEIGHTS, load_pretrained
from radfm.model.config import RadFMConfig
from radfm.model.convert import (
    DROP_AUX,
    DROP_DUP,
    DROP_ROTARY,
    OFFICIAL_PREFIXES_AUX,
    import_checkpoint,
    load_official_state_dict,
    make_official_like_state_dict,
    map_official_state_dict,
    official_like_shapes,
)
from radfm.model.factory import build_lm, build_model, build_on_meta
from radfm.model.presets import base, tiny
from radfm.model.tokenizer import RadFMTokenizer

TSV = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "radfm_state_dict_keys.tsv"
V = 100  # text vocabulary of the fake release; our table has V + 3 rows (<image>, </image>, <image_patch>)
SENTENCES = [
    "No acute cardiopulmonary abnormality.",
    "There is a small left pleural effusion with basal atelectasis.",
    "Axial CT shows a hypodense lesion in the right hepatic lobe.",
    "MRI brain: no restricted diffusion, no mass effect.",
]


def _tiny(text_vocab: int) -> RadFMConfig:
    """The tiny preset shaped like the release: text rows + 3 image rows, raw patches LayerNormed."""
    c = tiny()
    c.lm.vocab_size = text_vocab + 3
    c.vision.patch_norm = True  # the release has to_patch_embedding.1; a preset without it cannot hold it
    return c


@pytest.fixture(scope="module")
def cfg() -> RadFMConfig:
    return _tiny(V)


@pytest.fixture(scope="module")
def official(cfg: RadFMConfig) -> dict[str, torch.Tensor]:
    """Read-only: tests that alter it work on a shallow copy."""
    return make_official_like_state_dict(cfg, V, seed=0)


def _mapped_model(cfg: RadFMConfig, official: dict[str, torch.Tensor], tokenizer=None):
    model = build_model(cfg, tokenizer)
    ids = None if tokenizer is None else (tokenizer.image_start_id, tokenizer.image_end_id, tokenizer.image_patch_id)
    mapped, report = map_official_state_dict(official, model, ids)
    model.load_state_dict(mapped, strict=True)
    return model.eval(), mapped, report


# ---- 1. the generated layout is the release's -------------------------------------------------------
def test_official_like_layout_equals_release_tsv() -> None:
    if not TSV.is_file():
        pytest.skip(f"release key list {TSV} not available (it lives in the shared reference folder)")
    rows = [line.split("\t") for line in TSV.read_text().splitlines() if line.strip()]
    spec = official_like_shapes(base(), text_vocab=32000)
    assert list(spec) == [r[0] for r in rows]  # same names, same order
    for name, shape, dtype in rows:
        got_shape, got_dtype = spec[name]
        assert ("x".join(map(str, got_shape)) or "scalar") == shape, name
        assert str(got_dtype).removeprefix("torch.") == dtype, name


def test_release_layout_maps_onto_base_preset_without_allocating() -> None:
    cfg = base()
    cfg.gradient_checkpointing = False  # irrelevant to shapes; the meta build only needs the modules
    model = build_on_meta(cfg)
    official = {k: torch.empty(s, dtype=d, device="meta") for k, (s, d) in official_like_shapes(cfg, 32000).items()}
    official["embedding_layer.weight"] = official["lang_model.model.embed_tokens.weight"]  # one tensor, as released
    mapped, report = map_official_state_dict(official, model)
    assert report.ok, report.summary()
    assert report.mapped == len(model.state_dict()) == 575
    assert len(report.dropped[DROP_ROTARY]) == 40
    assert report.dropped[DROP_DUP] == ["embedding_layer.weight"]
    # 575 mapped + 40 rotary + aux + the duplicate + figure rows (merged into the table) = every released key
    assert 575 + 40 + len(report.dropped[DROP_AUX]) + 1 + 1 == len(official)
    assert mapped["lm.model.embed_tokens.weight"].shape == (32003, 5120)


# ---- 2. round trip: every tensor lands where it belongs ---------------------------------------------
def test_round_trip_places_every_tensor(cfg: RadFMConfig, official: dict[str, torch.Tensor]) -> None:
    model, mapped, report = _mapped_model(cfg, official)
    sd = model.state_dict()
    pairs = {
        "embedding_layer.vision_encoder.to_patch_embedding.2.weight": "vision.encoder.patch_proj.weight",
        "embedding_layer.vision_encoder.to_patch_embedding.1.bias": "vision.encoder.patch_norm_in.bias",
        "embedding_layer.vision_encoder.pos_embedding.dep_embed.weight": "vision.encoder.pos_embedding.dep_embed.weight",
        "embedding_layer.vision_encoder.transformer.layers.3.0.fn.to_qkv.weight": "vision.encoder.blocks.3.attn.to_qkv.weight",
        "embedding_layer.vision_encoder.transformer.layers.1.1.fn.net.3.bias": "vision.encoder.blocks.1.ff.fc2.bias",
        "embedding_layer.perceiver.latents": "vision.resampler.latents",
        "embedding_layer.perceiver.layers.1.0.to_kv.weight": "vision.resampler.attn_layers.1.to_kv.weight",
        "embedding_layer.perceiver.layers.0.1.3.weight": "vision.resampler.ff_layers.0.fc2.weight",
        "embedding_layer.perceiver.norm.weight": "vision.resampler.norm.weight",
        "embedding_layer.fc.weight": "vision.projection.weight",
        "lang_model.model.layers.2.self_attn.q_proj.weight": "lm.model.layers.2.self_attn.q_proj.weight",
        "lang_model.model.layers.3.mlp.down_proj.weight": "lm.model.layers.3.mlp.down_proj.weight",
        "lang_model.model.norm.weight": "lm.model.norm.weight",
    }
    for src, dst in pairs.items():
        assert torch.equal(sd[dst], official[src]), (src, dst)

    embed, head = sd["lm.model.embed_tokens.weight"], sd["lm.lm_head.weight"]
    assert torch.equal(embed[:V], official["lang_model.model.embed_tokens.weight"])
    assert torch.equal(embed[V], official["embedding_layer.figure_token_weight"][0])  # <image>
    assert torch.equal(embed[V + 1], official["embedding_layer.figure_token_weight"][1])  # </image>
    assert not embed[V + 2].any()  # <image_patch>: always overwritten by image features
    assert torch.equal(head[:V], official["lang_model.lm_head.weight"]) and not head[V:].any()

    assert report.ok and not report.unmapped and not report.missing
    assert report.mapped == len(sd)
    aux = report.dropped[DROP_AUX]
    assert aux and all(k.startswith(OFFICIAL_PREFIXES_AUX) for k in aux)
    assert "embedding_layer.bert_model.embeddings.position_ids" in aux
    assert {k for k in official if k.startswith(OFFICIAL_PREFIXES_AUX)} == set(aux)
    assert len(report.dropped[DROP_ROTARY]) == cfg.lm.layers
    assert "mapped" in report.summary() and "auxiliary" in report.summary()


# ---- 3. semantics: an independent re-implementation on the official tensors agrees -------------------
def _ln(x: torch.Tensor, o: dict, name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], o[f"{name}.weight"], o[f"{name}.bias"])


def _lin(x: torch.Tensor, o: dict, name: str) -> torch.Tensor:
    return F.linear(x, o[f"{name}.weight"], o.get(f"{name}.bias"))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain softmax attention, ``B×N×(heads·d)`` in and out, heads split as ``(h d)``."""
    split = [t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v)]
    q, k, v = split
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    out = (w @ v).transpose(1, 2)
    return out.reshape(out.shape[0], out.shape[1], -1)


def _reference_vit(o: dict, cfg: RadFMConfig, images: torch.Tensor, layers: int) -> torch.Tensor:
    """RadFM's 3D ViT written from its description, on the release's keys, through ``layers`` blocks."""
    vc, e = cfg.vision, "embedding_layer.vision_encoder."
    b, c, H, W, D = images.shape
    ps, pd = vc.patch_size, vc.patch_depth
    h, w, d = H // ps, W // ps, D // pd
    # b c (h p1) (w p2) (f pf) -> b (h w f) (p1 p2 pf c)
    x = images.reshape(b, c, h, ps, w, ps, d, pd).permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, h * w * d, -1)
    x = _ln(_lin(_ln(x, o, f"{e}to_patch_embedding.1"), o, f"{e}to_patch_embedding.2"), o, f"{e}to_patch_embedding.3")
    row, col, dep = (o[f"{e}pos_embedding.{a}_embed.weight"] for a in ("row", "col", "dep"))

    def strided(n: int, table: torch.Tensor) -> list[int]:
        return [(t + 1) * (table.shape[0] // n) - 1 for t in range(n)]

    pos = torch.stack([torch.cat([row[i], col[j], dep[k]])
                       for i in strided(h, row) for j in strided(w, col) for k in strided(d, dep)])
    x = x + pos
    for n in range(layers):
        p = f"{e}transformer.layers.{n}."
        q, k, v = F.linear(_ln(x, o, f"{p}0.norm"), o[f"{p}0.fn.to_qkv.weight"]).chunk(3, dim=-1)
        x = x + _lin(_attend(q, k, v, vc.heads), o, f"{p}0.fn.to_out.0")
        x = x + _lin(F.gelu(_lin(_ln(x, o, f"{p}1.norm"), o, f"{p}1.fn.net.0")), o, f"{p}1.fn.net.3")
    return x


def _reference_perceiver_fc(o: dict, cfg: RadFMConfig, x: torch.Tensor) -> torch.Tensor:
    """Flamingo-style perceiver (keys = image tokens ++ latents) + final norm + fc, on the release's keys."""
    rc, pre = cfg.resampler, "embedding_layer.perceiver."
    lat = o[f"{pre}latents"].expand(x.shape[0], -1, -1)
    for n in range(rc.layers):
        p = f"{pre}layers.{n}."
        media, normed = _ln(x, o, f"{p}0.norm_media"), _ln(lat, o, f"{p}0.norm_latents")
        q = F.linear(normed, o[f"{p}0.to_q.weight"])
        k, v = F.linear(torch.cat([media, normed], dim=1), o[f"{p}0.to_kv.weight"]).chunk(2, dim=-1)
        lat = lat + F.linear(_attend(q, k, v, rc.heads), o[f"{p}0.to_out.weight"])
        lat = lat + F.linear(F.gelu(F.linear(_ln(lat, o, f"{p}1.0"), o[f"{p}1.1.weight"])), o[f"{p}1.3.weight"])
    return _lin(_ln(lat, o, f"{pre}norm"), o, "embedding_layer.fc")


@torch.no_grad()
def test_imported_vision_path_matches_reference(cfg: RadFMConfig, official: dict[str, torch.Tensor]) -> None:
    model, _, _ = _mapped_model(cfg, official)
    # 32×32×8 on 64×64×64 tables: the position tables are indexed with a stride (2 in-plane, 8 in depth).
    images = torch.randn(2, 3, 32, 32, 8, generator=torch.Generator().manual_seed(1))
    first_stage: list[torch.Tensor] = []
    hook = model.vision.encoder.blocks[0].register_forward_pre_hook(lambda _m, args: first_stage.append(args[0]))
    try:
        ours = model.vision(images)
    finally:
        hook.remove()
    # Patch embedding (LayerNorm → Linear → LayerNorm over RadFM's patch layout) + strided 3D positions.
    torch.testing.assert_close(first_stage[0], _reference_vit(official, cfg, images, layers=0))
    tokens = _reference_vit(official, cfg, images, layers=cfg.vision.layers)
    torch.testing.assert_close(model.vision.encoder(images), tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours, _reference_perceiver_fc(official, cfg, tokens), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_imported_lm_matches_plain_llama_on_text(cfg: RadFMConfig, official: dict[str, torch.Tensor]) -> None:
    model, _, _ = _mapped_model(cfg, official)
    ref_cfg = RadFMConfig.from_dict(cfg.to_dict())
    ref_cfg.lm.vocab_size = V
    reference = build_lm(ref_cfg).eval()
    lm_state = {k.removeprefix("lang_model."): t for k, t in official.items()
                if k.startswith("lang_model.") and not k.endswith("inv_freq")}
    reference.load_state_dict(lm_state, strict=True)
    ids = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(2))
    ours = model(ids)["logits"]
    torch.testing.assert_close(ours[..., :V], reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert not ours[..., V:].any()  # image rows of lm_head are zero
    figure = official["embedding_layer.figure_token_weight"]
    torch.testing.assert_close(model.embed(torch.tensor([[V, V + 1]])), figure[None], atol=0, rtol=0)


# ---- 4. errors are loud ---------------------------------------------------------------------------
def test_shape_mismatch_names_both_keys(cfg: RadFMConfig, official: dict[str, torch.Tensor]) -> None:
    bad = dict(official)
    bad["embedding_layer.fc.weight"] = torch.zeros(cfg.lm.hidden_size, cfg.resampler.dim + 1)
    with pytest.raises(ValueError, match=r"embedding_layer\.fc\.weight.*vision\.projection\.weight"):
        map_official_state_dict(bad, build_model(cfg))
    bad = dict(official)
    bad["embedding_layer.figure_token_weight"] = torch.zeros(3, cfg.lm.hidden_size)
    with pytest.raises(ValueError, match="figure_token_weight"):
        map_official_state_dict(bad, build_model(cfg))


def test_image_ids_inside_text_vocab_are_refused(cfg: RadFMConfig, official: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="image token ids"):
        map_official_state_dict(official, build_model(cfg), image_token_ids=(4, 5, 6))


def test_unknown_and_absent_keys_are_reported_and_fail_strict_import(
    cfg: RadFMConfig, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    extra = dict(official)
    extra["embedding_layer.new_head.weight"] = torch.zeros(2, 2)
    del extra["embedding_layer.perceiver.norm.bias"]
    _, report = map_official_state_dict(extra, build_model(cfg))
    assert report.unmapped == ["embedding_layer.new_head.weight"]
    assert report.missing == ["vision.resampler.norm.bias"]
    assert not report.ok and "UNMAPPED" in report.summary() and "MISSING" in report.summary()

    path = tmp_path / "extra.bin"
    torch.save(extra, path)
    with pytest.raises(ValueError, match="new_head"):
        import_checkpoint(path, tmp_path / "out", preset=cfg)
    assert not (tmp_path / "out").exists()
    loose = import_checkpoint(path, tmp_path / "out", preset=cfg, strict=False)
    assert loose.unmapped == ["embedding_layer.new_head.weight"] and (tmp_path / "out" / WEIGHTS).is_file()


def test_differing_duplicate_embedding_is_refused(cfg: RadFMConfig, official: dict[str, torch.Tensor]) -> None:
    bad = dict(official)
    bad["embedding_layer.weight"] = official["embedding_layer.weight"] + 1
    with pytest.raises(ValueError, match="embedding_layer.weight differs"):
        map_official_state_dict(bad, build_model(cfg))


# ---- 5. files in, checkpoint directory out ----------------------------------------------------------
def _llama_like_tokenizer(directory: Path) -> int:
    """A tokenizer laid out like LLaMA's (text tokens only; from_local appends the image tokens after them).
    ``RadFMTokenizer.train_bpe`` cannot stand in: it puts the image tokens at ids 4–6, inside the text rows."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    hf.save_pretrained(str(directory))
    return len(hf)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
@torch.no_grad()
def test_import_checkpoint_writes_loadable_directory(suffix: str, tmp_path: Path) -> None:
    tok_dir = tmp_path / "llama_tokenizer"
    n_text = _llama_like_tokenizer(tok_dir)
    cfg = _tiny(n_text)
    official = make_official_like_state_dict(cfg, n_text, seed=3)
    path = tmp_path / f"radfm{suffix}"
    if suffix == ".bin":
        torch.save({"model": official, "epoch": 3}, path)  # nested, as training scripts save it
    else:
        save_file({k: t.clone() for k, t in official.items()}, str(path))  # safetensors refuses shared tensors

    report = import_checkpoint(path, tmp_path / "imported", preset=cfg, tokenizer_dir=tok_dir)
    assert report.ok, report.summary()
    model, tokenizer = load_pretrained(tmp_path / "imported")
    assert (tokenizer.image_start_id, tokenizer.image_end_id, tokenizer.image_patch_id) == (
        n_text, n_text + 1, n_text + 2)

    expected, _, _ = _mapped_model(cfg, official, RadFMTokenizer.from_local(tok_dir, cfg.num_image_tokens))
    sample = tokenizer.format_prompt("What does the CT show?", "A hypodense lesion.", image_positions=["start"])
    ids = torch.tensor([sample.input_ids])
    images = torch.randn(1, 3, 32, 32, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(model(ids, images=images)["logits"], expected(ids, images=images)["logits"])
    embed = model.lm.get_input_embeddings().weight
    assert torch.equal(embed[n_text], official["embedding_layer.figure_token_weight"][0])


def test_import_without_tokenizer_writes_weights_and_config(
    cfg: RadFMConfig, official: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    from safetensors.torch import load_model

    path = tmp_path / "radfm.safetensors"
    save_file({k: t.clone() for k, t in official.items()}, str(path))
    report = import_checkpoint(path, tmp_path / "out", preset=cfg)
    assert report.ok and any("no tokenizer" in n for n in report.notes)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([CONFIG, WEIGHTS])
    rebuilt = build_model(RadFMConfig.load(tmp_path / "out" / CONFIG))
    load_model(rebuilt, str(tmp_path / "out" / WEIGHTS), strict=True)
    _, mapped, _ = _mapped_model(cfg, official)
    for key, tensor in rebuilt.state_dict().items():
        assert torch.equal(tensor, mapped[key]), key


def test_load_official_state_dict_reads_shards_and_wrappers(official: dict[str, torch.Tensor], tmp_path: Path) -> None:
    keys = list(official)
    halves = [dict((k, official[k].clone()) for k in keys[: len(keys) // 2]),
              dict((k, official[k].clone()) for k in keys[len(keys) // 2:])]
    for i, half in enumerate(halves, 1):
        save_file(half, str(tmp_path / f"model-0000{i}-of-00002.safetensors"))
    (tmp_path / "bin").mkdir()
    for i, half in enumerate(halves, 1):
        torch.save(half, tmp_path / "bin" / f"pytorch_model-0000{i}-of-00002.bin")
    for loaded in (load_official_state_dict(tmp_path), load_official_state_dict(tmp_path / "bin")):
        assert loaded.keys() == official.keys()
        assert all(torch.equal(loaded[k], official[k]) for k in keys)

    torch.save({"state_dict": {f"module.{k}": t for k, t in list(official.items())[:3]}}, tmp_path / "ddp.pt")
    assert list(load_official_state_dict(tmp_path / "ddp.pt")) == keys[:3]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint shards"):
        load_official_state_dict(tmp_path / "empty")
    (tmp_path / "weights.ckpt.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="unsupported checkpoint suffix"):
        load_official_state_dict(tmp_path / "weights.ckpt.gz")
