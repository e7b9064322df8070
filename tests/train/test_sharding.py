"""FSDP2 sharding (radfm.train.sharding) on 2 real gloo processes: the same losses as one process, half the
weights per rank, and the gathered export equal to the trained weights.

The ``tiny`` preset keeps these in seconds (the units and the arithmetic are the same at every size); the Ray
test (tests/train/test_ray.py) runs the ``small`` preset end to end."""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from radfm.model import factory, presets
from radfm.train.module import RadFMLitModule
from radfm.train.objectives import AnswerLoss
from radfm.train.sharding import ShardPlan, local_numel, shard_units

STEPS = 5
TEXTS = ["Is there a nodule?", "Yes, a left nodule.", "No.", "Which modality is this?", "CT of the chest."]


def _lit(lora: bool = False, builtin_checkpointing: bool = False, lazy: bool = False) -> RadFMLitModule:
    """The tiny module; ``lazy``: its model's parameters on the meta device (a rank ≠ 0 of a lazy run)."""
    from radfm.train.lazy_init import params_on_meta

    cfg = presets.tiny()
    cfg.gradient_checkpointing = builtin_checkpointing  # the model's own (base's preset turns it on)
    tokenizer = factory.build_tokenizer(cfg, texts=TEXTS * 4)
    model = None
    if lazy:
        with params_on_meta():
            model = factory.build_model(cfg, tokenizer)
    return RadFMLitModule(cfg, tokenizer, [AnswerLoss()], seed=0, freeze="lm" if lora else "none",
                          lora={"r": 4, "alpha": 8, "dropout": 0.0} if lora else None, model=model)


def _batch(lit: RadFMLitModule) -> dict:
    """Two rows with one image each (the same on every rank: the mean gradient is one rank's)."""
    tok = lit.tokenizer
    rows = [tok.format_prompt("Is there a nodule?", "Yes, a left nodule.", ["start"]),
            tok.format_prompt("Which modality is this?", "CT of the chest.", ["start"])]
    g = torch.Generator().manual_seed(1)
    size = lit.model_cfg.vision.image_size
    images = [torch.rand(3, size, size, 4, generator=g) for _ in rows]
    return {**tok.pad(rows), "images": images, "ids": ["a", "b"], "tasks": ["vqa", "modality"]}


def _train(lit: RadFMLitModule, batch: dict) -> list[float]:
    """``STEPS`` AdamW steps (the module's own loss and parameter groups), the loss of each."""
    opt = torch.optim.AdamW(lit.param_groups(), lr=1e-4)
    losses = []
    lit.train()
    for _ in range(STEPS):
        opt.zero_grad()
        loss = lit._step(batch, "train")
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _worker(rank: int, world: int, port: int, out: str, plan: dict, lora: bool, builtin: bool,
            lazy: bool) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from radfm.train.sharding import full_state_dict, shard_module

    warnings.filterwarnings("ignore")  # self.log outside a Trainer
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        lit = _lit(lora, builtin, lazy=lazy and rank != 0)
        batch = _batch(lit)
        built_on_meta = all(p.is_meta for p in lit.model.parameters())
        if rank == 1 and not lazy:  # a rank that drifted (e.g. its own warm-up) is brought back to rank 0's
            with torch.no_grad():
                next(lit.model.parameters()).add_(1.0)
        shard_module(lit, init_device_mesh("cpu", (world,)), ShardPlan(**plan))
        held, total = local_numel(lit)
        losses = _train(lit, batch)
        state = full_state_dict(lit.model)
        dtypes = {grad: sorted({str(p.dtype) for p in lit.model.parameters() if p.requires_grad == grad})
                  for grad in (True, False)}
        result = {"losses": losses, "held": held, "total": total, "built_on_meta": built_on_meta,
                  "trainable_dtypes": dtypes[True], "frozen_dtypes": dtypes[False],
                  "builtin_left_on": lit.model.vision.encoder.gradient_checkpointing
                  or bool(getattr(lit.model.lm, "is_gradient_checkpointing", False))}
        if rank == 0:
            torch.save(state, Path(out) / "state.pt")
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_run(tmp_path: Path, plan: dict, lora: bool = False, builtin: bool = False,
                 lazy: bool = False) -> tuple[list[dict], dict]:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    tmp_path.mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), plan, lora, builtin, lazy), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    return ranks, torch.load(tmp_path / "state.pt")


@pytest.fixture(scope="module")
def single():
    """The one-process run: losses, and the weights after ``STEPS`` steps."""
    torch.set_num_threads(2)
    lit = _lit()
    losses = _train(lit, _batch(lit))
    return losses, {k: v.detach().clone() for k, v in lit.model.state_dict().items()}


def test_units_are_the_blocks_the_resampler_and_the_decoder_layers():
    model = _lit().model
    units = shard_units(model)
    cfg = presets.tiny()
    assert len(units) == cfg.vision.layers + 1 + cfg.lm.layers
    assert model.vision.resampler in units
    assert sum(type(u).__name__ == "LlamaDecoderLayer" for u in units) == cfg.lm.layers
    with pytest.raises(ValueError, match="policy"):
        ShardPlan(policy="layers")
    with pytest.raises(ValueError, match="unknown keys"):
        ShardPlan.from_dict({"policy": "blocks", "cpu_offload": True})


def test_fp32_shards_train_as_one_process_and_export_the_same_weights(tmp_path, single):
    """fp32 FSDP with activation checkpointing: the losses of 5 steps and the final weights as one process."""
    ranks, state = _sharded_run(tmp_path, {"param_dtype": None, "reduce_dtype": None})
    losses, weights = single
    for r in ranks:
        assert r["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
        assert 0.45 <= r["held"] / r["total"] <= 0.55  # each rank holds about half of every weight
    assert losses[-1] < losses[0] - 0.1  # it learned: a loss that did not move would match trivially
    assert set(state) == set(weights)
    worst = max(float((state[k] - weights[k]).abs().max()) for k in weights)
    assert worst < 1e-4, worst


def test_the_models_own_checkpointing_gives_way_to_the_plans(tmp_path, single):
    """A model built with ``gradient_checkpointing`` (base's preset) and a plan without activation
    checkpointing: the model's own, which would wrap FSDP's hooks, is switched off and the plan's per-unit
    checkpointing takes its place, so memory stays as asked and the losses are one process's."""
    ranks, _ = _sharded_run(tmp_path, {"param_dtype": None, "reduce_dtype": None,
                                       "activation_checkpointing": False}, builtin=True)
    losses, _ = single
    for r in ranks:
        assert not r["builtin_left_on"]
        assert r["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_a_rank_built_on_the_meta_device_gets_rank_0s_weights(tmp_path, single, lora):
    """Rank 1 builds its model with no parameter storage (radfm.train.lazy_init); after sharding it holds rank
    0's slices: the run trains as one process and gathers the same weights, LoRA adapters included."""
    ranks, state = _sharded_run(tmp_path, {"param_dtype": None, "reduce_dtype": None}, lora=lora, lazy=True)
    assert [r["built_on_meta"] for r in ranks] == [False, True]
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], rel=1e-6)
    if lora:
        base = _lit(lora=True).model.state_dict()
        moved = {k for k in base if k.startswith("lm.") and not torch.equal(base[k], state[k])}
        assert moved and all("lora_" in k for k in moved), sorted(moved)[:5]
        return
    losses, weights = single
    assert ranks[0]["losses"] == pytest.approx(losses, rel=1e-4, abs=1e-5)
    worst = max(float((state[k] - weights[k]).abs().max()) for k in weights)
    assert worst < 1e-4, worst


def test_bf16_mixed_precision_follows_the_fp32_losses(tmp_path, single):
    ranks, _ = _sharded_run(tmp_path, {"param_dtype": "bfloat16", "reduce_dtype": "float32"})
    losses, _ = single
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the ranks agree exactly
    assert ranks[0]["losses"] == pytest.approx(losses, rel=0.02)
    assert ranks[0]["losses"] != pytest.approx(losses, rel=1e-6)  # bf16 did compute in bf16


def test_lora_on_a_sharded_base_trains_only_the_adapters(tmp_path):
    ranks, state = _sharded_run(tmp_path, {"param_dtype": None, "reduce_dtype": None}, lora=True)
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], rel=1e-6)
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]
    base = _lit(lora=True).model.state_dict()
    moved = {k for k in base if k.startswith("lm.") and not torch.equal(base[k], state[k])}
    assert moved and all("lora_" in k for k in moved), sorted(moved)[:5]  # the frozen base did not move

    # The export: the gathered state in a plain copy, LoRA merged into the base weights (loads without peft).
    from radfm.train.lora import merged_for_export
    from radfm.train.sharding import unsharded_copy

    lit = _lit(lora=True)
    merged = merged_for_export(unsharded_copy(lit.model, state, lit.tokenizer, lit.hparams["lora"]), in_place=True)
    names = dict(merged.named_parameters())
    assert not any("lora_" in n for n in names)
    q = next(n for n in names if n.endswith("layers.0.self_attn.q_proj.weight"))
    base_q = next(v for k, v in base.items() if k.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
    assert not torch.equal(names[q].detach(), base_q)  # the trained adapter is in the merged weight


def test_lora_keeps_its_frozen_base_in_bf16_and_exports_fp32(tmp_path):
    """``frozen_dtype=bfloat16``: the frozen base is stored (and sharded, and checkpointed) in bf16, the
    adapters stay fp32. With bf16 compute the base is cast to bf16 at each gather anyway, so the losses are
    exactly those of the same plan with an fp32 base; the export merges into fp32 weights."""
    bf16 = {"param_dtype": "bfloat16", "reduce_dtype": "float32"}
    kept, state = _sharded_run(tmp_path / "kept", {**bf16, "frozen_dtype": "bfloat16"}, lora=True)
    plain, _ = _sharded_run(tmp_path / "plain", bf16, lora=True)
    for r in kept:
        assert r["frozen_dtypes"] == ["torch.bfloat16"] and r["trainable_dtypes"] == ["torch.float32"]
    assert plain[0]["frozen_dtypes"] == ["torch.float32"]
    assert kept[0]["losses"] == plain[0]["losses"]
    assert kept[0]["losses"][-1] < kept[0]["losses"][0]

    from radfm.train.lora import merged_for_export
    from radfm.train.sharding import unsharded_copy

    lit = _lit(lora=True)
    merged = merged_for_export(unsharded_copy(lit.model, state, lit.tokenizer, lit.hparams["lora"]), in_place=True)
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="frozen_dtype=bfloat16 needs param_dtype=bfloat16"):
        ShardPlan(param_dtype=None, frozen_dtype="bfloat16")


def test_the_gathered_weights_export_as_one_plain_checkpoint(tmp_path, single):
    """unsharded_copy (built on the meta device) + save_pretrained: one safetensors file that loads back."""
    from radfm.model.checkpoint import load_pretrained, save_pretrained
    from radfm.train.sharding import unsharded_copy

    lit = _lit()
    _, weights = single
    plain = unsharded_copy(lit.model, weights, lit.tokenizer, None)
    save_pretrained(plain, lit.tokenizer, tmp_path / "model")
    loaded, _ = load_pretrained(tmp_path / "model")
    assert [p.name for p in (tmp_path / "model").glob("*.safetensors")] == ["model.safetensors"]
    got = loaded.state_dict()
    assert all(torch.equal(got[k], weights[k]) for k in weights)
