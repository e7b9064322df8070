"""What one inference request may ask of a model, checked before any model work.

- the prompt with its images (each ``<image>`` + 32 image tokens + ``</image>``) plus ``max_new_tokens`` must fit
  the model's context: the LM's ``max_position_embeddings`` (the tokenizer's own maximum when that is smaller);
- at most ``RADFM_MAX_IMAGES`` images per request (default :data:`DEFAULT_MAX_IMAGES`);
- every image's header within the readers' size limits (:func:`radfm.data.readers.probe_image`, the defaults of
  :class:`radfm.data.limits.ImageLimits`), read before a pixel is decoded;
- every image a request carries as bytes (base64) or names by ``s3://`` URI at most ``RADFM_MAX_IMAGE_BYTES``
  (default :data:`DEFAULT_MAX_IMAGE_BYTES`), checked from the base64 length or the object's metadata before it
  is decoded or fetched (:mod:`radfm.registry.request_images`).

Used by ``radfm predict`` and the Python API (:mod:`radfm.registry.inference`) and by the served model
(:mod:`radfm.registry.pyfunc`), so the three refuse the same requests with the same words.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radfm.data.errors import SampleError

# 16 images: RadFM's cases interleave a handful of images or scans (a study's series), and a multi-sequence MRI
# (T1, T2, FLAIR, DWI, ADC, post-contrast, in two planes) stays within 16. Each image is a full pass of the 3D
# vision encoder (the base preset's input is 512×512 in-plane × up to 64 slices, ~17 M voxels), so the count
# bounds a request's memory and time before the context does: 16 images take 16 × 34 = 544 tokens, a quarter
# of the base preset's 2048 (the tiny preset's 512 tokens hold fewer anyway, which the context check reports).
DEFAULT_MAX_IMAGES = 16
MAX_IMAGES_ENV = "RADFM_MAX_IMAGES"
# 512 MiB per image sent or fetched: a 512×512×1024 int16 CT as an uncompressed NIfTI (a 512³ one is half that).
# Each is held in memory once decoded and written to a temporary file, so the image count × this bounds what a
# request costs in memory and disk; files on the server's own disk are not counted.
DEFAULT_MAX_IMAGE_BYTES = 2**29
MAX_IMAGE_BYTES_ENV = "RADFM_MAX_IMAGE_BYTES"
# Above this, a tokenizer reports no real maximum (transformers' "unset" is 1e30).
_NO_TOKENIZER_LIMIT = 10**7


class PredictInputError(ValueError):
    """An input of a request is missing, unreadable or over a limit; the message names it and what to do."""


class InputLimitError(PredictInputError):
    """A request is over one of the limits (context, image count, image size, max_new_tokens)."""


def _positive_env(name: str, default: int, unit: str) -> int:
    """A positive whole number from the environment variable ``name``, else ``default``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InputLimitError(f"{name}={raw!r} must be a positive whole number of {unit}")
    return value


def max_images() -> int:
    """The most images one request may carry: ``RADFM_MAX_IMAGES``, else :data:`DEFAULT_MAX_IMAGES` (set it
    where the model is served: the limit belongs to whoever runs the server, not to a request)."""
    return _positive_env(MAX_IMAGES_ENV, DEFAULT_MAX_IMAGES, "images")


def max_image_bytes() -> int:
    """The most bytes one image of a request may carry (base64) or fetch (``s3://``): ``RADFM_MAX_IMAGE_BYTES``,
    else :data:`DEFAULT_MAX_IMAGE_BYTES` (set where the model is served, as ``RADFM_MAX_IMAGES``)."""
    return _positive_env(MAX_IMAGE_BYTES_ENV, DEFAULT_MAX_IMAGE_BYTES, "bytes")


def check_image_bytes(n_bytes: int, what: str) -> None:
    """Refuse ``what`` (a row's image, named) when it is over :func:`max_image_bytes`."""
    limit = max_image_bytes()
    if n_bytes > limit:
        raise InputLimitError(f"{what} has {n_bytes:,} bytes, over the limit of {limit:,} per image: send a "
                              f"smaller or compressed file (or raise {MAX_IMAGE_BYTES_ENV} where the model runs)")


def check_image_count(n_images: int, where: str = "the request") -> None:
    limit = max_images()
    if n_images > limit:
        raise InputLimitError(f"{where} has {n_images} images, over the limit of {limit} per request: send fewer "
                              f"(or raise {MAX_IMAGES_ENV} where the model runs)")


MAX_BEAMS = 8  # each beam holds its own KV cache: a request cannot multiply the server's memory further


def _whole_number(value: Any, name: str, where: str) -> int:
    """``value`` as an int (a float or string that is one is taken; 2.5 or "x" is refused naming ``name``)."""
    try:
        number = int(value)
        if number != value and not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise InputLimitError(f"{where}: {name} must be a whole number, got {value!r}") from None
    return number


def check_num_beams(value: Any, where: str = "the request") -> int:
    """``num_beams`` as an int from 1 (greedy) to :data:`MAX_BEAMS`."""
    beams = _whole_number(value, "num_beams", where)
    if not 1 <= beams <= MAX_BEAMS:
        raise InputLimitError(f"{where}: num_beams must be from 1 (greedy) to {MAX_BEAMS}, got {beams}")
    return beams


def check_max_new_tokens(value: Any, where: str = "the request", context: int | None = None) -> int:
    """``max_new_tokens`` as an int ≥ 1 (and below ``context`` when known)."""
    tokens = _whole_number(value, "max_new_tokens", where)
    if tokens < 1:
        raise InputLimitError(f"{where}: max_new_tokens must be at least 1, got {tokens}")
    if context is not None and tokens >= context:
        raise InputLimitError(f"{where}: max_new_tokens {tokens:,} is beyond the model's context of {context:,} "
                              f"tokens (the prompt counts too): ask for at most {context - 1:,}")
    return tokens


@dataclass(frozen=True)
class ContextLimit:
    """The model's context and what it takes to check a prompt against it cheaply.

    ``max_token_chars``: the longest vocabulary entry. No token covers more characters of a prompt, so a prompt
    of more than ``context × max_token_chars`` characters cannot fit, and is refused before it is tokenised
    (tokenising 2 MB takes seconds).
    """

    context: int
    max_token_chars: int

    @classmethod
    def of(cls, model_cfg: Any, tokenizer: Any) -> ContextLimit:
        """From a :class:`~radfm.model.config.RadFMConfig` and its :class:`~radfm.model.tokenizer.RadFMTokenizer`."""
        context = int(model_cfg.lm.max_position_embeddings)
        tok_max = getattr(tokenizer.hf, "model_max_length", None)
        if isinstance(tok_max, int) and 0 < tok_max < _NO_TOKENIZER_LIMIT:
            context = min(context, tok_max)
        longest = max((len(t) for t in tokenizer.hf.get_vocab()), default=1)
        return cls(context, max(1, longest))

    def check(self, tokenizer: Any, prompt: str, n_images: int, max_new_tokens: int, where: str) -> Any:
        """The encoded generation prompt (:meth:`RadFMTokenizer.format_prompt`, images at the start), after
        checking that it and ``max_new_tokens`` fit the context; :class:`InputLimitError` otherwise."""
        check_max_new_tokens(max_new_tokens, where, self.context)
        if len(prompt) > self.context * self.max_token_chars:
            raise InputLimitError(f"{where}: the prompt has {len(prompt):,} characters, more than the model's "
                                  f"context of {self.context:,} tokens can hold: shorten it")
        enc = tokenizer.format_prompt(prompt, None, ["start"] * n_images)
        used = len(enc.input_ids)
        images = f" with its {n_images} image(s)" if n_images else ""
        if used > self.context:
            raise InputLimitError(f"{where}: the prompt needs {used:,} tokens{images}, over the model's context of "
                                  f"{self.context:,} tokens: shorten it" + (" or send fewer images" if images else ""))
        if used + max_new_tokens > self.context:
            raise InputLimitError(f"{where}: the prompt's {used:,} tokens{images} + max_new_tokens {max_new_tokens:,} "
                                  f"exceed the model's context of {self.context:,} tokens: ask for at most "
                                  f"{self.context - used:,} new tokens or shorten the prompt")
        return enc


def probe(image: str | Path, where: str | None = None, sample_id: str | None = None,
          label: str | None = None) -> None:
    """Check one image's header (exists, readable, within the readers' size limits) without decoding a pixel;
    :class:`PredictInputError` naming ``where`` (the row), the image (``label``, else the file) and the reason
    otherwise. ``label`` names an image the client sent as bytes: its temporary file means nothing to them."""
    from radfm.data.readers import probe_image

    try:
        probe_image(image, sample_id)
    except SampleError as exc:
        prefix = f"{where}: " if where else ""
        raise PredictInputError(f"{prefix}image {label or image} cannot be read: {exc.reason}") from None
