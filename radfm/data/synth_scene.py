"""MedMD-synth scenes: anatomical phantoms with lesions, rendered as 2D images or 3D volumes in [0, 1].

Geometry lives in normalised image coordinates (``u`` across, ``v`` down, ``w`` through the slab, each in
[-1, 1]) so one scene renders at any size; lesion radii are given in pixels at 64 px and scaled with it.
Radiological convention: the patient's right is on the image's left (``u < 0``) in axial, coronal and
frontal views; sagittal and ultrasound views carry no side.

Difficulty is three knobs. ``easy`` was sized from a prototype in which lesions inside one 8×8 patch at low
contrast were not learned in ten CPU minutes: lesions here span at least two patches (radius >= 6 px at
64 px), differ from the tissue around them by >= 0.5 and sit under little noise. ``hard`` is small, faint
and noisy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FINDING_TYPES = ("nodule", "mass", "effusion", "fracture", "cyst")
SIZES = ("small", "medium", "large")
MODALITIES = ("CT", "MRI", "X-ray", "Ultrasound")
PLANES = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class Difficulty:
    """Lesion radii (px at 64 px) for small/medium/large, lesion-to-tissue contrast, noise level."""

    lesion_size: tuple[float, float, float]
    contrast: float
    noise: float


VARIANTS: dict[str, Difficulty] = {
    "easy": Difficulty((6.0, 8.0, 10.0), 0.55, 0.02),
    "hard": Difficulty((2.5, 3.5, 4.5), 0.22, 0.06),
}


@dataclass(frozen=True)
class Protocol:
    """A kind of study: what it images, which findings it can show, its field of view and slice spacing."""

    modality: str
    body_part: str
    findings: tuple[str, ...]
    fov_mm: float
    slice_mm: float
    sectional: bool  # CT/MR: has a plane and may be 3D; radiographs and ultrasound are 2D only


PROTOCOLS: dict[str, Protocol] = {
    "ct_chest": Protocol("CT", "chest", ("nodule", "effusion"), 350.0, 5.0, True),
    "ct_head": Protocol("CT", "head", ("mass", "cyst"), 240.0, 4.0, True),
    "mr_head": Protocol("MRI", "head", ("mass", "cyst"), 240.0, 4.0, True),
    "xr_chest": Protocol("X-ray", "chest", ("nodule", "effusion", "fracture"), 400.0, 1.0, False),
    "us_abdomen": Protocol("Ultrasound", "abdomen", ("cyst", "mass"), 160.0, 1.0, False),
}
# Which protocols a 3D or a 2D item draws from (weights): 2D holds radiographs, ultrasound and single slices.
MIX_3D = {"ct_chest": 0.4, "ct_head": 0.2, "mr_head": 0.4}
MIX_2D = {"xr_chest": 0.4, "us_abdomen": 0.25, "ct_chest": 0.15, "ct_head": 0.05, "mr_head": 0.15}
# Lesions per image (0, 1, 2) by how many finding types a protocol has: each type is then present in about
# half (two types) or 42% (three types) of its images, so presence answers stay near balanced.
COUNT_P = {2: (0.3, 0.4, 0.3), 3: (0.2, 0.35, 0.45)}

# Cell centres (u for side, v for region) where lesions sit, per (body part, plane).
_CELLS: dict[tuple[str, str], tuple[dict[str, float], dict[str, float]]] = {
    ("chest", "axial"): ({"right": -0.42, "left": 0.42}, {"anterior": -0.2, "posterior": 0.18}),
    ("chest", "coronal"): ({"right": -0.4, "left": 0.4}, {"upper": -0.45, "lower": 0.05}),
    ("chest", "sagittal"): ({"": 0.02}, {"upper": -0.45, "lower": 0.1}),
    ("chest", "frontal"): ({"right": -0.42, "left": 0.42}, {"upper": -0.4, "lower": 0.12}),
    ("head", "axial"): ({"right": -0.3, "left": 0.3}, {"anterior": -0.42, "posterior": 0.42}),
    ("head", "coronal"): ({"right": -0.35, "left": 0.35}, {"upper": -0.45, "lower": 0.12}),
    ("head", "sagittal"): ({"": -0.15}, {"upper": -0.35, "lower": 0.15}),
    ("abdomen", "sector"): ({"a": -0.3, "b": 0.3}, {"": 0.1}),
}


@dataclass
class Lesion:
    """One finding: what, where (side/region words and centre), how big (class and radius)."""

    type: str
    side: str | None
    region: str | None
    size: str
    u: float
    v: float
    w: float
    r: float  # in-plane radius, normalised units
    rw: float = 0.0  # radius through the slab (normalised depth units); 0 for 2D
    rib: int = -1  # fractured rib index (X-ray)
    phase: float = 0.0  # lobulation phase of a mass

    def finding(self) -> dict[str, Any]:
        return {"type": self.type, "side": self.side, "region": self.region, "size": self.size}


@dataclass
class Scene:
    """Ground truth of one image: the protocol, its view and its lesions, plus the random pose."""

    scene_id: str
    protocol: str
    plane: str | None  # axial/coronal/sagittal for CT/MR; None for radiographs and ultrasound
    kind: str  # "2d" or "3d"
    depth: int
    difficulty: Difficulty
    lesions: list[Lesion] = field(default_factory=list)
    pose: tuple[float, float, float] = (0.0, 0.0, 1.0)  # shift u, shift v, scale

    @property
    def spec(self) -> Protocol:
        return PROTOCOLS[self.protocol]

    @property
    def view(self) -> str:
        """The geometric view used for anatomy: a plane, 'frontal' (radiograph) or 'sector' (ultrasound)."""
        return self.plane or ("frontal" if self.protocol == "xr_chest" else "sector")

    def findings(self) -> list[dict[str, Any]]:
        return [les.finding() for les in self.lesions]

    def lesion_pixels(self, les: Lesion, image_size: int) -> dict[str, Any]:
        """Where a lesion lies in the rendered array: centre (row, column, slice) and in-plane radius."""
        du, dv, sc = self.pose
        col = ((les.u * sc + du) + 1) / 2 * image_size - 0.5
        row = ((les.v * sc + dv) + 1) / 2 * image_size - 0.5
        sl = (les.w + 1) * (self.depth + 1) / 2 - 1  # slices sit at linspace(-1, 1, depth + 2)[1:-1]
        return {"center_px": [round(row, 2), round(col, 2), round(sl, 2)],
                "radius_px": round(les.r * sc * image_size / 2, 2)}

    def spacing(self, image_size: int) -> tuple[float, float, float]:
        d = self.spec.fov_mm / image_size
        return (d, d, self.spec.slice_mm)


def region_words(plane: str | None) -> tuple[str, str]:
    """In an axial view the vertical axis runs anterior→posterior, elsewhere upper→lower."""
    return ("anterior", "posterior") if plane == "axial" else ("upper", "lower")


def sample_scene(rng: np.random.Generator, scene_id: str, protocol: str, plane: str | None, kind: str,
                 depth: int, difficulty: Difficulty) -> Scene:
    """Draw pose and 0–2 lesions (at most one per type, each in its own side×region cell)."""
    spec = PROTOCOLS[protocol]
    scene = Scene(scene_id, protocol, plane, kind, depth if kind == "3d" else 1, difficulty,
                  pose=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04)),
                        float(rng.uniform(0.95, 1.05))))
    n = int(rng.choice(3, p=COUNT_P[len(spec.findings)]))
    types = sorted(rng.choice(spec.findings, size=n, replace=False).tolist(), key=FINDING_TYPES.index)
    us, vs = _CELLS[(spec.body_part, scene.view)]
    cells = [(s, r) for s in us for r in vs]
    base = region_words(plane)[1]
    # Effusion is dependent fluid, so its region is fixed; it claims its cell before the others choose.
    types.sort(key=lambda t: t != "effusion")
    for t in types:
        free = [c for c in cells if t != "effusion" or c[1] == base]
        s, reg = free[int(rng.integers(len(free)))]
        cells.remove((s, reg))
        size_i = int(rng.integers(3))
        r = difficulty.lesion_size[size_i] * float(rng.uniform(0.93, 1.07)) / 32.0
        les = Lesion(t, s if s in ("left", "right") else None, reg or None, SIZES[size_i],
                     us[s] + float(rng.uniform(-0.05, 0.05)), vs[reg] + float(rng.uniform(-0.05, 0.05)),
                     0.0, r, phase=float(rng.uniform(0, 2 * np.pi)))
        if spec.body_part == "abdomen":  # ultrasound: lesions anywhere in the upper two-thirds of the fan
            les.v = float(rng.uniform(-0.15, 0.35))
        if t == "fracture":  # a lateral rib fracture: the gap sits over the outer third of the lung field
            les.rib = 1 if reg == "upper" else 2
            les.u = us[s] + (-0.19 if s == "right" else 0.19) + float(rng.uniform(-0.04, 0.04))
        if scene.kind == "3d":
            # Radius through the slab from the same physical radius; centred near the middle slices so
            # the middle slice (what the probe and a 2D reader see) cuts through every easy lesion.
            radius_mm = r * spec.fov_mm / 2
            les.rw = radius_mm / spec.slice_mm / (scene.depth / 2)
            les.w = float(rng.uniform(-1, 1)) * max(0.0, 0.9 - les.rw) * 0.5
        scene.lesions.append(les)
    scene.lesions.sort(key=lambda les: FINDING_TYPES.index(les.type))
    return scene


# ---------------------------------------------------------------------------------------------- drawing
def _ell(U: np.ndarray, V: np.ndarray, cu: float, cv: float, ru: float, rv: float, px: float) -> np.ndarray:
    """Soft (about one pixel wide edge) ellipse mask in [0, 1].

    ``U`` varies along columns only and ``V`` along rows only (increasing), so a fixed-size ellipse is
    computed inside its bounding box: rendering is dominated by many small shapes.
    """
    if np.ndim(ru) == 0:
        out = np.zeros_like(U)
        c0, c1 = np.searchsorted(U[0], [cu - ru - px, cu + ru + px])
        r0, r1 = np.searchsorted(V[:, 0], [cv - rv - px, cv + rv + px])
        if c1 > c0 and r1 > r0:
            out[r0:r1, c0:c1] = _ell_full(U[r0:r1, c0:c1], V[r0:r1, c0:c1], cu, cv, ru, rv, px)
        return out
    return _ell_full(U, V, cu, cv, ru, rv, px)


def _ell_full(U, V, cu, cv, ru, rv, px):
    d = np.sqrt(((U - cu) / ru) ** 2 + ((V - cv) / rv) ** 2)
    return np.clip((1.0 - d) * np.minimum(ru, rv) / px + 0.5, 0.0, 1.0)


def _dots(U: np.ndarray, V: np.ndarray, centres: np.ndarray, ru: float, rv: float, px: float) -> np.ndarray:
    """Union of equal small ellipses at ``centres`` (k×2, u and v) in one array operation."""
    d = np.sqrt(((U[None] - centres[:, 0, None, None]) / ru) ** 2 + ((V[None] - centres[:, 1, None, None]) / rv) ** 2)
    return np.clip((1.0 - d.min(axis=0)) * min(ru, rv) / px + 0.5, 0.0, 1.0)


def _paint(img: np.ndarray, mask: np.ndarray, value: float) -> None:
    img += mask * (value - img)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (no SciPy needed)."""
    k = np.exp(-0.5 * (np.arange(-3, 4) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, 3, mode="edge")
    tmp = np.apply_along_axis(lambda x: np.convolve(x, k, mode="valid"), 0, pad)
    return np.apply_along_axis(lambda x: np.convolve(x, k, mode="valid"), 1, tmp)


LUNG_CT, LUNG_XR, BRAIN = 0.06, 0.15, {"CT": 0.45, "MRI": 0.5}


def _chest_ct(U, V, view, g, px, tex):
    img = np.zeros_like(U)
    lungs: dict[str, tuple[float, float, float, float]] = {}
    if view == "axial":
        _paint(img, _ell(U, V, 0, 0.05, 0.9, 0.64, px), 0.35)  # subcutaneous fat
        _paint(img, _ell(U, V, 0, 0.05, 0.84, 0.58, px), 0.52)  # muscle wall
        lungs = {"right": (-0.42, -0.02, 0.32 * g, 0.44 * g), "left": (0.42, -0.02, 0.32 * g, 0.44 * g)}
    elif view == "coronal":
        _paint(img, _ell(U, V, 0, 0.1, 0.88, 0.98, px), 0.35)
        _paint(img, _ell(U, V, 0, 0.1, 0.82, 0.92, px), 0.52)
        _paint(img, _ell(U, V, -0.35, 0.78, 0.45, 0.28, px), 0.6)  # liver
        lungs = {"right": (-0.4, -0.18, 0.32 * g, 0.55 * g), "left": (0.4, -0.18, 0.32 * g, 0.55 * g)}
    else:
        _paint(img, _ell(U, V, 0, 0.1, 0.62, 0.98, px), 0.35)
        _paint(img, _ell(U, V, 0, 0.1, 0.56, 0.92, px), 0.52)
        _paint(img, _ell(U, V, 0.0, 0.8, 0.55, 0.25, px), 0.6)
        lungs = {"": (0.02, -0.15, 0.4 * g, 0.56 * g)}
    masks = {}
    for side, (cu, cv, ru, rv) in lungs.items():
        masks[side] = _ell(U, V, cu, cv, ru, rv, px)
        _paint(img, masks[side], LUNG_CT)
        vessels = np.asarray(tex["vessels"]) * [ru, rv] + [cu, cv]  # faint dots, fainter than any nodule
        _paint(img, _dots(U, V, vessels, 0.035, 0.035, px) * masks[side], 0.22)
    heart = _ell(U, V, *{"axial": (0.1, -0.14, 0.24, 0.2), "coronal": (0.1, 0.28, 0.3, 0.24),
                         "sagittal": (-0.22, 0.3, 0.28, 0.22)}[view], px)
    _paint(img, heart, 0.57)
    if view == "axial":
        _paint(img, _ell(U, V, 0.02, 0.16, 0.07, 0.07, px), 0.62)  # aorta
        _paint(img, _ell(U, V, 0, 0.45, 0.11, 0.1, px), 0.9)  # vertebral body
        _paint(img, _ell(U, V, 0, -0.53, 0.09, 0.035, px), 0.88)  # sternum
        a = np.array([0.5, 0.9, 1.3, 1.85, 2.25, 2.65])  # ribs on the chest wall
        _paint(img, _dots(U, V, np.stack([0.86 * np.cos(a), 0.05 + 0.6 * np.sin(a)], 1), 0.05, 0.035, px), 0.88)
    elif view == "coronal":
        _paint(img, _ell(U, V, 0, -0.75, 0.05, 0.22, px), 0.05)  # trachea
    else:
        vb = np.arange(-0.85, 0.95, 0.2)  # vertebral bodies
        _paint(img, _dots(U, V, np.stack([np.full_like(vb, 0.48), vb], 1), 0.1, 0.075, px), 0.88)
    for side in masks:  # fluid fills only the lung left visible beside the heart
        masks[side] = masks[side] * (1 - heart)
    return img, masks, lungs


def _head(U, V, view, g, px, modality, tex):
    mr = modality == "MRI"
    img = np.zeros_like(U)
    cv0, (ru, rv) = {"axial": (0.0, (0.68, 0.85)), "coronal": (-0.1, (0.75, 0.7)),
                     "sagittal": (-0.1, (0.85, 0.7))}[view]
    ru, rv = ru * g, rv * g
    _paint(img, _ell(U, V, 0, cv0, ru, rv, px), 0.8 if mr else 0.4)  # scalp (fat is bright on T1)
    _paint(img, _ell(U, V, 0, cv0, ru - 0.04, rv - 0.04, px), 0.05 if mr else 0.95)  # skull
    brain = _ell(U, V, 0, cv0, ru - 0.1, rv - 0.1, px)
    if view == "coronal":  # brainstem below the hemispheres
        brain = np.maximum(brain, _ell(U, V, 0, 0.62, 0.12, 0.3, px))
    elif view == "sagittal":  # cerebellum and brainstem
        brain = np.maximum(brain, _ell(U, V, 0.35, 0.27, 0.22, 0.14, px))
        brain = np.maximum(brain, _ell(U, V, 0.1, 0.5, 0.09, 0.3, px))
    _paint(img, brain, 0.45 if mr else 0.43)  # grey matter
    th = np.arctan2(V - cv0, U)
    wm = _ell(U, V, 0, cv0, (ru - 0.22) * (1 + 0.06 * np.cos(8 * th + tex["gyri"])), rv - 0.22, px)
    _paint(img, wm, 0.56 if mr else 0.48)  # white matter, with a gyral edge
    csf = 0.08 if mr else 0.18
    if view == "sagittal":
        _paint(img, _ell(U, V, 0, -0.02, 0.3, 0.08, px), csf)  # lateral ventricle under the corpus callosum
    else:
        vv = -0.05 if view == "axial" else -0.12
        for s in (-1, 1):
            _paint(img, _ell(U, V, 0.12 * s, vv, 0.07, 0.22 if view == "axial" else 0.14, px), csf)
    return img, {"": brain}, {}


def _xray(U, V, px, tex, lesions, contrast):
    img = np.full_like(U, 0.05)
    _paint(img, _ell(U, V, 0, 0.2, 1.0, 1.15, px), 0.55)  # torso fills the film
    lungs = {"right": (-0.42, -0.1, 0.34, 0.62), "left": (0.42, -0.1, 0.34, 0.62)}
    masks = {}
    for side, (cu, cv, ru, rv) in lungs.items():
        masks[side] = _ell(U, V, cu, cv, ru, rv, px)
        _paint(img, masks[side], LUNG_XR)
    mediastinum = np.maximum(_ell(U, V, 0, -0.35, 0.13, 0.45, px),
                             _ell(U, V, 0.1, 0.28, 0.33 + tex["heart"], 0.28, px))  # and heart
    _paint(img, mediastinum, 0.64)
    for side in masks:  # the lung fields left visible beside the mediastinum and heart
        masks[side] = masks[side] * (1 - mediastinum)
    img += 0.1 * np.clip((0.06 - np.abs(U)) / px + 0.5, 0, 1)  # spine behind the mediastinum
    for s in (-1, 1):  # clavicles
        img += 0.35 * np.clip((0.04 - np.abs(V + 0.78 - 0.15 * (s * U))) / px + 0.5, 0, 1) * (np.abs(U) < 0.7)
    fractures = {(les.side, les.rib): les for les in lesions if les.type == "fracture"}
    for side, (cu, cv, ru, rv) in lungs.items():
        s = -1 if side == "right" else 1
        for k in range(4):
            v0 = cv - 0.75 * rv + k * 0.5 * rv
            centre = v0 + 0.25 * ((U - cu + s * ru) / (2 * ru)) ** 2  # ribs sweep down laterally
            within = np.abs(U - cu) < ru + 0.1
            les = fractures.get((side, k))
            if les is None:
                img += 0.3 * np.clip((0.06 - np.abs(V - centre)) / px + 0.5, 0, 1) * within
                continue
            # A displaced fracture: a lucent gap (darker than lung at high contrast) and the lateral
            # fragment stepped down, so the break spans more than one patch.
            half = 0.6 * les.r
            gap = np.clip((half - np.abs(U - les.u)) / px + 0.5, 0, 1)
            lateral = np.clip((s * (U - les.u) - half) / px + 0.5, 0, 1)
            shifted = centre + 0.3 * les.r * lateral
            img += 0.3 * np.clip((0.06 - np.abs(V - shifted)) / px + 0.5, 0, 1) * within * (1 - gap)
            img -= (contrast - 0.3) * gap * np.clip((0.09 - np.abs(V - centre)) / px + 0.5, 0, 1)
            les.v = float(v0 + 0.25 * ((les.u - cu + s * ru) / (2 * ru)) ** 2)
    return img, masks, lungs


def _ultrasound(U, V, px):
    R, T = np.sqrt(U**2 + (V + 1.05) ** 2), np.arctan2(U, V + 1.05)
    fan = np.clip((0.62 - np.abs(T)) * R / px + 0.5, 0, 1) * np.clip((R - 0.15) / px, 0, 1) * (R < 1.95)
    img = fan * 0.5 * (1.15 - 0.3 * R / 1.95)  # liver, attenuating with depth
    img += 0.35 * fan * np.clip((0.04 - np.abs(R - 1.72)) / px + 0.5, 0, 1)  # diaphragm echo
    return img, {"": fan}, {}


def _lesion_mask(U, V, w, les: Lesion, px: float) -> np.ndarray | None:
    r = les.r
    if les.rw > 0:
        t = (w - les.w) / les.rw
        if abs(t) >= 1:
            return None
        r *= float(np.sqrt(1 - t * t))
    d = np.sqrt((U - les.u) ** 2 + (V - les.v) ** 2)
    if les.type == "mass":  # lobulated margin distinguishes a mass from a round nodule or cyst
        d = d / (1 + 0.18 * np.cos(3 * np.arctan2(V - les.v, U - les.u) + les.phase))
    return np.clip((r - d) / px + 0.5, 0, 1)


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """The scene's pixels: ``(H, W)`` for 2D, ``(H, W, D)`` for 3D, float32 in [0, 1]."""
    spec, diff = scene.spec, scene.difficulty
    c = (np.arange(image_size) + 0.5) / image_size * 2 - 1
    V0, U0 = np.meshgrid(c, c, indexing="ij")
    du, dv, sc = scene.pose
    U, V = (U0 - du) / sc, (V0 - dv) / sc
    px = 2.0 / image_size / sc
    tex = {"vessels": rng.uniform(-0.7, 0.7, size=(6, 2)).tolist(), "gyri": float(rng.uniform(0, 6.3)),
           "heart": float(rng.uniform(-0.04, 0.06)), "bias": rng.uniform(-1, 1, size=2).tolist()}
    ws = np.linspace(-1, 1, scene.depth + 2)[1:-1] if scene.kind == "3d" else np.zeros(1)
    slices = []
    for w in ws:
        g = 1.0 - 0.12 * float(w) ** 2  # organs taper towards the ends of the slab
        if spec.body_part == "chest" and spec.modality == "CT":
            img, masks, lungs = _chest_ct(U, V, scene.view, g, px, tex)
            base = LUNG_CT
        elif spec.body_part == "head":
            img, masks, lungs = _head(U, V, scene.view, g, px, spec.modality, tex)
            base = BRAIN[spec.modality]
        elif spec.modality == "X-ray":
            img, masks, lungs = _xray(U, V, px, tex, scene.lesions, diff.contrast)
            base = LUNG_XR
        else:
            img, masks, lungs = _ultrasound(U, V, px)
            base = 0.5
        for les in scene.lesions:
            if les.type == "fracture":
                continue  # drawn with the ribs
            if les.type == "effusion":
                cu, cv, ru, rv = lungs[les.side or ""]
                fill = min(0.6, les.r * 32 / 20)  # fraction of the lung height taken by fluid
                # dependent fluid with a meniscus that climbs the lung edge
                level = cv + rv * (1 - 2 * fill) - 0.3 * fill * rv * ((U - cu) / ru) ** 2
                mask = masks[les.side or ""] * np.clip((V - level) / px + 0.5, 0, 1)
                _paint(img, mask, base + diff.contrast)
                continue
            mask = _lesion_mask(U, V, float(w), les, px)
            if mask is None:
                continue
            if spec.body_part != "chest":
                mask = mask * masks[""]  # keep head and liver lesions inside the organ
            dark = les.type == "cyst"
            value = float(np.clip(base - diff.contrast if dark else base + diff.contrast, 0, 1))
            if spec.modality == "Ultrasound" and dark:  # posterior acoustic enhancement behind a cyst
                img += 0.12 * masks[""] * (les.v < V) * np.clip((les.r - np.abs(U - les.u)) / px, 0, 1)
            if spec.modality == "X-ray":  # radiographs sum attenuation: the nodule adds to ribs behind it
                img += diff.contrast * mask
            else:
                _paint(img, mask, value)
        slices.append(_texture(img, scene, rng, masks, tex))
    vol = np.stack(slices, axis=-1) if scene.kind == "3d" else slices[0]
    return np.clip(vol, 0.0, 1.0).astype(np.float32)


def _texture(img: np.ndarray, scene: Scene, rng: np.random.Generator, masks: dict, tex: dict) -> np.ndarray:
    """Modality look: CT grain, MR bias field, radiograph blur, ultrasound speckle."""
    noise, modality = scene.difficulty.noise, scene.spec.modality
    if modality == "Ultrasound":
        speckle = _blur(rng.standard_normal(img.shape), 0.7)
        speckle /= speckle.std() + 1e-8
        return img * (1 + (0.15 + 4 * noise) * speckle)
    if modality == "X-ray":
        return _blur(img, 0.9) + noise * rng.standard_normal(img.shape)
    if modality == "MRI":
        n = img.shape[0]
        ramp = np.linspace(-1, 1, n)
        img = img * (1 + 0.08 * (tex["bias"][0] * ramp[None, :] + tex["bias"][1] * ramp[:, None]))
    return img + noise * rng.standard_normal(img.shape)
