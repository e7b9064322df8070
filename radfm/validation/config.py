"""Thresholds of the validation suites: a dataclass, read from YAML (``conf/validation/default.yaml``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from radfm.data.manifest import SPLITS, TASKS

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "validation" / "default.yaml"
# RadFM's depth buckets (radfm.data.transforms.DEFAULT_BUCKETS); repeated here because importing the
# transforms pulls in torch, which would double the start-up time of `radfm validate`.
DEFAULT_BUCKETS: tuple[int, ...] = tuple(range(4, 65, 4))
# Check names that `strict` may hold (each maps to one expectation of a suite).
CHECKS = (
    "schema_columns", "schema_valid", "required_fields", "allowed_tasks", "allowed_splits", "unique_ids",
    "question_length", "answer_length", "answer_content", "answer_placeholder", "images_per_sample",
    "images_exist", "no_group_overlap", "class_balance", "image_readable", "image_finite", "image_channels",
    "image_height", "image_width", "depth_2d", "depth_3d", "intensity_min", "intensity_max",
    "intensity_span", "spacing_present", "spacing_range",
)


def _pair(value: Any, name: str, cast: type = float) -> tuple[Any, Any]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"validation config: {name} must be a [low, high] pair, got {value!r}")
    lo, hi = (None if v is None else cast(v) for v in value)
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"validation config: {name} has low {lo} above high {hi}")
    return lo, hi


@dataclass
class ValidationConfig:
    """Every threshold the manifest and image suites use (see ``conf/validation/default.yaml``)."""

    mostly: float = 0.99
    strict: tuple[str, ...] = ("required_fields", "schema_valid", "allowed_tasks", "allowed_splits", "unique_ids",
                               "answer_content", "answer_placeholder", "no_group_overlap")
    tasks: tuple[str, ...] = TASKS
    splits: tuple[str, ...] = SPLITS
    question_length: tuple[int, int] = (1, 2000)
    answer_length: tuple[int, int] = (1, 8000)
    placeholder_answers: tuple[str, ...] = ("", "na", "nan", "null", "tbd", "todo", "xxx")
    images_per_sample: tuple[int, int] = (1, 32)
    group_keys: tuple[str, ...] = ("meta.patient_id", "meta.patient", "meta.study_id", "meta.study",
                                   "meta.scene_id", "image")
    balance_answers: tuple[str, ...] = ("yes", "no")
    balance_min_share: float = 0.2
    balance_min_rows: int = 20
    depth_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    channels: tuple[int, ...] = (1, 3)
    image_size: tuple[int, int] = (8, 4096)
    intensity_range: tuple[float, float] = (-4096.0, 65535.0)
    spacing_range_mm: tuple[float, float] = (0.01, 50.0)
    max_images: int | None = None
    seed: int = 0
    max_offending: int = 20

    def __post_init__(self) -> None:
        if not 0.0 < float(self.mostly) <= 1.0:
            raise ValueError(f"validation config: mostly must lie in (0, 1], got {self.mostly}")
        self.mostly = float(self.mostly)
        unknown = sorted(set(self.strict) - set(CHECKS))
        if unknown:
            raise ValueError(f"validation config: strict names unknown checks {unknown}; known: {', '.join(CHECKS)}")
        self.strict = tuple(self.strict)
        self.tasks, self.splits = tuple(self.tasks), tuple(self.splits)
        self.question_length = _pair(self.question_length, "question_length", int)
        self.answer_length = _pair(self.answer_length, "answer_length", int)
        self.images_per_sample = _pair(self.images_per_sample, "images_per_sample", int)
        self.image_size = _pair(self.image_size, "image_size", int)
        self.intensity_range = _pair(self.intensity_range, "intensity_range")
        self.spacing_range_mm = _pair(self.spacing_range_mm, "spacing_range_mm")
        self.placeholder_answers = tuple(str(a).lower() for a in self.placeholder_answers)
        self.group_keys = tuple(self.group_keys)
        bad = [k for k in self.group_keys if k != "image" and not k.startswith("meta.")]
        if bad:
            raise ValueError(f"validation config: group_keys {bad} must be 'meta.<key>' or 'image'")
        self.balance_answers = tuple(str(a).lower() for a in self.balance_answers)
        if not 0.0 <= float(self.balance_min_share) <= 0.5:
            raise ValueError(f"validation config: balance_min_share must lie in [0, 0.5], got {self.balance_min_share}")
        self.depth_buckets = tuple(sorted(int(b) for b in self.depth_buckets))
        if not self.depth_buckets or self.depth_buckets[0] < 1:
            raise ValueError(f"validation config: depth_buckets must be positive, got {self.depth_buckets}")
        self.channels = tuple(int(c) for c in self.channels)
        if self.max_images is not None and int(self.max_images) < 1:
            raise ValueError(f"validation config: max_images must be a positive count or null, got {self.max_images}")

    def mostly_for(self, check: str) -> float:
        """The ``mostly`` of one check: 1.0 for the strict ones, the configured share for the rest."""
        return 1.0 if check in self.strict else self.mostly

    def with_mostly(self, mostly: float) -> ValidationConfig:
        """A copy where every expectation, strict ones included, uses ``mostly`` (the CLI's ``--mostly``)."""
        return ValidationConfig.from_dict({**self.to_dict(), "mostly": mostly, "strict": ()})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> ValidationConfig:
        """Build from a mapping; an unknown key is an error (a typo must not silently keep a default)."""
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"validation config: unknown keys {unknown}; known: {', '.join(sorted(names))}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ValidationConfig:
        """Read a YAML mapping of thresholds (keys as in ``conf/validation/default.yaml``)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"validation config {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"validation config {path}: expected a mapping of thresholds, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def default(cls) -> ValidationConfig:
        """``conf/validation/default.yaml`` when the source tree holds it, the dataclass defaults otherwise."""
        return cls.from_yaml(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else cls()
