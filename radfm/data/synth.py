"""MedMD-synth: the embedded default dataset — phantoms whose answers are visible in the pixels.

``generate(cfg, out_dir)`` writes ``images/`` (2D PNG, 3D NIfTI), ``manifest.jsonl`` (all five RadFM
tasks), ``scenes.jsonl`` (the ground-truth scene per image), ``baselines.json`` (blind baselines from
:mod:`radfm.eval.baselines`: what a model scores without looking) and ``pixel_probe.json`` (a linear probe
on downsampled pixels: proof each visual answer is in the image), and the question profile beside the
manifest (``manifest.profile.json``, :mod:`radfm.data.profile`). ``n_samples`` counts images; each image
yields one row per question family in ``task_mix``. Splits are by image, so no test image is seen in
training. Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radfm.data.manifest import ImageRef, Sample, write_manifest
from radfm.data.profile import write_profile
from radfm.data.prompts import image_position, render
from radfm.data.synth_scene import (
    FINDING_TYPES,
    MIX_2D,
    MIX_3D,
    MODALITIES,
    PLANES,
    PROTOCOLS,
    SIZES,
    VARIANTS,
    Difficulty,
    Lesion,
    Scene,
    sample_scene,
)
from radfm.data.synth_scene import render as render_scene
from radfm.eval.baselines import baselines, majority
from radfm.progress import track

SOURCE = "medmd-synth"
# Question family -> manifest task. "location" rows are closed (left/right) or open ("right upper").
FAMILY_TASK = {"modality": "modality", "plane": "vqa", "yesno": "diagnosis", "diagnosis": "diagnosis",
               "location": "vqa", "size": "vqa", "count": "vqa", "report": "report", "rationale": "rationale"}
DEFAULT_TASK_MIX = {family: 1.0 for family in FAMILY_TASK}
CHOICES = {"modality": list(MODALITIES), "plane": list(PLANES), "yesno": ["yes", "no"],
           "location": ["left", "right"], "size": list(SIZES), "count": ["0", "1", "2"]}
ARTICLE = {"nodule": "a nodule", "mass": "a mass", "effusion": "an effusion", "fracture": "a fracture",
           "cyst": "a cyst"}
NORMAL = "no abnormality"


@dataclass
class SynthConfig:
    """What to generate. ``variant`` sets lesion size, contrast and noise; explicit values override it.

    ``n_samples`` counts images. ``task_mix`` maps a question family to the chance it is asked of an image
    (families left out are not asked); it never changes the images, which have their own random stream.
    """

    n_samples: int = 600
    seed: int = 0
    variant: str = "easy"
    image_size: int = 64
    depth: int = 16
    frac_3d: float = 0.5
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    task_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TASK_MIX))
    lesion_size: tuple[float, float, float] | None = None
    contrast: float | None = None
    noise: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"variant {self.variant!r} must be one of {sorted(VARIANTS)}")
        if self.n_samples < 1 or self.image_size < 16 or self.depth < 1:
            raise ValueError("n_samples >= 1, image_size >= 16 and depth >= 1 are needed")
        if not 0.0 <= self.frac_3d <= 1.0:
            raise ValueError(f"frac_3d {self.frac_3d} must lie in [0, 1]")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or sum(self.split_fractions) <= 0:
            raise ValueError(f"split_fractions {self.split_fractions} must be three non-negative numbers")
        unknown = set(self.task_mix) - set(FAMILY_TASK)
        if unknown:
            raise ValueError(f"task_mix has unknown families {sorted(unknown)}; known: {sorted(FAMILY_TASK)}")

    def difficulty(self) -> Difficulty:
        base = VARIANTS[self.variant]
        return Difficulty(tuple(self.lesion_size or base.lesion_size),  # type: ignore[arg-type]
                          base.contrast if self.contrast is None else self.contrast,
                          base.noise if self.noise is None else self.noise)


def _choose(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _splits(cfg: SynthConfig) -> list[str]:
    """Split per image from a permutation of the image indices (by image, never by question)."""
    n = cfg.n_samples
    fr = np.asarray(cfg.split_fractions, dtype=float) / sum(cfg.split_fractions)
    n_train = int(round(fr[0] * n))
    n_val = min(n - n_train, int(round(fr[1] * n)))
    order = np.random.default_rng([cfg.seed, 1]).permutation(n)
    out = [""] * n
    for rank, idx in enumerate(order):
        out[idx] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def _write_image(arr: np.ndarray, scene: Scene, path: Path, image_size: int) -> None:
    if arr.ndim == 2:
        from PIL import Image

        Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L").save(path)
        return
    import nibabel as nib

    dx, dy, dz = scene.spacing(image_size)
    # Columns of the affine map (row, column, slice) to RAS+ mm. Rows run posterior (axial) or inferior,
    # columns run to the patient's left (image right) or posterior (sagittal).
    cols = {"axial": ((0, -dy, 0), (-dx, 0, 0), (0, 0, dz)),
            "coronal": ((0, 0, -dy), (-dx, 0, 0), (0, dz, 0)),
            "sagittal": ((0, 0, -dy), (0, -dx, 0), (dz, 0, 0))}[scene.plane or "axial"]
    affine = np.eye(4)
    affine[:3, :3] = np.array(cols, dtype=float).T
    affine[:3, 3] = -affine[:3, :3] @ (np.array(arr.shape) / 2.0)
    img = nib.Nifti1Image(arr.astype(np.float32), affine)
    img.set_data_dtype(np.int16)  # stored as int16 with a scale slope; get_fdata() gives back [0, 1]
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def _rows(scene: Scene, split: str, rel_path: str, cfg: SynthConfig, rng: random.Random,
          balance: Counter) -> list[Sample]:
    """One row per question family the image supports (and ``task_mix`` keeps)."""
    spec = scene.spec
    types = [les.type for les in scene.lesions]
    findings = scene.findings()
    base_meta = {"scene_id": scene.scene_id, "findings": findings, "modality": spec.modality,
                 "plane": scene.plane, "body_part": spec.body_part}
    rows: list[Sample] = []

    def add(family: str, answer: str, slots: dict[str, str] | None = None, choices: list[str] | None = None,
            template: str | None = None, **extra: Any) -> None:
        template = template or family
        question = render(template, rng, **(slots or {}))
        meta = {**base_meta, "family": family, "template": template, "slots": slots or {},
                "answer_type": "closed" if choices else "open", **extra}
        rows.append(Sample(id=f"{scene.scene_id}-{family}", task=FAMILY_TASK.get(family, "vqa"), split=split,
                           question=question, answer=answer, choices=choices, labels=types, meta=meta,
                           source=SOURCE, images=[ImageRef(path=rel_path, kind=scene.kind,
                                                           position=image_position(rng))]))

    def wanted(family: str) -> bool:
        return rng.random() < cfg.task_mix.get(family, 0.0)

    if wanted("modality"):
        add("modality", spec.modality, choices=CHOICES["modality"])
    if scene.plane and wanted("plane"):
        add("plane", scene.plane, choices=CHOICES["plane"])
    if wanted("yesno"):
        absent = [t for t in spec.findings if t not in types]
        # Keep yes/no near 50/50, overall and per finding: answer "yes" when yes is behind, about the
        # present finding that most lacks positives ("no" likewise), ties broken at random.
        say_yes = bool(types) and (not absent or balance["yes"] <= balance["no"])
        lead = {t: balance[t, "yes"] - balance[t, "no"] for t in (types if say_yes else absent)}
        best = min(lead.values()) if say_yes else max(lead.values())
        finding = rng.choice([t for t, v in lead.items() if v == best])
        answer = "yes" if say_yes else "no"
        balance[answer] += 1
        balance[finding, answer] += 1
        add("yesno", answer, {"finding": ARTICLE[finding]}, CHOICES["yesno"], finding=finding)
    if wanted("diagnosis"):
        add("diagnosis", ", ".join(types) if types else NORMAL)
    sided = [les for les in scene.lesions if les.side]
    if sided and wanted("location"):
        les = rng.choice(sided)
        if rng.random() < 0.5:
            add("location", les.side, {"finding": les.type}, CHOICES["location"], finding=les.type)
        else:  # open: side and region, e.g. "right upper"
            add("location_open", f"{les.side} {les.region}", {"finding": les.type}, template="location_open",
                finding=les.type)
    if scene.lesions and wanted("size"):
        les = rng.choice(scene.lesions)
        add("size", les.size, {"finding": les.type}, CHOICES["size"], finding=les.type)
    if wanted("count"):
        add("count", str(len(types)), choices=CHOICES["count"])
    if wanted("report"):
        add("report", report(scene, rng))
    if wanted("rationale"):
        add("rationale", rationale(scene, rng))
    return rows


def generate(cfg: SynthConfig, out_dir: str | Path) -> Path:
    """Write MedMD-synth under ``out_dir``; returns the manifest path ``out_dir/manifest.jsonl``."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    diff = cfg.difficulty()
    splits = _splits(cfg)
    samples: list[Sample] = []
    scenes: list[dict[str, Any]] = []
    balance: Counter = Counter()
    for idx in track(range(cfg.n_samples), "MedMD-synth", unit="image", item="images"):
        # Pixels and text each have their own per-image stream, so an image does not depend on the others.
        rng = np.random.default_rng([cfg.seed, 0, idx])
        text_rng = random.Random(f"{SOURCE}:{cfg.seed}:{idx}")
        kind = "3d" if rng.random() < cfg.frac_3d else "2d"
        protocol = _choose(rng, MIX_3D if kind == "3d" else MIX_2D)
        plane = PLANES[int(rng.integers(3))] if PROTOCOLS[protocol].sectional else None
        scene_id = f"{cfg.variant}{cfg.seed}-{idx:05d}"
        scene = sample_scene(rng, scene_id, protocol, plane, kind, cfg.depth, diff)
        arr = render_scene(scene, cfg.image_size, rng)
        rel = f"images/{scene_id}.{'png' if kind == '2d' else 'nii.gz'}"
        _write_image(arr, scene, out / rel, cfg.image_size)
        samples.extend(_rows(scene, splits[idx], rel, cfg, text_rng, balance))
        scenes.append({"scene_id": scene_id, "image": rel, "split": splits[idx], "kind": kind,
                       "shape": list(arr.shape), "spacing": [round(s, 4) for s in scene.spacing(cfg.image_size)],
                       "modality": scene.spec.modality, "body_part": scene.spec.body_part, "plane": plane,
                       "protocol": protocol, "findings": scene.findings(),
                       "pose": [round(x, 4) for x in scene.pose],
                       "lesions": [{**{k: round(v, 4) if isinstance(v, float) else v
                                       for k, v in asdict(les).items()},
                                    **scene.lesion_pixels(les, cfg.image_size)} for les in scene.lesions]})
    manifest = out / "manifest.jsonl"
    write_manifest(samples, manifest)
    with open(out / "scenes.jsonl", "w") as f:
        for rec in scenes:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    config = {**asdict(cfg), "difficulty": asdict(diff)}
    _dump(out / "baselines.json", {"config": config, **baselines(samples)})
    _dump(out / "pixel_probe.json", {"config": config, **pixel_probe(out)})
    write_profile(manifest)  # the question profile every data set carries (radfm.data.profile)
    return manifest


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------- reports
# Several phrasings per sentence so that a constant report scores poorly; every positive sentence names
# one finding and its side, every negative one carries a negation cue, so ``report_findings`` parses both.
_POSITIVE = {
    "nodule": ["There is a {size} nodule in {where}.", "A {size} rounded nodule is seen in {where}.",
               "{Size} well-defined nodule in {where}.", "{Where} contains a {size} nodule."],
    "mass": ["There is a {size} mass in {where}.", "A {size} lobulated mass is seen in {where}.",
             "{Size} space-occupying mass in {where}."],
    "cyst": ["There is a {size} cyst in {where}.", "A {size} well-circumscribed cyst is seen in {where}.",
             "{Size} fluid-filled cyst in {where}."],
    "effusion": ["There is a {size} {side_}pleural effusion.", "A {size} {side_}effusion layers at the lung base.",
                 "{Size} {side_}pleural effusion is present."],
    "fracture": ["There is a {size} fracture of a {side_}{region_}rib.", "A {size} {side_}{region_}rib fracture is seen.",
                 "Cortical break of a {side_}{region_}rib, in keeping with a {size} fracture."],
}
_NEGATIVE = {
    "nodule": ["No pulmonary nodule.", "No nodule is seen.", "The lungs are clear of nodules."],
    "mass": ["No mass is seen.", "No mass lesion.", "There is no mass."],
    "cyst": ["No cyst.", "No cystic lesion is seen.", "There is no cyst."],
    "effusion": ["No pleural effusion.", "No effusion is seen.", "The costophrenic angles are sharp, with no effusion."],
    "fracture": ["No rib fracture.", "No fracture is seen.", "The ribs are intact, without fracture."],
}
_NORMAL = {
    "chest": ["The heart size is normal.", "The cardiomediastinal silhouette is within normal limits.",
              "The airways are patent."],
    "head": ["The ventricles are normal in size.", "Grey-white matter differentiation is preserved.",
             "The midline is not shifted."],
    "abdomen": ["The liver echotexture is homogeneous.", "The liver is normal in size.",
                "The visualised hepatic vessels are patent."],
}
_TECHNIQUE = {"CT": ["{Plane} CT of the {body}.", "CT images of the {body}, {plane} plane."],
              "MRI": ["{Plane} MRI of the {body}.", "MR images of the {body}, {plane} plane."],
              "X-ray": ["Frontal chest radiograph.", "PA view of the chest."],
              "Ultrasound": ["Ultrasound of the liver.", "Sonographic images of the right upper quadrant."]}
_LOBE = {"anterior": "frontal", "posterior": "occipital", "upper": "parietal", "lower": "temporal"}
_DX = {("chest", "nodule"): "pulmonary nodule", ("chest", "effusion"): "pleural effusion",
       ("chest", "fracture"): "rib fracture", ("head", "mass"): "brain tumour", ("head", "cyst"): "arachnoid cyst",
       ("abdomen", "mass"): "liver mass", ("abdomen", "cyst"): "simple liver cyst"}
_EVIDENCE = {"nodule": "a {size} round soft-tissue nodule in {where}",
             "effusion": "{size} dependent {side_}effusion at the lung base",
             "fracture": "a {size} lucent fracture line across a {side_}{region_}rib",
             "mass": "a {size} lobulated {bright} mass in {where}",
             "cyst": "a {size} round cyst of fluid {fluid} in {where}"}
_BRIGHT = {"CT": ("hyperdense", "density"), "MRI": ("hyperintense", "signal"),
           "Ultrasound": ("hyperechoic", "content, anechoic with posterior acoustic enhancement,")}


def _slots(scene: Scene, les: Lesion) -> dict[str, str]:
    body = scene.spec.body_part
    loc = " ".join(x for x in (les.side, les.region) if x)
    if body == "chest":
        where = f"the {loc} lung" if loc else "the lung"
    elif body == "head":
        where = " ".join(x for x in ("the", les.side, _LOBE.get(les.region or "", ""), "lobe") if x)
    else:
        where = "the liver"
    bright, fluid = _BRIGHT.get(scene.spec.modality, ("dense", "density"))
    return {"size": les.size, "Size": les.size.capitalize(), "where": where, "Where": where[0].upper() + where[1:],
            "side_": f"{les.side} " if les.side else "", "region_": f"{les.region} " if les.region else "",
            "bright": bright, "fluid": fluid}


def report(scene: Scene, rng: random.Random) -> str:
    """``FINDINGS: … IMPRESSION: …`` built from the scene, phrasing drawn at random."""
    spec = scene.spec
    present = {les.type for les in scene.lesions}
    tech = rng.choice(_TECHNIQUE[spec.modality]).format(plane=scene.plane or "", Plane=(scene.plane or "").capitalize(),
                                                        body=spec.body_part)
    positives = [rng.choice(_POSITIVE[les.type]).format(**_slots(scene, les)) for les in scene.lesions]
    negatives = [rng.choice(_NEGATIVE[t]) for t in spec.findings if t not in present]
    rng.shuffle(negatives)
    findings = " ".join([tech, *positives, *negatives, rng.choice(_NORMAL[spec.body_part])])
    if scene.lesions:
        name = {"effusion": "pleural effusion", "fracture": "rib fracture"}
        impression = "; ".join(" ".join(x for x in (les.size.capitalize(), les.side, les.region,
                                                      name.get(les.type, les.type)) if x) for les in scene.lesions)
    else:
        impression = rng.choice(["No acute abnormality", "Normal study", "No significant abnormality"])
    return f"FINDINGS: {findings} IMPRESSION: {impression}."


def rationale(scene: Scene, rng: random.Random) -> str:
    """``Diagnosis: X. Rationale: <the findings that support it>.``"""
    body = scene.spec.body_part
    if not scene.lesions:
        return f"Diagnosis: normal study. Rationale: no focal lesion is seen; {rng.choice(_NORMAL[body]).lower()}"
    dx = " and ".join(_DX[(body, les.type)] for les in scene.lesions)
    evidence = "; ".join(_EVIDENCE[les.type].format(**_slots(scene, les)) for les in scene.lesions)
    return f"Diagnosis: {dx}. Rationale: {evidence}."


_NEGATION = re.compile(r"\b(no|not|without|clear of|negative for)\b")


def report_findings(text: str) -> list[dict[str, str | None]]:
    """Finding types with their side mentioned in a report or rationale (clauses with a negation skipped)."""
    sides: dict[str, set[str | None]] = {}
    for clause in re.split(r"[.;:]", text.lower()):
        if _NEGATION.search(clause):
            continue
        for t in FINDING_TYPES:
            if re.search(rf"\b{t}", clause):
                side = "left" if re.search(r"\bleft\b", clause) else "right" if re.search(r"\bright\b", clause) else None
                sides.setdefault(t, set()).add(side)
    out = []
    for t in FINDING_TYPES:
        found = sides.get(t, set())
        for side in sorted(found - ({None} if found - {None} else set()), key=str):
            out.append({"type": t, "side": side})
    return out


# --------------------------------------------------------------------------------------- pixel probe
def _load(path: Path) -> np.ndarray:
    """The middle slice of a scan or the image itself, in [0, 1]."""
    if path.suffix == ".png":
        from PIL import Image

        return np.asarray(Image.open(path), dtype=np.float32) / 255.0
    import nibabel as nib

    vol = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)
    return vol[:, :, vol.shape[2] // 2]


def _features(img: np.ndarray, grid: int = 16) -> np.ndarray:
    """Block means on a ``grid``×``grid`` lattice (sizes that do not divide are cropped to fit)."""
    h, w = img.shape
    bh, bw = max(1, h // grid), max(1, w // grid)
    crop = img[: bh * grid, : bw * grid]
    return crop.reshape(grid, bh, grid, bw).mean(axis=(1, 3)).ravel()


def _probe_targets(scene: dict[str, Any]) -> dict[str, str]:
    targets = {"modality": scene["modality"]}
    if scene["plane"]:
        targets["plane"] = scene["plane"]
    present = {f["type"] for f in scene["findings"]}
    targets["lesion"] = "yes" if present else "no"
    for t in PROTOCOLS[scene["protocol"]].findings:
        targets[f"presence:{t}"] = "yes" if t in present else "no"
    sided = [f for f in scene["findings"] if f["side"]]
    if len(sided) == 1:
        targets["side"] = sided[0]["side"]
    return targets


STUDY_FAMILIES = ("modality", "plane")


def pixel_probe(out_dir: str | Path, grid: int = 16, C: float = 0.1) -> dict[str, Any]:
    """Per visual answer family: a logistic probe on ``grid``² pixel means (train→test) beside the majority.

    Study-level answers (modality, plane) are probed on the block means themselves. Finding answers are
    probed on each block's deviation from the mean train image of the same study type (protocol and
    plane, which the first two probes show are visible), with its magnitude: a lesion can sit in any of
    several places, and "abnormal anywhere" is linear in |deviation| but not in raw pixels.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = Path(out_dir)
    scenes = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines() if line.strip()]
    raw = {s["scene_id"]: _features(_load(out / s["image"]), grid) for s in scenes}
    group = {s["scene_id"]: (s["protocol"], s["plane"]) for s in scenes}
    normal = {}
    for g in sorted(set(group.values()), key=str):
        train = [raw[s["scene_id"]] for s in scenes if group[s["scene_id"]] == g and s["split"] == "train"]
        normal[g] = np.mean(train, axis=0) if train else None
    dev = {}
    for k, x in raw.items():
        d = x - normal[group[k]] if normal[group[k]] is not None else np.zeros_like(x)
        dev[k] = np.concatenate([d, np.abs(d)])
    labels = {s["scene_id"]: _probe_targets(s) for s in scenes}
    result: dict[str, Any] = {}
    pooled: list[tuple[np.ndarray, np.ndarray]] = []
    for fam in sorted({k for t in labels.values() for k in t}):
        feats = raw if fam in STUDY_FAMILIES else dev
        rows = [(s["scene_id"], s["split"]) for s in scenes if fam in labels[s["scene_id"]]]
        tr = [i for i, sp in rows if sp == "train"]
        te = [i for i, sp in rows if sp == "test"]
        y_tr = [labels[i][fam] for i in tr]
        y_te = np.array([labels[i][fam] for i in te])
        if not te or len(set(y_tr)) < 2:
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
        clf.fit(np.stack([feats[i] for i in tr]), y_tr)
        hits = clf.predict(np.stack([feats[i] for i in te])) == y_te
        maj_hits = y_te == majority(y_tr)
        result[fam] = {"probe": float(hits.mean()), "majority": float(maj_hits.mean()),
                       "n_train": len(tr), "n_test": len(te)}
        if fam.startswith("presence:"):
            pooled.append((hits, maj_hits))
    if pooled:  # every (image, finding type) test pair of the per-type probes: steadier than any one type
        result["presence"] = {"probe": float(np.concatenate([h for h, _ in pooled]).mean()),
                              "majority": float(np.concatenate([m for _, m in pooled]).mean()),
                              "n_test": int(sum(len(h) for h, _ in pooled))}
    return {"features": f"{grid}x{grid} block means of the (middle) slice; finding families: deviation "
                        "from the mean train image of the same protocol and plane, and its magnitude",
            "families": result}


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The command line of ``radfm synth`` (its own: ``radfm`` hands it everything after ``synth``)."""
    p = argparse.ArgumentParser(prog="radfm synth", description="generate MedMD-synth: 2D and 3D phantoms with "
                                "questions, answers, reports and labels, split train/val/test")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=600, help="number of images (each yields several questions)")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same data set")
    p.add_argument("--variant", choices=sorted(VARIANTS), default="easy",
                   help="difficulty: lesion size, contrast and noise")
    p.add_argument("--image-size", type=int, default=64, help="height and width of every image, in pixels")
    p.add_argument("--depth", type=int, default=16, help="slices of a 3D scan")
    p.add_argument("--frac-3d", type=float, default=0.5, help="fraction of the images that are 3D scans (0..1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``radfm synth --out DIR --n 600 --seed 0 --variant easy``."""
    args = build_parser().parse_args(argv)
    cfg = SynthConfig(n_samples=args.n, seed=args.seed, variant=args.variant, image_size=args.image_size,
                      depth=args.depth, frac_3d=args.frac_3d)
    t0 = time.perf_counter()
    manifest = generate(cfg, args.out)
    n_rows = len(manifest.read_text().splitlines()) - 1
    print(f"wrote {n_rows} rows over {cfg.n_samples} images to {manifest} in {time.perf_counter() - t0:.1f} s")
    probe = json.loads((Path(args.out) / "pixel_probe.json").read_text())["families"]
    for fam, v in probe.items():
        print(f"  probe {fam:20s} {v['probe']:.3f}  (majority {v['majority']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
