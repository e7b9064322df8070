"""Transforms: small callables on dicts that keep metadata (MONAI style), and the preprocessing pipeline.

A data dict is ``{"image": float32 C×H×W×D, "meta": {...}}`` plus, optionally, ``"rng"``: an
``np.random.Generator`` for the random transforms. Each transform returns a new dict and records what it did
in ``meta``. :func:`preprocess` runs read → deterministic part (cached) → train-only augmentation → channels.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from radfm.data.errors import SampleError
from radfm.data.limits import ImageLimits
from radfm.data.readers import read_image

if TYPE_CHECKING:
    from radfm.data.cache import TensorCache

Data = dict[str, Any]
NORMALIZE_MODES = ("auto", "ct_window", "percentile")
DEFAULT_BUCKETS: tuple[int, ...] = tuple(range(4, 65, 4))  # RadFM: depth 4…64 in steps of 4
# Bump when the deterministic transforms change what they compute: cached tensors from before then miss.
PREPROCESS_VERSION = 2  # 2: NIfTI slice axis kept last (readers)
# Percentiles come from about this many evenly strided voxels: np.percentile's partition of a whole volume
# costs more than the resize, and 16k samples pin the 0.5th percentile to within ~0.1 percentile point.
PERCENTILE_SAMPLES = 1 << 14


def _update(data: Data, image: np.ndarray, **meta: Any) -> Data:
    return {**data, "image": image, "meta": {**data.get("meta", {}), **meta}}


def _resize_in_plane(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """C×H×W×D → C×h×w×D, bilinear, antialiased when shrinking (a 512→64 resize otherwise aliases)."""
    C, H, W, D = x.shape
    if h == H and w == W:
        return x
    # (C, D, H, W) as a view of C×H×W×D is channels-last memory: no copy, and torch's fastest layout.
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    y = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=h < H or w < W)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


class Normalize:
    """Intensities to [0, 1]: a fixed Hounsfield window for CT, per-image percentile min-max otherwise.

    ``mode="auto"`` picks the CT window when ``meta["modality"] == "CT"`` (rescaled DICOM is in HU).
    """

    def __init__(self, mode: str = "auto", window: tuple[float, float] = (-1000.0, 1000.0),
                 percentiles: tuple[float, float] = (0.5, 99.5)) -> None:
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize mode {mode!r} is not one of {NORMALIZE_MODES}")
        if not window[0] < window[1] or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ValueError(f"bad window {window} or percentiles {percentiles}")
        self.mode, self.window, self.percentiles = mode, tuple(window), tuple(percentiles)

    def __call__(self, data: Data) -> Data:
        x = data["image"]
        mode = self.mode
        if mode == "auto":
            is_ct = str(data.get("meta", {}).get("modality") or "").upper() == "CT"
            mode = "ct_window" if is_ct else "percentile"
        if mode == "ct_window":
            lo, hi = self.window
        else:
            flat = x.reshape(-1)
            sample = flat[:: max(1, flat.size // PERCENTILE_SAMPLES)]
            lo, hi = (float(v) for v in np.percentile(sample, self.percentiles))
            if hi <= lo:  # mostly one value with a few outliers: fall back to the full range
                lo, hi = float(x.min()), float(x.max())
        if hi > lo:
            y = np.subtract(x, np.float32(lo), dtype=np.float32)
            y *= np.float32(1.0 / (hi - lo))
            np.clip(y, 0.0, 1.0, out=y)
        else:
            y = np.zeros_like(x, dtype=np.float32)
        return _update(data, y, normalize={"mode": mode, "lo": float(lo), "hi": float(hi)})


class Resize:
    """In-plane resize to ``size``×``size`` (depth untouched; see :class:`DepthBucket`)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size

    def __call__(self, data: Data) -> Data:
        x = data["image"]
        _, H, W, _ = x.shape
        y = _resize_in_plane(x, self.size, self.size)
        meta = data.get("meta", {})
        out = _update(data, y)
        if "spacing" in meta:  # the field of view is kept, so each pixel covers more (or less) of it
            s = meta["spacing"]
            out["meta"]["spacing"] = (s[0] * H / self.size, s[1] * W / self.size, s[2])
        return out


def bucket_depth(depth: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The nearest bucket to a 3D depth (a tie goes up, keeping slices); 2D (depth 1) stays 1."""
    if depth <= 1:
        return depth
    return min(buckets, key=lambda b: (abs(b - depth), -b))


class DepthBucket:
    """3D depth to the nearest bucket (RadFM's 4…64; deeper scans cap at the largest). 2D stays D=1."""

    def __init__(self, buckets: Sequence[int] = DEFAULT_BUCKETS) -> None:
        if not buckets or any(b < 1 for b in buckets):
            raise ValueError(f"depth buckets must be positive, got {buckets}")
        self.buckets = tuple(sorted(buckets))

    def __call__(self, data: Data) -> Data:
        x = data["image"]
        C, H, W, D = x.shape
        target = bucket_depth(D, self.buckets)
        if target == D:
            return data
        # D is the innermost axis, so every (c, h, w) line is a row of a 1×(CHW)×1×D image: no copy.
        t = torch.from_numpy(np.ascontiguousarray(x)).reshape(1, C * H * W, 1, D)
        y = F.interpolate(t, size=(1, target), mode="bilinear", align_corners=False, antialias=target < D)
        out = _update(data, y.reshape(C, H, W, target).numpy(), source_depth=D)
        if "spacing" in out["meta"]:
            s = out["meta"]["spacing"]
            out["meta"]["spacing"] = (s[0], s[1], s[2] * D / target)
        return out


class ToChannels:
    """Grey to ``n`` channels by replication (the ViT takes 3); colour to grey by the channel mean if n=1."""

    def __init__(self, n: int = 3) -> None:
        if n not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {n}")
        self.n = n

    def __call__(self, data: Data) -> Data:
        x = data["image"]
        c = x.shape[0]
        if c == self.n:
            return data
        if c == 1:
            return _update(data, np.repeat(x, self.n, axis=0))
        if c == 3 and self.n == 1:
            return _update(data, x.mean(axis=0, keepdims=True, dtype=np.float32))
        raise ValueError(f"cannot bring {c} channels to {self.n}")


class ZeroCentre:
    """x → (x − mean) / std: the tiny ViT needs zero-centred inputs to see lesions against the background.

    ``per_image``: the image's own mean and std instead of the fixed (0.5, 0.25). A fixed shift leaves
    MR/CT with much dark background at mean ≈ −1; standardising each image lifted the tiny model's modality
    accuracy on MedMD-synth from 0.50 to 0.88 after 300 steps (same seed, same batches).
    """

    def __init__(self, mean: float = 0.5, std: float = 0.25, per_image: bool = False) -> None:
        if std <= 0:
            raise ValueError(f"std must be positive, got {std}")
        self.mean, self.std, self.per_image = mean, std, per_image

    def __call__(self, data: Data) -> Data:
        x = data["image"]
        mean, std = (float(np.mean(x)), float(np.std(x))) if self.per_image else (self.mean, self.std)
        std = std if std > 1e-6 else 1.0  # a constant image stays finite (zeros)
        y = np.subtract(x, np.float32(mean), dtype=np.float32)
        y *= np.float32(1.0 / std)
        return _update(data, y, zero_centre={"mean": mean, "std": std})


class RandomResizedCrop:
    """Train-only: crop a random in-plane box (area ∈ ``scale``, aspect ∈ ``ratio``), resize it back to H×W.

    The same box is used for every slice and channel. Randomness comes from ``data["rng"]`` if present, else
    from the constructor's ``rng`` (seed it for reproducible epochs).
    """

    def __init__(self, scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                 rng: np.random.Generator | None = None) -> None:
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"bad crop scale {scale} or ratio {ratio}")
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.rng = rng if rng is not None else np.random.default_rng()

    def box(self, H: int, W: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, h, w), as torchvision's RandomResizedCrop draws it."""
        area = H * W
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= W and 0 < h <= H:
                return int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w
        # no draw fitted: the centred box of the closest allowed aspect
        aspect = min(max(W / H, self.ratio[0]), self.ratio[1])
        w, h = (W, round(W / aspect)) if aspect > W / H else (round(H * aspect), H)
        h, w = min(h, H), min(w, W)
        return (H - h) // 2, (W - w) // 2, h, w

    def __call__(self, data: Data) -> Data:
        x = data["image"]
        _, H, W, _ = x.shape
        rng = data.get("rng") if data.get("rng") is not None else self.rng
        top, left, h, w = self.box(H, W, rng)
        crop = x[:, top:top + h, left:left + w, :]
        return _update(data, _resize_in_plane(crop, H, W), crop=(top, left, h, w))


class RandomAffine2D:
    """Train-only: a small in-plane rotation (± ``degrees``) and shift (± ``translate`` of H and W).

    Chest films are taken with the patient a little turned or off-centre; the label never depends on that, so
    the model should not either. One transform for every slice and channel; borders repeat the edge pixels
    (zeros would draw a frame that no real image has). ``C×H×W×D`` in and out.
    """

    def __init__(self, degrees: float = 0.0, translate: float = 0.0, rng: np.random.Generator | None = None) -> None:
        if degrees < 0 or not 0 <= translate < 1:
            raise ValueError(f"bad rotation {degrees} or translation {translate}")
        self.degrees, self.translate = float(degrees), float(translate)
        self.rng = rng if rng is not None else np.random.default_rng()

    def __call__(self, data: Data) -> Data:
        rng = data.get("rng") if data.get("rng") is not None else self.rng
        angle = math.radians(rng.uniform(-self.degrees, self.degrees))
        tx, ty = (rng.uniform(-self.translate, self.translate) * 2 for _ in range(2))  # grid units: [-1, 1]
        if angle == 0 and tx == 0 and ty == 0:
            return data
        x = data["image"]
        C, H, W, D = x.shape
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(3, 0, 1, 2).reshape(D * C, 1, H, W)
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=t.dtype).expand(D * C, 2, 3)
        grid = F.affine_grid(theta, list(t.shape), align_corners=False)
        y = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
        y = y.reshape(D, C, H, W).permute(1, 2, 3, 0).contiguous().numpy()
        return _update(data, y, affine={"degrees": math.degrees(angle), "shift": (tx / 2, ty / 2)})


class RandomIntensity:
    """Train-only: contrast × U(1 − ``contrast``, 1 + ``contrast``), then + U(± ``brightness``).

    Exposure and processing differ between X-ray machines. Runs on the (zero-centred) tensor, so
    ``brightness`` is in its units (after :class:`ZeroCentre`, 1.0 is a quarter of the [0, 1] range).
    """

    def __init__(self, contrast: float = 0.0, brightness: float = 0.0, rng: np.random.Generator | None = None) -> None:
        if not 0 <= contrast < 1 or brightness < 0:
            raise ValueError(f"bad contrast {contrast} or brightness {brightness}")
        self.contrast, self.brightness = float(contrast), float(brightness)
        self.rng = rng if rng is not None else np.random.default_rng()

    def __call__(self, data: Data) -> Data:
        rng = data.get("rng") if data.get("rng") is not None else self.rng
        a = rng.uniform(1 - self.contrast, 1 + self.contrast)
        b = rng.uniform(-self.brightness, self.brightness)
        y = np.multiply(data["image"], np.float32(a), dtype=np.float32)
        y += np.float32(b)
        return _update(data, y, intensity={"contrast": float(a), "brightness": float(b)})


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[Data], Data]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, data: Data) -> Data:
        for t in self.transforms:
            data = t(data)
        return data

    def __len__(self) -> int:
        return len(self.transforms)


@dataclass
class TransformConfig:
    """What preprocessing does. ``key()`` hashes the fields that shape the cached tensor."""

    image_size: int = 64
    depth_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    normalize: str = "auto"
    ct_window: tuple[float, float] = (-1000.0, 1000.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    channels: int = 3
    zero_centre: bool = True
    standardize: bool = False  # zero-centre with each image's own mean/std (see ZeroCentre)
    augment: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    # Further train-only augmentation, off by default (see RandomAffine2D / RandomIntensity).
    rotate_degrees: float = 0.0
    translate: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0

    def __post_init__(self) -> None:
        # Hydra hands lists; tuples of floats keep key() the same for [-1000, 1000] and (-1000.0, 1000.0)
        self.depth_buckets = tuple(int(b) for b in self.depth_buckets)
        self.ct_window = (float(self.ct_window[0]), float(self.ct_window[1]))
        self.percentiles = (float(self.percentiles[0]), float(self.percentiles[1]))
        self.crop_scale = (float(self.crop_scale[0]), float(self.crop_scale[1]))
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize {self.normalize!r} is not one of {NORMALIZE_MODES}")

    def key(self) -> str:
        """Stable hash of the deterministic (cached) part of the config.

        The augmentation fields are left out on purpose: augmentation runs after the cache, so a sweep over
        them reuses the cached tensors. ``channels`` is left out too: replication also runs after the cache.
        """
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in AFTER_CACHE}
        text = json.dumps({**d, "version": PREPROCESS_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


AFTER_CACHE = ("augment", "crop_scale", "channels", "rotate_degrees", "translate", "contrast", "brightness")


def deterministic_transforms(cfg: TransformConfig) -> Compose:
    """normalise → resize → depth bucket → zero-centre: the cached part (still 1 or 3 channels)."""
    ts: list[Callable[[Data], Data]] = [
        Normalize(cfg.normalize, cfg.ct_window, cfg.percentiles), Resize(cfg.image_size),
        DepthBucket(cfg.depth_buckets)]
    if cfg.zero_centre:
        ts.append(ZeroCentre(per_image=cfg.standardize))
    return Compose(ts)


def checkpoint_transform(model_dir: str | Path, image_size: int) -> TransformConfig:
    """The evaluation transform of a checkpoint: the deterministic part it was trained with (``radfm.json``
    ``transform``, written by training), no augmentation; older checkpoints get the defaults."""
    meta_path = Path(model_dir) / "radfm.json"
    saved = json.loads(meta_path.read_text()).get("transform") if meta_path.is_file() else None
    if not saved:
        return TransformConfig(image_size=image_size, augment=False)
    known = {f.name for f in fields(TransformConfig)}
    return TransformConfig(**{k: v for k, v in saved.items() if k in known and k not in AFTER_CACHE},
                           augment=False)


def tail_transforms(cfg: TransformConfig, train: bool, rng: np.random.Generator | None = None) -> Compose:
    """After the cache: train-only augmentation (random per epoch), then channel replication."""
    ts: list[Callable[[Data], Data]] = []
    if train and cfg.augment:
        if cfg.rotate_degrees or cfg.translate:
            ts.append(RandomAffine2D(cfg.rotate_degrees, cfg.translate, rng=rng))
        ts.append(RandomResizedCrop(cfg.crop_scale, rng=rng))
        if cfg.contrast or cfg.brightness:
            ts.append(RandomIntensity(cfg.contrast, cfg.brightness, rng=rng))
    ts.append(ToChannels(cfg.channels))
    return Compose(ts)


def build_transforms(cfg: TransformConfig, train: bool, rng: np.random.Generator | None = None) -> Compose:
    """The whole chain on a data dict. Channels are replicated last: zero-centring and cropping commute with
    replication, and running them on one grey channel is 3× cheaper (and the cache 3× smaller)."""
    return Compose(deterministic_transforms(cfg).transforms + tail_transforms(cfg, train, rng).transforms)


def _run(ts: Compose, data: Data, sample_id: str | None, path: str | Path) -> Data:
    try:
        return ts(data)
    except SampleError:
        raise
    except (ValueError, RuntimeError) as exc:
        raise SampleError(sample_id, str(path), f"preprocessing failed: {exc}") from exc


def preprocess(path: str | Path, cfg: TransformConfig, sample_id: str | None = None,
               cache: TensorCache | None = None, train: bool = False,
               rng: np.random.Generator | None = None, *, allow_constant: bool = False,
               limits: ImageLimits | None = None) -> torch.Tensor:
    """One image or scan → float32 tensor ``channels×image_size×image_size×D`` (D a bucket, or 1 for 2D).

    read (header checked against ``limits``, None: the defaults) → normalise, resize, depth, zero-centre (cached
    by file content + ``cfg.key()``) → train-only augmentation (after the cache, so it differs every epoch) →
    channels. The limits are not part of the cache key: they guard the decode, and a cached entry is already
    small.
    """

    def compute() -> np.ndarray:
        img = read_image(path, sample_id, allow_constant=allow_constant, limits=limits)
        data = {"image": img.array, "meta": {**img.meta, "modality": img.modality, "spacing": img.spacing}}
        return _run(deterministic_transforms(cfg), data, sample_id, path)["image"]

    try:
        arr = cache.get_or_compute(path, cfg.key(), compute) if cache is not None else compute()
    except SampleError as err:
        if err.sample_id is not None:
            raise
        # the cache hashes a remote file before reading it, and knows no sample: name it here
        raise SampleError(sample_id, err.file, err.reason) from err.__cause__
    out = _run(tail_transforms(cfg, train), {"image": arr, "meta": {}, "rng": rng}, sample_id, path)["image"]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))
