"""Data-throughput benchmark (not a test): images per second through read → normalise → resize (64) → depth
bucket → collate (torch.stack, batches of 8), for radfm's pipeline cold (first epoch, empty tensor cache) and
cached (second epoch), against a plain MONAI ``Compose([LoadImaged, EnsureChannelFirstd, ScaleIntensityd,
Resized])`` on the same files.

    python bench/data_throughput.py [--n3d 40] [--n2d 200] [--repeats 5] [--threads 2] [--json PATH]

Data: synthetic phantoms written to a temporary folder: int16 NIfTI volumes (.nii.gz, 128×128×48) and 8-bit
PNGs (256×256). Each pipeline runs in its own child process (so its peak RSS is its own) with
``torch.set_num_threads(--threads)`` (2 by default). The machine may be shared, so the two children alternate
``--repeats`` times (each MONAI epoch has a radfm epoch beside it); each figure is the best epoch (the one
least disturbed by neighbours), with the median beside it; every cold epoch starts from a fresh cache folder. Goals — cached ≥ 5× the MONAI
baseline, cold ≥ 1× — are printed as PASS/MISS, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._common import machine_info, peak_rss_mb, run_measured  # noqa: E402

BATCH = 8
SIZE = 64
SHAPE_3D = (128, 128, 48)
SHAPE_2D = (256, 256)
GOAL_CACHED = 5.0
GOAL_COLD = 1.0


# ---- data -----------------------------------------------------------------------------------------------


def make_data(root: Path, n3d: int, n2d: int, seed: int = 0) -> dict[str, list[str]]:
    """Phantoms: an elliptical body with a brighter organ, a lesion and noise (HU-like int16 / 8-bit)."""
    import nibabel as nib
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w, d = SHAPE_3D
    axes = [np.linspace(-1, 1, n) for n in (h, w, d)]
    yy, xx, zz = np.meshgrid(*axes, indexing="ij")
    paths: dict[str, list[str]] = {"3d": [], "2d": []}
    (root / "3d").mkdir(parents=True)
    (root / "2d").mkdir(parents=True)
    for i in range(n3d):
        body = (yy / 0.8) ** 2 + (xx / 0.6) ** 2 < 1
        organ = ((yy - 0.2) / 0.3) ** 2 + ((xx + 0.1) / 0.25) ** 2 + (zz / 0.7) ** 2 < 1
        c = rng.uniform(-0.4, 0.4, 3)
        lesion = (yy - c[0]) ** 2 + (xx - c[1]) ** 2 + (zz - c[2]) ** 2 < rng.uniform(0.01, 0.03)
        vol = np.where(body, 40.0, -1000.0) + 60.0 * organ + 80.0 * lesion + rng.normal(0, 20, SHAPE_3D)
        path = root / "3d" / f"vol{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(vol.astype(np.int16), np.diag([0.8, 0.8, 2.5, 1.0])), path)
        paths["3d"].append(str(path))
    gy, gx = np.meshgrid(np.linspace(-1, 1, SHAPE_2D[0]), np.linspace(-1, 1, SHAPE_2D[1]), indexing="ij")
    for i in range(n2d):
        lungs = ((np.abs(gx) - 0.4) / 0.3) ** 2 + (gy / 0.7) ** 2 < 1
        c = rng.uniform(-0.5, 0.5, 2)
        nodule = (gy - c[0]) ** 2 + (gx - c[1]) ** 2 < 0.005
        img = 200 - 150 * lungs + 60 * nodule + rng.normal(0, 8, SHAPE_2D)
        path = root / "2d" / f"img{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        paths["2d"].append(str(path))
    return paths


# ---- pipelines (run in a child process) -----------------------------------------------------------------


def epoch(paths: list[str], load: Callable[[str], Any]) -> tuple[float, tuple[int, ...]]:
    """Seconds for one pass in batches of ``BATCH``, collated with torch.stack; and one batch's shape."""
    import torch

    shape: tuple[int, ...] = ()
    t0 = time.perf_counter()
    for i in range(0, len(paths), BATCH):
        batch = torch.stack([load(p) for p in paths[i:i + BATCH]])
        shape = tuple(batch.shape)
    return time.perf_counter() - t0, shape


def monai_loader(kind: str) -> Callable[[str], Any]:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized, ScaleIntensityd

    spatial = (SIZE, SIZE, -1) if kind == "3d" else (SIZE, SIZE)  # -1 keeps depth 48, already a bucket
    t = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), ScaleIntensityd("image"),
                 Resized("image", spatial_size=spatial)])
    return lambda p: t({"image": p})["image"].as_tensor()


def radfm_epochs(paths: list[str], cache_dir: Path) -> dict[str, Any]:
    """Cold and cached epochs of the MONAI-equivalent config, then a cached epoch of the training config."""
    from functools import partial

    from radfm.data.cache import TensorCache
    from radfm.data.transforms import TransformConfig, preprocess

    # the same work as the MONAI chain: one channel, min-max style intensity scaling, no zero-centring
    plain = TransformConfig(image_size=SIZE, channels=1, zero_centre=False, augment=False)
    train = TransformConfig(image_size=SIZE)  # the training default: 3 channels, zero-centred, crop
    preprocess(paths[0], plain)  # warm-up outside the timing, without touching the cache
    cache = TensorCache(cache_dir / "plain")
    load = partial(preprocess, cfg=plain, cache=cache)
    res: dict[str, Any] = {}
    t, shape = epoch(paths, load)
    res["cold"] = {"s": t, "batch_shape": shape}
    t, shape = epoch(paths, load)
    res["cached"] = {"s": t, "batch_shape": shape, "hits_misses": cache.stats()}
    res["cache_mb"] = sum(f.stat().st_size for f in cache.root.rglob("*.npy")) / 2**20
    load_train = partial(preprocess, cfg=train, cache=TensorCache(cache_dir / "train"), train=True,
                         rng=np.random.default_rng(0))
    epoch(paths, load_train)  # fills the cache, untimed
    t, shape = epoch(paths, load_train)
    res["cached_train"] = {"s": t, "batch_shape": shape}
    return res


def run_child(pipeline: str, data: dict[str, list[str]], work: Path, tag: str,
              threads: int) -> dict[str, Any]:
    """One epoch of each measurement for ``pipeline`` (``monai`` or ``radfm``), in this process."""
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    for kind, paths in data.items():
        if pipeline == "monai":
            load = monai_loader(kind)
            load(paths[0])  # warm-up: imports and first-call kernel setup stay out of the timing
            t, shape = epoch(paths, load)
            out[kind] = {"monai": {"s": t, "batch_shape": shape}}
        else:
            out[kind] = radfm_epochs(paths, work / f"cache-{kind}-{tag}")
    out["peak_rss_mb"] = peak_rss_mb()
    return out


# ---- report ---------------------------------------------------------------------------------------------


def summarise(children: dict[str, list[dict[str, Any]]], counts: dict[str, int]) -> dict[str, Any]:
    """Rates per second — best epoch (the headline: the least disturbed by neighbours) and median — ratios to
    MONAI for both, and the goals, judged on the best-epoch ratios."""
    stats: dict[str, dict[str, dict[str, float]]] = {"best": {}, "median": {}}
    for kind in ("3d", "2d"):
        for child, names in (("monai", ("monai",)), ("radfm", ("cold", "cached", "cached_train"))):
            for name in names:
                secs = [run[kind][name]["s"] for run in children[child]]
                stats["best"].setdefault(name, {})[kind] = counts[kind] / min(secs)
                stats["median"].setdefault(name, {})[kind] = counts[kind] / statistics.median(secs)
    ratios = {stat: {f"{name}/monai": {k: rows[name][k] / rows["monai"][k] for k in ("3d", "2d")}
                     for name in ("cold", "cached")} for stat, rows in stats.items()}
    goals = {"cached >= 5x monai": all(v >= GOAL_CACHED for v in ratios["best"]["cached/monai"].values()),
             "cold >= 1x monai": all(v >= GOAL_COLD for v in ratios["best"]["cold/monai"].values())}
    return {"per_s": stats, "ratios": ratios, "goals": goals}


def report(results: dict[str, Any]) -> str:
    s, m = results["summary"], results["meta"]
    names = {"monai": "MONAI Compose baseline", "cold": "radfm cold (epoch 1, empty cache)",
             "cached": "radfm cached (epoch 2)", "cached_train": "radfm cached + train (3 ch, crop)"}
    best, med = s["per_s"]["best"], s["per_s"]["median"]
    lines = [f"data throughput: {m['n3d']} volumes {'×'.join(map(str, SHAPE_3D))} (.nii.gz), {m['n2d']} PNGs "
             f"{'×'.join(map(str, SHAPE_2D))} → {SIZE}×{SIZE}, batches of {BATCH}, "
             f"torch threads {m['threads']}; best (median) of {m['repeats']} epochs",
             f"{'pipeline':<36}{'3D vol/s':>18}{'2D img/s':>20}{'peak RSS MB':>13}"]
    for name, label in names.items():
        rss = max(r["peak_rss_mb"] for r in results["children"]["monai" if name == "monai" else "radfm"])
        cells = [f"{best[name][k]:.1f} ({med[name][k]:.1f})" for k in ("3d", "2d")]
        lines.append(f"{label:<36}{cells[0]:>18}{cells[1]:>20}{rss:>13.0f}")
    for key, goal in (("cached/monai", GOAL_CACHED), ("cold/monai", GOAL_COLD)):
        rb, rm = s["ratios"]["best"][key], s["ratios"]["median"][key]
        verdict = "PASS" if all(v >= goal for v in rb.values()) else "MISS"
        cells = [f"{rb[k]:.2f}× ({rm[k]:.2f}×)" for k in ("3d", "2d")]
        lines.append(f"{key:<36}{cells[0]:>18}{cells[1]:>20}   goal ≥ {goal:g}×: {verdict}")
    c = results["children"]["radfm"][0]
    others = {k: [r["others_cpu_share"] for r in v] for k, v in results["children"].items()}
    lines.append(f"cache on disk: 3D {c['3d']['cache_mb']:.1f} MB, 2D {c['2d']['cache_mb']:.1f} MB; "
                 f"load average before/after {m['load_before']} / {m['load_after']}")
    lines.append("CPU share taken by other processes during each run (0 = idle machine): "
                 + ", ".join(f"{k} {v}" for k, v in others.items()))
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n3d", type=int, default=40)
    p.add_argument("--n2d", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "data_throughput.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each child")
    p.add_argument("--tag", default="0", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        work = Path(args.worker_dir)
        data = json.loads((work / "paths.json").read_text())
        res = run_child(args.worker, data, work, args.tag, args.threads)
        (work / f"{args.worker}-{args.tag}.json").write_text(json.dumps(res))
        return 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="radfm-bench-data-") as tmp:
        work = Path(tmp)
        data = make_data(work / "data", args.n3d, args.n2d)
        (work / "paths.json").write_text(json.dumps(data))
        load_before = [round(x, 2) for x in os.getloadavg()]
        children: dict[str, list[dict[str, Any]]] = {"monai": [], "radfm": []}
        for r in range(args.repeats):
            for name in ("monai", "radfm"):
                cmd = [sys.executable, __file__, "--worker", name, "--worker-dir", str(work), "--tag", str(r),
                       "--threads", str(args.threads)]
                others = run_measured(cmd, env={**os.environ, "RADFM_HOME": str(work / "home")})
                children[name].append({**json.loads((work / f"{name}-{r}.json").read_text()),
                                       "others_cpu_share": round(others, 3)})
        load_after = [round(x, 2) for x in os.getloadavg()]
    meta = {**machine_info(("torch", "monai")),
            "n3d": args.n3d, "n2d": args.n2d, "repeats": args.repeats, "threads": args.threads,
            "batch": BATCH, "size": SIZE, "shape_3d": SHAPE_3D, "shape_2d": SHAPE_2D, "load_before": load_before,
            "load_after": load_after, "wall_s": round(time.perf_counter() - t0, 1)}
    summary = summarise(children, {"3d": args.n3d, "2d": args.n2d})
    results = {"meta": meta, "children": children, "summary": summary}
    print(report(results))
    print(f"wall {meta['wall_s']} s")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
