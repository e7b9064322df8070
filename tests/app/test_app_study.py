"""What ``radfm app`` does without a browser: uploads put together as one image or scan, slices laid out for the
screen, the model loaded from a checkpoint folder, and its two answers computed as RadBench computes its ``model``
and ``ablated`` systems."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from radfm.app.study import assemble, load_study, screen_slices
from radfm.registry.limits import PredictInputError
from tests.data.test_readers import write_series
from tests.registry import test_registry as shared

pytestmark = pytest.mark.timeout(120)

checkpoint_dir = shared.checkpoint_dir  # the tiny saved checkpoint (a session fixture of tests/registry)

QUESTION = "Is there a nodule?"


def write_nifti(path: Path, vol: np.ndarray, affine: np.ndarray | None = None) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([0.8, 0.8, 2.5, 1.0]) if affine is None else affine),
             path)
    return path


@pytest.fixture()
def nifti(tmp_path: Path) -> Path:
    vol = np.random.default_rng(4).normal(size=(24, 20, 6)) + np.arange(6)
    return write_nifti(tmp_path / "scan.nii.gz", vol)


def test_one_file_is_the_study_and_several_dicom_files_become_one_series(tmp_path: Path, nifti: Path) -> None:
    from radfm.data.readers import read_image

    assert assemble([nifti], tmp_path / "work") == nifti
    truth = write_series(tmp_path / "upload")
    files = [t["file"] for t in truth]
    # named by UID, without a suffix, as DICOM files often are: their preamble tells them apart
    for f in files[:3]:
        shutil.move(f, f.with_suffix(""))
    files = [f.with_suffix("") if i < 3 else f for i, f in enumerate(files)]
    series = assemble(files, tmp_path / "work")
    assert series.is_dir() and series.parent == tmp_path / "work" and len(list(series.iterdir())) == len(files)
    np.testing.assert_array_equal(read_image(series).array, read_image(tmp_path / "upload").array)
    study = load_study(series)
    assert study.depth == 10 and study.summary.startswith("the series of 10 files: MR DICOM series scan")
    assert study.plain(f"image {study.path} is odd") == "image the series of 10 files is odd"


def test_uploads_that_are_not_one_study_are_refused(tmp_path: Path, nifti: Path) -> None:
    with pytest.raises(PredictInputError, match="no file was uploaded"):
        assemble([], tmp_path)
    other = write_nifti(tmp_path / "other.nii", np.ones((4, 4, 4)))
    with pytest.raises(PredictInputError, match="scan.nii.gz, other.nii are not DICOM"):
        assemble([nifti, other], tmp_path)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(PredictInputError, match="^image notes.png cannot be read: ") as refused:
        load_study(text)
    assert str(tmp_path) not in str(refused.value)  # named as the user knows it, not by its path on the server


def test_a_nifti_is_shown_in_the_radiological_convention(tmp_path: Path) -> None:
    """RAS axes: a bright voxel at the patient's right and front shows at the screen's top left."""
    vol = np.zeros((16, 12, 4), dtype=np.float32)
    vol[-1, -1, :] = 100.0  # x: towards the right, y: towards the front
    vol[0, 0, :] = 50.0
    study = load_study(write_nifti(tmp_path / "axial.nii", vol, np.diag([1.0, 1.0, 3.0, 1.0])))
    picture = study.slice(2)
    assert picture.shape == (12, 16)  # rows run front to back (y), columns right to left (x)
    assert picture[0, 0] == 255 and picture[-1, -1] < 255
    assert study.slice(99).shape == picture.shape  # a slider past the end shows the last slice


def test_a_dicom_window_sets_the_grey_scale() -> None:
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0], dtype=np.float32).reshape(1, 5, 1, 1)
    shown = screen_slices(hu, {"WindowCenter": [40.0, 400.0], "WindowWidth": "400"})
    assert shown.shape == (1, 5, 1)
    assert shown[0, :, 0].tolist() == [0, 0, 127, 255, 255]


def test_a_colour_image_keeps_its_colours(tmp_path: Path) -> None:
    from PIL import Image

    rgb = np.zeros((8, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    rgb[2:4, 2:4] = (10, 220, 30)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    study = load_study(tmp_path / "photo.png")
    assert study.depth == 1 and study.slices.shape == (1, 8, 10, 3)
    np.testing.assert_array_equal(study.slice(0), rgb)


def test_the_two_answers_are_radbench_model_and_ablated_systems(checkpoint_dir: Path, nifti: Path) -> None:
    """From a checkpoint folder: the answer is the served model's (what ``radfm predict`` prints), and it is
    RadBench's ``model`` system for the same question and image; the other answer is RadBench's ``ablated``."""
    from radfm.app.session import AppModel
    from radfm.data.datamodule import RadFMDataset
    from radfm.data.manifest import ImageRef, Sample
    from radfm.data.transforms import checkpoint_transform
    from radfm.eval.predict import predict
    from radfm.registry.pyfunc import RadFMPyfunc

    app = AppModel.load(str(checkpoint_dir))
    assert isinstance(app.pyfunc.unwrap_python_model(), RadFMPyfunc)
    answers = app.ask(QUESTION, nifti, max_new_tokens=10)
    sample = Sample(id="s", task="vqa", split="test", question=QUESTION, answer="?",
                    images=[ImageRef(path=nifti.name, kind="3d")])
    ds = RadFMDataset([sample], nifti.parent, app.tokenizer,
                      checkpoint_transform(checkpoint_dir, app.model.cfg.vision.image_size), train=False)
    systems = {name: predict(app.model, app.tokenizer, [sample], ds, 1, 10, ablate=ablate)[0].text
               for name, ablate in (("model", False), ("ablated", True))}
    assert answers.answer == systems["model"] and answers.ablated == systems["ablated"]
    assert answers.answer.strip() and answers.ablated.strip()
    with pytest.raises(PredictInputError, match="the prompt is empty"):
        app.ask("  ", nifti, max_new_tokens=10)
    with pytest.raises(PredictInputError, match="max_new_tokens"):
        app.ask(QUESTION, nifti, max_new_tokens=10**6)


def test_a_model_that_is_not_there_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from radfm.app.session import AppModel
    from radfm.registry.registry import RegistryError

    with pytest.raises(FileNotFoundError, match="does not exist"):
        AppModel.load(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="holds neither an MLmodel"):
        AppModel.load(str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'missing.db'}")
    with pytest.raises(RegistryError, match="no MLflow registry"):
        AppModel.load("models:/radfm@champion")
