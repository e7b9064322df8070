"""The composed model: 3D ViT → perceiver resampler → projection, scattered into a causal LM's embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from radfm.model.config import RadFMConfig
from radfm.model.decode import LeanDecoder
from radfm.model.decode import supports as supports_lean
from radfm.model.resampler import PerceiverResampler
from radfm.model.tokenizer import IGNORE_INDEX
from radfm.model.vit3d import ViT3D

Images = torch.Tensor | Sequence[torch.Tensor] | None


class VisionEmbedder(nn.Module):
    """Images → LM tokens. ``N×C×H×W×D`` → ``N×num_latents×lm_hidden``."""

    def __init__(self, cfg: RadFMConfig) -> None:
        super().__init__()
        self.encoder = ViT3D(cfg.vision)
        if cfg.vision.width != cfg.resampler.dim:
            raise ValueError(
                f"vision width {cfg.vision.width} must equal resampler dim {cfg.resampler.dim}"
            )
        self.resampler = PerceiverResampler(cfg.resampler)
        self.projection = nn.Linear(cfg.resampler.dim, cfg.lm.hidden_size)

    def forward(self, images: torch.Tensor, with_patches: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``N×num_latents×lm_hidden`` tokens; with ``with_patches`` also the ViT's ``N×P×width`` patch tokens
        (what an objective that reads patches asks for: :class:`ImageEncoding`)."""
        patches = self.encoder(images)  # N×P×width
        tokens = self.projection(self.resampler(patches))
        return (tokens, patches) if with_patches else tokens


@dataclass
class ImageEncoding:
    """The vision side's output for a list of N images, in input order.

    ``tokens``: ``N×K×hidden`` (the LM's image tokens). ``patches``: the ViT's patch tokens when asked for,
    as ``(indices, n×P×width)`` groups of same-shaped images (P differs between shapes, e.g. 3D depth
    buckets), so nothing is copied or pooled here: pooling belongs to whoever reads them.
    """

    tokens: torch.Tensor
    patches: tuple[tuple[list[int], torch.Tensor], ...] | None = None


class RadFMModel(nn.Module):
    """Text interleaved with any number of 2D/3D images in, text out.

    ``input_ids`` (B×T) hold ``<image>`` + K placeholders + ``</image>`` per image (K = num_latents).
    ``images`` are all images of the batch in the order their blocks appear in ``input_ids`` read
    row by row: either one ``N×C×H×W×D`` tensor or a list of ``C×H×W×D`` tensors (shapes may differ,
    e.g. 2D and 3D in one batch; each shape group is encoded in one pass).
    """

    def __init__(self, cfg: RadFMConfig, lm: nn.Module, image_patch_id: int, suppress_ids: Sequence[int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEmbedder(cfg)
        self.lm = lm
        self.image_patch_id = image_patch_id
        # Image tokens are never a valid output: generation masks them.
        self.suppress_ids = list(suppress_ids)
        # Added to log p(yes) − log p(no) where a closed question is yes/no (radfm.eval.calibration; saved in
        # the checkpoint's radfm.json, 0 until a run fits it).
        self.yes_no_offset = 0.0

    # ---- embedding ------------------------------------------------------------------------------
    def encode_images(self, images: Images) -> torch.Tensor | None:
        """Return ``N×K×hidden`` image tokens, in input order, or None without images."""
        encoding = self.encode(images)
        return None if encoding is None else encoding.tokens

    def encode(self, images: Images, with_patches: bool = False) -> ImageEncoding | None:
        """The :class:`ImageEncoding` of ``images`` (one ``N×C×H×W×D`` tensor or a list of ``C×H×W×D``
        tensors whose shapes may differ: each shape group is encoded in one pass), or None without images."""
        if images is None:
            return None
        if isinstance(images, torch.Tensor):
            if images.dim() != 5:
                raise ValueError(
                    f"images must be N×C×H×W×D (rank 5), got rank {images.dim()} with shape {tuple(images.shape)}"
                )
            if not images.shape[0]:
                return None
            out = self.vision(images, with_patches=with_patches)
            if with_patches:
                return ImageEncoding(out[0], ((list(range(images.shape[0])), out[1]),))
            return ImageEncoding(out)
        if len(images) == 0:
            return None
        for i, img in enumerate(images):
            if img.dim() != 4:
                raise ValueError(
                    f"image {i} must be C×H×W×D (rank 4) in a list of images, got shape {tuple(img.shape)}"
                )
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(tuple(img.shape), []).append(i)
        out: torch.Tensor | None = None
        patches: list[tuple[list[int], torch.Tensor]] = []
        for idx in groups.values():
            feats = self.vision(torch.stack([images[i] for i in idx]), with_patches=with_patches)
            if with_patches:
                feats, group_patches = feats
                patches.append((idx, group_patches))
            if out is None:
                out = feats.new_empty((len(images), *feats.shape[1:]))
            out[idx] = feats
        assert out is not None
        return ImageEncoding(out, tuple(patches) if with_patches else None)

    def embed(self, input_ids: torch.Tensor, images: Images = None,
              image_features: torch.Tensor | None = None) -> torch.Tensor:
        """``B×T`` ids (+ images) → ``B×T×hidden`` input embeddings with image features scattered in.

        ``image_features`` (``N×K×hidden``, from :meth:`encode_images`, in the order of the image blocks)
        replace ``images``: a caller that scores one image under many texts encodes it once.
        """
        embeds = self.lm.get_input_embeddings()(input_ids)
        is_patch = input_ids == self.image_patch_id
        n_slots = int(is_patch.sum())
        if image_features is not None and images is not None:
            raise ValueError("pass images or image_features, not both")
        if image_features is not None:
            if image_features.dim() != 3:
                raise ValueError(f"image_features must be N×K×hidden (rank 3), got shape "
                                 f"{tuple(image_features.shape)}")
            feats = image_features if image_features.shape[0] else None
        else:
            feats = self.encode_images(images)
        n_feats = 0 if feats is None else feats.shape[0] * feats.shape[1]
        if n_slots != n_feats:
            k = self.cfg.num_image_tokens
            raise ValueError(
                f"the text holds {n_slots // k} image placeholder blocks ({n_slots} tokens) but "
                f"{n_feats // k} images were given: every image needs exactly one <image> block and vice versa"
            )
        if feats is None:
            return embeds
        # A scatter, not RadFM's one-hot matmul over vocab + all image rows.
        return embeds.masked_scatter(is_patch.unsqueeze(-1), feats.to(embeds.dtype))

    # ---- training ---------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: Images = None,
        labels: torch.Tensor | None = None,
        loss_weights: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``logits`` (B×T×V) and, with ``labels`` (B×T, -100 ignored), the answer-only ``loss``.

        ``loss_weights`` (B×T, float) up-weights chosen answer tokens (e.g. clinical terms); the loss is
        the weighted mean over answer tokens. ``image_features``: see :meth:`embed`. ``segment_ids``
        (B×T; 0 shared prefix, k ≥ 1 turn k, -1 padding; see ``RadFMTokenizer.format_turns``) replace the
        causal mask by :func:`packed_attention`'s, so packed turns do not see each other.

        ``logits_at`` (B×T bool): run the LM head only at these M positions and return ``logits`` as M×V, in
        row-major order (``logits_at.nonzero()``'s). Why: a loss or a likelihood needs the logits only where an
        answer token is predicted (~15% of a packed demo batch's positions), and the head (hidden × vocab) and
        its backward over every other position cost ~22% of a demo training step (1.28× faster without them;
        bench/answer_logits.py, BENCHMARKS.md). Under ``torch.compile`` the data-dependent M breaks the graph there.
        """
        if logits_at is not None and labels is not None:
            raise ValueError("pass labels (B×T logits and their loss) or logits_at (M×V logits), not both")
        embeds = self.embed(input_ids, images, image_features)
        if segment_ids is not None:
            mask, positions = packed_attention(segment_ids)
        else:
            mask, positions = attention_mask, None
        if logits_at is None:
            logits = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                             use_cache=False).logits
        else:
            if logits_at.shape != input_ids.shape:
                raise ValueError(f"logits_at must be B×T like input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(logits_at.shape)}")
            hidden = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                           use_cache=False).last_hidden_state  # B×T×hidden, final norm applied
            logits = self.lm.get_output_embeddings()(hidden[logits_at])
        result = {"logits": logits}
        if labels is not None:
            result["loss"] = answer_loss(logits, labels, loss_weights)
        return result

    # ---- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: Images = None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        use_cache: bool = True,
        image_features: torch.Tensor | None = None,
        lean: bool = True,
        num_beams: int = 1,
        length_penalty: float = 1.0,
    ) -> torch.Tensor:
        """Left-padded prompts ``B×T`` → new tokens ``B×T_new`` (padded with ``pad_token_id`` after EOS).

        Greedy by default: with ``lean`` (and a plain LLaMA LM) through :class:`radfm.model.decode.LeanDecoder`'s
        static KV cache, the same tokens as ``transformers``' ``generate(inputs_embeds=…)``, which runs otherwise
        (``lean=False``, sampling with ``do_sample``). ``num_beams`` > 1: beam search, lean too
        (:meth:`radfm.model.decode.LeanDecoder.beam`, ``generate``'s beams and its ``length_penalty``).
        ``image_features``: see :meth:`embed`.
        """
        if num_beams < 1:
            raise ValueError(f"num_beams must be at least 1, got {num_beams}")
        if num_beams > 1 and (do_sample or not use_cache):
            raise ValueError("beam search is deterministic and uses the KV cache: num_beams > 1 needs "
                             "do_sample=False and use_cache=True")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("batched generation needs left padding: a prompt ends in padding")
        embeds = self.embed(input_ids, images, image_features)
        if not use_cache:
            # transformers turns the cache back on when generate() gets inputs_embeds: recompute by hand.
            if do_sample:
                raise ValueError("sampling without the KV cache is not supported; use use_cache=True")
            return self._greedy_without_cache(embeds, attention_mask, max_new_tokens, eos_token_id,
                                              pad_token_id if pad_token_id is not None else eos_token_id)
        pad = pad_token_id if pad_token_id is not None else eos_token_id
        if lean and not do_sample and supports_lean(self.lm):
            decoder = LeanDecoder(self.lm)
            if num_beams > 1:
                return decoder.beam(embeds, attention_mask, max_new_tokens, num_beams, eos_token_id, pad,
                                    self.suppress_ids, length_penalty)
            return decoder.greedy(embeds, attention_mask, max_new_tokens, eos_token_id, pad, self.suppress_ids)
        kwargs = {"do_sample": do_sample}
        if num_beams > 1:
            kwargs.update(num_beams=num_beams, length_penalty=length_penalty)
        if do_sample:
            kwargs.update(temperature=temperature, top_k=top_k or 0, top_p=top_p if top_p is not None else 1.0)
        else:
            kwargs.update(temperature=None, top_k=None, top_p=None)
        return self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id if pad_token_id is not None else eos_token_id,
            suppress_tokens=self.suppress_ids or None,
            use_cache=use_cache,
            **kwargs,
        )

    def _greedy_without_cache(self, embeds: torch.Tensor, mask: torch.Tensor, steps: int,
                              eos: int | None, pad: int | None) -> torch.Tensor:
        """Greedy decoding that re-runs the whole sequence every step (a reference and a benchmark baseline)."""
        table = self.lm.get_input_embeddings()
        finished = torch.zeros(embeds.shape[0], dtype=torch.bool, device=embeds.device)
        out = []
        for _ in range(steps):
            pos = (mask.cumsum(-1) - 1).clamp_min(0)
            # Only the last position's logits are used: skip the LM head everywhere else.
            logits = self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False,
                             logits_to_keep=1).logits
            last = logits[:, -1].float()
            if self.suppress_ids:
                last[:, self.suppress_ids] = float("-inf")
            nxt = last.argmax(-1)
            if pad is not None:
                nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            out.append(nxt)
            if eos is not None:
                finished |= nxt == eos
            if bool(finished.all()):
                break
            embeds = torch.cat([embeds, table(nxt)[:, None].to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def sequence_logprob(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        images: Images = None,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sum of log p(label tokens) per row, ``B``: used to rank closed-set answers by likelihood.

        ``image_features``: see :meth:`embed`.
        """
        target = labels[:, 1:]
        mask = target != IGNORE_INDEX
        # The head and the softmax run only where a label is scored (the answer tokens), not over the prompt:
        # position t predicts token t + 1.
        picked = self.forward(input_ids, attention_mask, images, image_features=image_features,
                              logits_at=F.pad(mask, (0, 1)))["logits"].float()
        logp = torch.zeros(target.shape, dtype=torch.float32, device=picked.device)
        logp[mask] = torch.log_softmax(picked, dim=-1).gather(-1, target[mask].unsqueeze(-1)).squeeze(-1)
        return logp.sum(-1)


def answer_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy on tokens whose label is not -100. ``logits`` B×T×V, ``labels`` B×T."""
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    per_token = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="none")
    mask = (shift_labels != IGNORE_INDEX).float()
    if weights is not None:
        mask = mask * weights[:, 1:].reshape(-1).float()
    denom = mask.sum().clamp_min(1.0)
    return (per_token * mask).sum() / denom


def packed_attention(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``B×T`` segment ids → a boolean ``B×1×T×T`` attention mask (True = may attend) and ``B×T`` positions.

    Token i sees token j ≤ i when j is in the shared prefix (segment 0) or in i's own segment; padding (-1)
    is seen by no one. Positions count the prefix from 0 and restart after it in every segment, so turn k
    sits at the positions it would have as a sample of its own. Every token sees at least itself (padding
    rows would otherwise be all-False, which gives NaN in attention; their outputs carry no loss).
    """
    t = segment_ids.shape[1]
    device = segment_ids.device
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    shared = (segment_ids == 0)[:, None, :]
    valid = (segment_ids >= 0)[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    mask = ((same | shared) & valid & causal) | torch.eye(t, dtype=torch.bool, device=device)
    prefix = (segment_ids == 0).sum(1, keepdim=True)
    # Rank of each token inside its own segment: a cumulative count over a one-hot of the segments.
    onehot = F.one_hot(segment_ids.clamp_min(0), int(segment_ids.max().clamp_min(0)) + 1)
    rank = (onehot.cumsum(1) * onehot).sum(-1) - 1
    positions = torch.where(segment_ids == 0, rank, prefix + rank).clamp_min(0)
    return mask[:, None], positions

