"""The MedMNIST importer: a MedMNIST ``.npz`` → PNG / NIfTI files and diagnosis (and modality) samples in the
official splits."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data import prompts
from radfm.data.errors import Quarantine, SampleError
from radfm.data.importers.run import _Run, _write_nifti, _write_png
from radfm.data.manifest import SPLITS, Sample, _validate_row


@dataclass(frozen=True)
class MedMNISTInfo:
    labels: dict[int, str]
    modality: str | None = None
    subject: str = "image"


MEDMNIST: dict[str, MedMNISTInfo] = {
    "pneumoniamnist": MedMNISTInfo({0: "normal", 1: "pneumonia"}, modality="X-ray", subject="chest X-ray"),
}


def _medmnist_name(npz_path: Path) -> str:
    return re.sub(r"_\d+$", "", npz_path.name.split(".")[0].lower())


def ingest_medmnist(
    npz_path: str | Path,
    out_root: str | Path,
    name: str | None = None,
    task_labels: dict[int, str] | None = None,
    max_per_split: int | None = None,
    *,
    modality_samples: bool = False,
    modality: str | None = None,
    on_error: str = "raise",
    manifest_path: str | Path | None = None,
) -> tuple[list[Sample], Quarantine]:
    """A MedMNIST ``.npz`` (``{train,val,test}_images`` N×H×W, N×H×W×3 or 3D N×D×H×W, ``*_labels``) →
    PNG / NIfTI files and diagnosis samples in the official splits.

    ``name`` (default: from the file name, ``pneumoniamnist_224.npz`` → ``pneumoniamnist``) picks the label
    names; ``task_labels`` overrides them (else ``class k``). A binary set with a ``normal`` class gets a
    yes/no question ("Is there pneumonia in this chest X-ray?"), a multi-class set a closed question over the
    names, a multi-label set an open list of findings. ``modality_samples`` adds a modality question per
    image. ``max_per_split`` keeps the first N of each split. Rows are images: a bad image quarantines all of
    its samples at once.
    """
    npz_path = Path(npz_path)
    name = (name or _medmnist_name(npz_path)).lower()
    info = MEDMNIST.get(name)
    names = {int(k): str(v) for k, v in (task_labels or (info.labels if info else {})).items()}
    modality = modality or (info.modality if info else None)
    if modality_samples and not modality:
        raise ValueError(f"modality_samples needs the modality of {name}: pass modality='X-ray' (or CT, MRI…)")
    subject = info.subject if info else "image"
    run = _Run(name, out_root, manifest_path, on_error, "ingest")
    with np.load(npz_path, allow_pickle=False) as npz:
        present = [s for s in SPLITS if f"{s}_images" in npz.files]
        if not present:
            raise ValueError(f"{npz_path} has no train_images/val_images/test_images arrays "
                             f"(found {npz.files}); is it a MedMNIST file?")
        if not names:  # unknown set: name every class that occurs, so closed questions share one choice list
            names = {k: f"class {k}" for k in _classes_found(npz, present)}
        for split in present:
            images, labels = npz[f"{split}_images"], npz.get(f"{split}_labels")
            if labels is None or len(labels) != len(images):
                raise ValueError(f"{npz_path}: {split}_labels is missing or does not match {split}_images in length")
            labels = labels.reshape(len(labels), -1)
            is_3d = name.endswith("3d") or images.ndim == 5 or (images.ndim == 4 and images.shape[-1] not in (1, 3))
            n = len(images) if max_per_split is None else min(len(images), max_per_split)
            for i in range(n):
                run.row(lambda split=split, i=i, img=images[i], lab=labels[i], is_3d=is_3d: _medmnist_row(
                    run, npz_path, name, split, i, img, lab, is_3d, names, subject, modality_samples, modality))
    return run.finish()


def _medmnist_row(run: _Run, npz_path: Path, name: str, split: str, i: int, img: np.ndarray, lab: np.ndarray,
                  is_3d: bool, names: dict[int, str], subject: str, modality_samples: bool,
                  modality: str | None) -> list[Sample]:
    sid = f"{run.slug}-{split}-{i:05d}"
    where = f"{npz_path.name} {split}[{i}]"
    file = f"{npz_path}:{split}_images[{i}]"
    if img.dtype not in (np.uint8, np.uint16):
        raise SampleError(sid, file, f"{where}: pixels are {img.dtype}; MedMNIST images are uint8")
    rel = f"images/{run.slug}/{split}/{i:05d}" + (".nii.gz" if is_3d else ".png")
    question, answer, labels, choices, extra = _medmnist_answer(
        lab, names, subject, sid, f"{npz_path}:{split}_labels[{i}]", where)
    meta: dict[str, Any] = {"dataset": name, **extra}
    ref = {"path": rel, "kind": "3d" if is_3d else "2d"}
    rows = [{"id": sid, "task": "diagnosis", "split": split, "question": question, "answer": answer,
             "images": [ref], "source": name, "labels": labels, "choices": choices, "meta": meta}]
    if modality_samples:
        rows.append({"id": f"{sid}-modality", "task": "modality", "split": split,
                     "question": prompts.render("modality", None), "answer": modality, "images": [ref],
                     "source": name, "meta": {"dataset": name, "template": "modality"}})
    samples = [_validate_row(r, where) for r in rows]
    for s in samples:
        run.check_id(s.id, file, where)
    dest = run.out_root / rel
    try:
        if is_3d:
            vol = img[..., 0] if img.ndim == 4 else img
            _write_nifti(np.transpose(vol, (1, 2, 0)), dest, (1.0, 1.0, 1.0))  # D×H×W → H×W×D
        else:
            _write_png(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img, dest)
    except (OSError, ValueError, TypeError) as exc:
        raise SampleError(sid, file, f"{where}: could not write {rel} ({exc})") from exc
    return run.claim(samples)


def _classes_found(npz: Any, present: list[str]) -> list[int]:
    """Every single-label class that occurs in the file's splits, sorted."""
    found = set()
    for split in present:
        lab = npz.get(f"{split}_labels")
        if lab is not None and lab.ndim <= 2 and (lab.ndim == 1 or lab.shape[1] == 1):
            found.update(int(k) for k in np.ravel(lab) if int(k) >= 0)
    return sorted(found)


def _medmnist_answer(lab: np.ndarray, names: dict[int, str], subject: str, sid: str, label_file: str,
                     where: str) -> tuple[str, str, list[str], list[str] | None, dict[str, Any]]:
    """An image's label(s) → question, answer, labels, choices and what ``meta`` records beside the dataset."""
    meta: dict[str, Any] = {}
    if lab.size > 1:  # multi-label: one 0/1 per class
        found = [names.get(k, f"class {k}") for k in np.flatnonzero(lab)]
        question, answer, labels, choices = prompts.render("diagnosis", None), ", ".join(found) or "No abnormality.", found, None
        meta.update(template="diagnosis", label=[int(x) for x in lab])
    else:
        k = int(lab[0])
        if k < 0 or (names and k not in names):
            raise SampleError(sid, label_file,
                              f"{where}: label {k} is not one of {sorted(names)}; pass task_labels")
        label_name = names.get(k, f"class {k}")
        meta["label"] = k
        normal = [c for c, v in names.items() if v.lower() == "normal"]
        if len(names) == 2 and normal:
            finding = next(v for c, v in names.items() if c != normal[0])
            question = f"Is there {finding} in this {subject}?"
            answer, choices = ("yes" if k != normal[0] else "no"), ["yes", "no"]
            labels = [finding] if k != normal[0] else []
            meta.update(template="yesno", slots={"finding": finding})
        else:
            options = [names[c] for c in sorted(names)] or [label_name]
            question = f"Which of the following does this {subject} show: {', '.join(options)}?"
            answer, choices = label_name, options
            labels = [] if label_name.lower() == "normal" else [label_name]
    return question, answer, labels, choices, meta
