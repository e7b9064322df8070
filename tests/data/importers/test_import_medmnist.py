"""The MedMNIST importer on real PneumoniaMNIST (../shared/data) and small synthetic 2D/3D files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radfm.data import prompts
from radfm.data.errors import SampleError
from radfm.data.importers import ingest_medmnist
from radfm.data.manifest import read_manifest, resolve_image_path

SHARED_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"
PNEUMONIA = SHARED_DATA / "pneumoniamnist.npz"


@pytest.mark.shared_data
def test_medmnist_pneumonia_keeps_official_splits_and_pixels(tmp_path: Path) -> None:
    if not PNEUMONIA.is_file():
        pytest.skip(f"real PneumoniaMNIST not found at {PNEUMONIA} (see ../shared/data/README.md)")
    samples, quarantine = ingest_medmnist(PNEUMONIA, tmp_path / "out", max_per_split=12, modality_samples=True)
    assert len(quarantine) == 0
    diag = [s for s in samples if s.task == "diagnosis"]
    assert len(diag) == 36 and len(samples) == 72
    assert {s.split for s in diag} == {"train", "val", "test"}
    manifest = tmp_path / "out" / "manifest.jsonl"
    assert read_manifest(manifest) == samples
    profile = json.loads((tmp_path / "out" / "manifest.profile.json").read_text())
    pneu = next(f for f in profile["families"] if f["name"] == "is there pneumonia in this chest x ray")
    assert pneu["kind"] == "yesno" and pneu["reason"] == "the rows' own choices" and pneu["rows"]["train"] == 12
    npz = np.load(PNEUMONIA)
    for s in diag:
        split, i = s.id.split("-")[1], int(s.id.split("-")[2])
        assert s.question == "Is there pneumonia in this chest X-ray?" and s.choices == ["yes", "no"]
        label = int(npz[f"{split}_labels"][i].ravel()[0])
        assert s.answer == ("yes" if label == 1 else "no")
        assert s.labels == (["pneumonia"] if label == 1 else [])
        png = np.asarray(Image.open(resolve_image_path(tmp_path / "out", s.images[0].path)))
        np.testing.assert_array_equal(png, npz[f"{split}_images"][i])
        assert s.images[0].kind == "2d"
    test_answers = {s.answer for s in diag if s.split == "test"}
    assert test_answers <= {"yes", "no"}
    modality = [s for s in samples if s.task == "modality"]
    assert {s.answer for s in modality} == {"X-ray"}
    assert {s.question for s in modality} == {prompts.render("modality", None)}


def test_medmnist_3d_volumes_and_generic_labels(tmp_path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    vols = rng.integers(0, 255, (3, 6, 8, 10), dtype=np.uint8)  # N×D×H×W
    npz = tmp_path / "organmnist3d.npz"
    np.savez(npz, train_images=vols, train_labels=np.array([[0], [2], [1]]),
             test_images=vols[:1], test_labels=np.array([[1]]))
    samples, _ = ingest_medmnist(npz, tmp_path / "out")
    assert [s.split for s in samples] == ["train"] * 3 + ["test"]
    s = samples[1]
    assert s.answer == "class 2" and s.images[0].kind == "3d" and s.images[0].path.endswith(".nii.gz")
    assert s.choices == ["class 0", "class 1", "class 2"]  # every class seen in the file, for every sample
    vol = nib.load(resolve_image_path(tmp_path / "out", s.images[0].path)).get_fdata()
    np.testing.assert_array_equal(vol, np.transpose(vols[1], (1, 2, 0)))  # stored H×W×D
    named, _ = ingest_medmnist(npz, tmp_path / "named", task_labels={0: "liver", 1: "kidney", 2: "spleen"})
    assert named[1].answer == "spleen" and named[1].choices == ["liver", "kidney", "spleen"]


def test_medmnist_manifest_path_given_is_kept_with_its_profile_beside_it(tmp_path: Path) -> None:
    """`data=medmnist` passes ``<root>/manifests/<name>.jsonl``: the importer writes there, profile beside it."""
    from radfm.data.manifest import find_manifest

    imgs = np.random.default_rng(1).integers(0, 255, (6, 8, 8), dtype=np.uint8)
    npz = tmp_path / "pneumoniamnist.npz"
    np.savez(npz, train_images=imgs, train_labels=np.array([[0], [1]] * 3))
    manifest = tmp_path / "root" / "manifests" / "pneumoniamnist.jsonl"
    samples, _ = ingest_medmnist(npz, tmp_path / "root", manifest_path=manifest)
    assert read_manifest(manifest) == samples and not (tmp_path / "root" / "manifest.jsonl").exists()
    assert (tmp_path / "root" / "manifests" / "pneumoniamnist.profile.json").is_file()
    assert find_manifest(tmp_path / "root") == manifest


def test_medmnist_bad_label_raises_or_is_quarantined(tmp_path: Path) -> None:
    imgs = np.zeros((4, 5, 5), np.uint8)
    npz = tmp_path / "pneumoniamnist.npz"
    np.savez(npz, val_images=imgs, val_labels=np.array([[0], [1], [7], [1]]))
    with pytest.raises(SampleError) as err:
        ingest_medmnist(npz, tmp_path / "out")
    assert err.value.sample_id == "pneumoniamnist-val-00002"
    assert "val_labels[2]" in err.value.file and "label 7" in err.value.reason
    samples, quarantine = ingest_medmnist(npz, tmp_path / "out", on_error="quarantine")
    assert len(samples) + len(quarantine) == 4 and len(quarantine) == 1
    assert (tmp_path / "out" / "manifest.quarantine.jsonl").is_file()
    with pytest.raises(ValueError, match="no train_images"):
        np.savez(tmp_path / "empty.npz", x=imgs)
        ingest_medmnist(tmp_path / "empty.npz", tmp_path / "out")
