"""Import the released RadFM checkpoint: map its tensor names and shapes onto :class:`RadFMModel`.

The release saves ``lang_model.*`` (a LLaMA causal LM), ``embedding_layer.*`` (3D ViT, perceiver, projection,
the two ``<image>``/``</image>`` rows) and auxiliary modules that were never optimised. Every official key is
either mapped (shape-checked), dropped for a stated reason, or reported as ``unmapped``; every model key left
unfilled is reported as ``missing``. Nothing is dropped silently.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from radfm.model.config import RadFMConfig
from radfm.model.multimodal import RadFMModel

log = logging.getLogger(__name__)

OFFICIAL_EMBED = "lang_model.model.embed_tokens.weight"
OFFICIAL_EMBED_DUP = "embedding_layer.weight"  # the same Parameter as OFFICIAL_EMBED, saved twice
OFFICIAL_FIGURE = "embedding_layer.figure_token_weight"
OFFICIAL_LM_HEAD = "lang_model.lm_head.weight"
# Auxiliary modules of the release (keyword-matching loss, text encoder): computed but never optimised.
OFFICIAL_PREFIXES_AUX = (
    "embedding_layer.bert_model.",
    "embedding_layer.bert_projection_fc",
    "embedding_layer.transformer_decoder",  # also transformer_decoder_mlp
    "embedding_layer.output_upscaling",
    "embedding_layer.cls_head",
)
TARGET_EMBED = "lm.model.embed_tokens.weight"
TARGET_LM_HEAD = "lm.lm_head.weight"

DROP_ROTARY = "rotary inv_freq buffer saved by transformers 4.28; current transformers recomputes it"
DROP_AUX = "auxiliary module of the release (BERT / keyword decoder), never optimised and unused at inference"
DROP_DUP = f"duplicate of {OFFICIAL_EMBED} (the same tensor in the release)"

_DROPS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r".*\.rotary_emb\.inv_freq$"), DROP_ROTARY),
    (re.compile("^(?:" + "|".join(map(re.escape, OFFICIAL_PREFIXES_AUX)) + ")"), DROP_AUX),
)

_VIT = r"embedding_layer\.vision_encoder\."
_PER = r"embedding_layer\.perceiver\."
_WB = r"(weight|bias)"
_RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p + "$"), t) for p, t in (
    (_VIT + r"to_patch_embedding\.1\." + _WB, r"vision.encoder.patch_norm_in.\1"),
    (_VIT + r"to_patch_embedding\.2\." + _WB, r"vision.encoder.patch_proj.\1"),
    (_VIT + r"to_patch_embedding\.3\." + _WB, r"vision.encoder.patch_norm_out.\1"),
    (_VIT + r"pos_embedding\.(row|col|dep)_embed\.weight", r"vision.encoder.pos_embedding.\1_embed.weight"),
    (_VIT + r"transformer\.layers\.(\d+)\.0\.norm\." + _WB, r"vision.encoder.blocks.\1.attn.norm.\2"),
    (_VIT + r"transformer\.layers\.(\d+)\.0\.fn\.to_qkv\.weight", r"vision.encoder.blocks.\1.attn.to_qkv.weight"),
    (_VIT + r"transformer\.layers\.(\d+)\.0\.fn\.to_out\.0\." + _WB, r"vision.encoder.blocks.\1.attn.to_out.\2"),
    (_VIT + r"transformer\.layers\.(\d+)\.1\.norm\." + _WB, r"vision.encoder.blocks.\1.ff.norm.\2"),
    (_VIT + r"transformer\.layers\.(\d+)\.1\.fn\.net\.0\." + _WB, r"vision.encoder.blocks.\1.ff.fc1.\2"),
    (_VIT + r"transformer\.layers\.(\d+)\.1\.fn\.net\.3\." + _WB, r"vision.encoder.blocks.\1.ff.fc2.\2"),
    (_PER + r"latents", "vision.resampler.latents"),
    (_PER + r"layers\.(\d+)\.0\.(norm_media|norm_latents)\." + _WB, r"vision.resampler.attn_layers.\1.\2.\3"),
    (_PER + r"layers\.(\d+)\.0\.(to_q|to_kv|to_out)\.weight", r"vision.resampler.attn_layers.\1.\2.weight"),
    (_PER + r"layers\.(\d+)\.1\.0\." + _WB, r"vision.resampler.ff_layers.\1.norm.\2"),
    (_PER + r"layers\.(\d+)\.1\.1\.weight", r"vision.resampler.ff_layers.\1.fc1.weight"),
    (_PER + r"layers\.(\d+)\.1\.3\.weight", r"vision.resampler.ff_layers.\1.fc2.weight"),
    (_PER + r"norm\." + _WB, r"vision.resampler.norm.\1"),
    (r"embedding_layer\.fc\." + _WB, r"vision.projection.\1"),
    (r"lang_model\.model\.(.+)", r"lm.model.\1"),
))


@dataclass
class ConversionReport:
    """What happened to each tensor. ``mapped`` counts the model tensors filled from the checkpoint;
    ``dropped`` groups deliberately discarded official keys by reason."""

    mapped: int = 0
    dropped: dict[str, list[str]] = field(default_factory=dict)
    unmapped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unmapped and not self.missing

    def drop(self, key: str, reason: str) -> None:
        self.dropped.setdefault(reason, []).append(key)

    def summary(self) -> str:
        def listing(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", … ({len(keys) - 8} more)" if len(keys) > 8 else "")

        lines = [f"mapped {self.mapped} model tensors"]
        lines += [f"dropped {len(keys)}: {reason} (e.g. {keys[0]})" for reason, keys in self.dropped.items()]
        if self.unmapped:
            lines.append(f"UNMAPPED {len(self.unmapped)} official keys (no rule matches): {listing(self.unmapped)}")
        if self.missing:
            lines.append(f"MISSING {len(self.missing)} model keys (not in the checkpoint): {listing(self.missing)}")
        lines += self.notes
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"mapped": self.mapped, "dropped": {r: len(k) for r, k in self.dropped.items()},
                "unmapped": self.unmapped, "missing": self.missing, "notes": self.notes}


def _shape_error(src: str, dst: str, got: tuple[int, ...], want: tuple[int, ...], why: str = "") -> ValueError:
    return ValueError(
        f"official tensor {src} has shape {list(got)} but the model's {dst} has shape {list(want)}"
        f"{': ' + why if why else ''} (does the model preset match the checkpoint?)"
    )


def _rename(key: str) -> str | None:
    for pattern, template in _RENAMES:
        if pattern.match(key):
            return pattern.sub(template, key)
    return None


def _vocab_table(src: str, text: torch.Tensor, dst: str, want: tuple[int, ...]) -> torch.Tensor:
    """Copy a ``V×H`` text table into the first V rows of a zero ``N×H`` table (N ≥ V)."""
    if text.dim() != 2 or len(want) != 2 or text.shape[1] != want[1] or text.shape[0] > want[0]:
        raise _shape_error(src, dst, tuple(text.shape), want, "the text vocabulary must fit in the first rows")
    table = text.new_zeros(want)
    table[: text.shape[0]] = text
    return table


def map_official_state_dict(
    official: dict[str, torch.Tensor],
    model: RadFMModel,
    image_token_ids: tuple[int, int, int] | None = None,
) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Rename and shape-check the release's tensors into ``model``'s state-dict names.

    ``image_token_ids`` = (``<image>``, ``</image>``, ``<image_patch>``) ids in our vocabulary; default the
    last three rows of the embedding table (the base preset's LLaMA + 3 layout). The official V text rows
    fill rows 0…V-1, ``figure_token_weight`` fills the ``<image>``/``</image>`` rows, the ``<image_patch>``
    row stays zero (image features always overwrite it) and so do ``lm_head`` rows ≥ V (generation
    suppresses them). Tensors are passed through, not copied, except the two vocabulary tables.
    Raises ValueError on any shape mismatch, naming both keys and both shapes.
    """
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    report = ConversionReport()
    out: dict[str, torch.Tensor] = {}
    special = {OFFICIAL_EMBED, OFFICIAL_EMBED_DUP, OFFICIAL_FIGURE, OFFICIAL_LM_HEAD}
    for key, tensor in official.items():
        if key in special:
            continue
        reason = next((r for p, r in _DROPS if p.match(key)), None)
        if reason is not None:
            report.drop(key, reason)
            continue
        dst = _rename(key)
        if dst is None or dst not in target:
            report.unmapped.append(key)
            continue
        if tuple(tensor.shape) != target[dst]:
            raise _shape_error(key, dst, tuple(tensor.shape), target[dst])
        out[dst] = tensor

    # The input table: the release saved one Parameter under two names; use either, insist they agree.
    text, src = official.get(OFFICIAL_EMBED), OFFICIAL_EMBED
    dup = official.get(OFFICIAL_EMBED_DUP)
    if text is None and dup is not None:
        text, src = dup, OFFICIAL_EMBED_DUP
    elif dup is not None:
        if dup is not text and (dup.shape != text.shape or not torch.equal(dup, text)):
            raise ValueError(f"{OFFICIAL_EMBED_DUP} differs from {OFFICIAL_EMBED}; the release saves one "
                             "tensor under both names, so this checkpoint is not the RadFM release layout")
        report.drop(OFFICIAL_EMBED_DUP, DROP_DUP)
    if text is not None and TARGET_EMBED not in target:
        report.unmapped.append(src)
    elif text is not None:
        want = target[TARGET_EMBED]
        table = _vocab_table(src, text, TARGET_EMBED, want)
        n_text, n_rows = text.shape[0], want[0]
        ids = tuple(image_token_ids) if image_token_ids is not None else (n_rows - 3, n_rows - 2, n_rows - 1)
        if len(set(ids)) != 3 or not all(n_text <= i < n_rows for i in ids):
            raise ValueError(
                f"image token ids {ids} must be three distinct rows in [{n_text}, {n_rows}): the official "
                f"text vocabulary fills rows 0…{n_text - 1} of {TARGET_EMBED} (shape {list(want)}); use a "
                "tokenizer that appends <image>, </image>, <image_patch> after the LLaMA vocabulary"
            )
        figure = official.get(OFFICIAL_FIGURE)
        if figure is not None:
            if tuple(figure.shape) != (2, want[1]):
                raise _shape_error(OFFICIAL_FIGURE, TARGET_EMBED, tuple(figure.shape), (2, want[1]),
                                   "expected the two rows of <image> and </image>")
            table[ids[0]], table[ids[1]] = figure[0], figure[1]
        else:
            report.notes.append(f"{OFFICIAL_FIGURE} is absent: the <image>/</image> rows are zeros")
        out[TARGET_EMBED] = table
    if OFFICIAL_FIGURE in official and TARGET_EMBED not in out:
        report.unmapped.append(OFFICIAL_FIGURE)  # without the text table there is no row layout to place it in

    head = official.get(OFFICIAL_LM_HEAD)
    if head is not None:
        if TARGET_LM_HEAD not in target:
            report.unmapped.append(OFFICIAL_LM_HEAD)
        else:
            if text is not None and head.shape[0] != text.shape[0]:
                raise _shape_error(OFFICIAL_LM_HEAD, TARGET_LM_HEAD, tuple(head.shape), target[TARGET_LM_HEAD],
                                   f"its {head.shape[0]} rows differ from the {text.shape[0]} rows of {src}")
            out[TARGET_LM_HEAD] = _vocab_table(OFFICIAL_LM_HEAD, head, TARGET_LM_HEAD, target[TARGET_LM_HEAD])

    report.missing = [k for k in target if k not in out]
    report.mapped = len(out)
    return out, report


# ---- reading checkpoints ---------------------------------------------------------------------------
TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        from radfm.model.checkpoint import named_weights_errors

        with named_weights_errors(path):
            return load_file(str(path), device="cpu")
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(f"{path}: unsupported checkpoint suffix {path.suffix!r} "
                         f"(use .safetensors or one of {', '.join(TORCH_SUFFIXES)})")
    try:
        # Memory-mapped so a 13B checkpoint is paged in from disk instead of copied into RAM.
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # pre-zip (legacy) torch files cannot be memory-mapped
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    bad = next((k for k, v in obj.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise ValueError(f"{path}: entry {bad!r} is a {type(obj[bad]).__name__}, not a tensor; "
                         "pass a plain state dict (or one nested under 'model' / 'state_dict')")
    return obj


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a RadFM checkpoint on the CPU: one ``.bin``/``.pt``/``.pth`` (weights only; a state dict or a dict
    nesting it under ``model``/``state_dict``), one ``.safetensors`` file, or a directory of shards
    (``*.safetensors``, else ``pytorch_model*.bin``). A ``module.`` prefix (DDP/DeepSpeed) is stripped."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
        if not files:
            raise FileNotFoundError(f"{path} holds no checkpoint shards (*.safetensors or pytorch_model*.bin)")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            part = _load_file(file)
            twice = state.keys() & part.keys()
            if twice:
                raise ValueError(f"{path}: key {min(twice)!r} appears in more than one shard ({file.name})")
            state.update(part)
    elif path.is_file():
        state = _load_file(path)
    else:
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# ---- importing -------------------------------------------------------------------------------------
def import_checkpoint(
    path: str | Path,
    out_dir: str | Path,
    preset: str | RadFMConfig = "base",
    tokenizer_dir: str | Path | None = None,
    strict: bool = True,
) -> ConversionReport:
    """Convert the RadFM release at ``path`` into a radfm checkpoint directory ``out_dir``.

    The model is built from ``preset`` (a preset name or a :class:`RadFMConfig`); its shapes must match the
    checkpoint's. With ``tokenizer_dir`` (a local LLaMA tokenizer; the image tokens are appended) the result
    is a full :func:`~radfm.model.checkpoint.save_pretrained` directory; without one only
    ``model.safetensors`` and ``config.json`` are written. ``strict`` raises when any official key is
    unmapped or any model key missing; otherwise missing tensors keep their random initialisation.
    """
    from radfm.model.checkpoint import CONFIG, WEIGHTS, save_pretrained
    from radfm.model.factory import build_model
    from radfm.model.presets import preset as preset_config
    from radfm.model.tokenizer import RadFMTokenizer

    cfg = preset_config(preset) if isinstance(preset, str) else copy.deepcopy(preset)
    cfg.lm.path = None  # the weights come from the checkpoint, never from another LM directory
    tokenizer = RadFMTokenizer.from_local(tokenizer_dir, cfg.num_image_tokens) if tokenizer_dir else None
    official = load_official_state_dict(path)
    # Conversion never trains: build without activation checkpointing, but keep the flag in the saved config.
    checkpointing, cfg.gradient_checkpointing = cfg.gradient_checkpointing, False
    model = build_model(cfg, tokenizer)
    cfg.gradient_checkpointing = checkpointing
    ids = None if tokenizer is None else (tokenizer.image_start_id, tokenizer.image_end_id, tokenizer.image_patch_id)
    mapped, report = map_official_state_dict(official, model, ids)
    if strict and not report.ok:
        raise ValueError(f"checkpoint {path} does not fit preset {cfg.name!r}:\n{report.summary()}\n"
                         "pass strict=False to import anyway (missing tensors stay randomly initialised)")
    model.load_state_dict(mapped, strict=strict)
    del official, mapped
    out_dir = Path(out_dir)
    if tokenizer is not None:
        save_pretrained(model, tokenizer, out_dir,
                        extra={"imported_from": Path(path).name, "conversion": report.to_dict()})
    else:
        from safetensors.torch import save_model

        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(model, str(out_dir / WEIGHTS))
        cfg.save(out_dir / CONFIG)
        report.notes.append(f"no tokenizer given: wrote only {WEIGHTS} and {CONFIG} to {out_dir}; save a "
                            "RadFMTokenizer into its tokenizer/ folder before load_pretrained")
    log.info("imported %s into %s\n%s", path, out_dir, report.summary())
    return report


# ---- official-like state dicts (tests, benchmarks) --------------------------------------------------
@dataclass(frozen=True)
class AuxShapes:
    """Sizes of the release's auxiliary modules; the defaults are the release's. The layer counts fix names."""

    bert_vocab: int = 30522
    bert_positions: int = 512
    bert_hidden: int = 768
    bert_layers: int = 12
    bert_ffn: int = 3072
    decoder_layers: int = 4
    decoder_ffn: int = 2048


RELEASE_AUX = AuxShapes()
SMALL_AUX = AuxShapes(bert_vocab=64, bert_positions=16, bert_hidden=16, bert_ffn=32, decoder_ffn=32)

Spec = tuple[tuple[int, ...], torch.dtype]


def official_like_shapes(cfg: RadFMConfig, text_vocab: int, aux: AuxShapes = RELEASE_AUX) -> dict[str, Spec]:
    """Name → (shape, dtype) of every tensor the release saves, in the release's order, sized from ``cfg``.

    With :func:`radfm.model.presets.base`, ``text_vocab=32000`` and the default ``aux`` this is the released
    checkpoint's exact key list. The decoder heads of the auxiliary modules work at the vision width.
    """
    f32, i64 = torch.float32, torch.int64
    v, r, lm = cfg.vision, cfg.resampler, cfg.lm
    spec: dict[str, Spec] = {}

    def add(name: str, *shape: int, dtype: torch.dtype = f32) -> None:
        spec[name] = (tuple(shape), dtype)

    def linear(name: str, out: int, inp: int, bias: bool = True) -> None:
        add(f"{name}.weight", out, inp)
        if bias:
            add(f"{name}.bias", out)

    def norm(name: str, dim: int) -> None:
        add(f"{name}.weight", dim)
        add(f"{name}.bias", dim)

    hidden, head_dim = lm.hidden_size, lm.hidden_size // lm.heads
    kv = (lm.kv_heads or lm.heads) * head_dim
    add("lang_model.model.embed_tokens.weight", text_vocab, hidden)
    for i in range(lm.layers):
        p = f"lang_model.model.layers.{i}."
        for proj, out in (("q", hidden), ("k", kv), ("v", kv), ("o", hidden)):
            linear(f"{p}self_attn.{proj}_proj", out, hidden, bias=False)
        add(f"{p}self_attn.rotary_emb.inv_freq", head_dim // 2)
        linear(f"{p}mlp.gate_proj", lm.intermediate_size, hidden, bias=False)
        linear(f"{p}mlp.up_proj", lm.intermediate_size, hidden, bias=False)
        linear(f"{p}mlp.down_proj", hidden, lm.intermediate_size, bias=False)
        add(f"{p}input_layernorm.weight", hidden)
        add(f"{p}post_attention_layernorm.weight", hidden)
    add("lang_model.model.norm.weight", hidden)
    add("lang_model.lm_head.weight", text_vocab, hidden)
    add(OFFICIAL_EMBED_DUP, text_vocab, hidden)
    add(OFFICIAL_FIGURE, 2, hidden)

    b, bh = "embedding_layer.bert_model.", aux.bert_hidden
    add(f"{b}embeddings.position_ids", 1, aux.bert_positions, dtype=i64)
    add(f"{b}embeddings.word_embeddings.weight", aux.bert_vocab, bh)
    add(f"{b}embeddings.position_embeddings.weight", aux.bert_positions, bh)
    add(f"{b}embeddings.token_type_embeddings.weight", 2, bh)
    norm(f"{b}embeddings.LayerNorm", bh)
    for i in range(aux.bert_layers):
        p = f"{b}encoder.layer.{i}."
        for part in ("query", "key", "value"):
            linear(f"{p}attention.self.{part}", bh, bh)
        linear(f"{p}attention.output.dense", bh, bh)
        norm(f"{p}attention.output.LayerNorm", bh)
        linear(f"{p}intermediate.dense", aux.bert_ffn, bh)
        linear(f"{p}output.dense", bh, aux.bert_ffn)
        norm(f"{p}output.LayerNorm", bh)
    linear(f"{b}pooler.dense", bh, bh)
    linear("embedding_layer.bert_projection_fc", v.width, bh)

    e, w = "embedding_layer.vision_encoder.", v.width
    patch_dim, inner = v.in_channels * v.patch_size * v.patch_size * v.patch_depth, v.heads * v.head_dim
    grid, part = v.max_image_size // v.patch_size, w // 3
    add(f"{e}to_patch_embedding.1.weight", patch_dim)
    add(f"{e}to_patch_embedding.1.bias", patch_dim)
    linear(f"{e}to_patch_embedding.2", w, patch_dim)
    norm(f"{e}to_patch_embedding.3", w)
    add(f"{e}pos_embedding.row_embed.weight", grid, part)
    add(f"{e}pos_embedding.col_embed.weight", grid, part)
    add(f"{e}pos_embedding.dep_embed.weight", v.max_depth // v.patch_depth, w - 2 * part)
    for i in range(v.layers):
        p = f"{e}transformer.layers.{i}."
        norm(f"{p}0.norm", w)
        linear(f"{p}0.fn.to_qkv", 3 * inner, w, bias=False)
        linear(f"{p}0.fn.to_out.0", w, inner)
        norm(f"{p}1.norm", w)
        linear(f"{p}1.fn.net.0", v.mlp_dim, w)
        linear(f"{p}1.fn.net.3", w, v.mlp_dim)

    u = "embedding_layer.output_upscaling."
    add(f"{u}0.weight", w, w // 4, 2, 2, 2)
    add(f"{u}0.bias", w // 4)
    norm(f"{u}1", w // 4)
    add(f"{u}1.running_mean", w // 4)
    add(f"{u}1.running_var", w // 4)
    add(f"{u}1.num_batches_tracked", dtype=i64)
    add(f"{u}3.weight", w // 4, w // 8, 2, 2, 2)
    add(f"{u}3.bias", w // 8)
    for i in range(aux.decoder_layers):
        p = f"embedding_layer.transformer_decoder.layers.{i}."
        for attn in ("self_attn", "multihead_attn"):
            add(f"{p}{attn}.in_proj_weight", 3 * w, w)
            add(f"{p}{attn}.in_proj_bias", 3 * w)
            linear(f"{p}{attn}.out_proj", w, w)
        linear(f"{p}linear1", aux.decoder_ffn, w)
        linear(f"{p}linear2", w, aux.decoder_ffn)
        for n in (1, 2, 3):
            norm(f"{p}norm{n}", w)
    norm("embedding_layer.transformer_decoder.norm", w)
    linear("embedding_layer.transformer_decoder_mlp.0", w // 4, w)
    linear("embedding_layer.transformer_decoder_mlp.2", w // 8, w // 4)

    q, rinner = "embedding_layer.perceiver.", r.heads * r.dim_head
    add(f"{q}latents", r.num_latents, r.dim)
    for i in range(r.layers):
        p = f"{q}layers.{i}."
        norm(f"{p}0.norm_media", r.dim)
        norm(f"{p}0.norm_latents", r.dim)
        linear(f"{p}0.to_q", rinner, r.dim, bias=False)
        linear(f"{p}0.to_kv", 2 * rinner, r.dim, bias=False)
        linear(f"{p}0.to_out", r.dim, rinner, bias=False)
        norm(f"{p}1.0", r.dim)
        linear(f"{p}1.1", r.dim * r.ff_mult, r.dim, bias=False)
        linear(f"{p}1.3", r.dim, r.dim * r.ff_mult, bias=False)
    norm(f"{q}norm", r.dim)
    linear("embedding_layer.fc", hidden, r.dim)
    linear("embedding_layer.cls_head", 1, w // 8)
    return spec


def make_official_like_state_dict(
    cfg: RadFMConfig, text_vocab: int, seed: int = 0, aux: AuxShapes = SMALL_AUX
) -> dict[str, torch.Tensor]:
    """A random state dict with the release's names and layout, sized from ``cfg`` (tiny models, tests).

    Like the release, ``embedding_layer.weight`` is the very tensor of ``lang_model.model.embed_tokens.weight``.
    Matrices are scaled by 1/sqrt(fan-in) and 1-D weights sit near 1, so forward passes stay well-conditioned.
    """
    g = torch.Generator().manual_seed(seed)
    theta, head_dim = cfg.lm.rope_theta, cfg.lm.hidden_size // cfg.lm.heads
    state: dict[str, torch.Tensor] = {}
    for name, (shape, dtype) in official_like_shapes(cfg, text_vocab, aux).items():
        if name == OFFICIAL_EMBED_DUP:
            state[name] = state[OFFICIAL_EMBED]
        elif dtype == torch.int64:
            state[name] = torch.arange(math.prod(shape)).reshape(shape) if shape else torch.tensor(0)
        elif name.endswith("inv_freq"):
            state[name] = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        elif len(shape) >= 2:
            state[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif name.endswith(("weight", "running_var")):
            state[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            state[name] = 0.1 * torch.randn(shape, generator=g)
    return state
