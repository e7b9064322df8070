"""What the logged model carries to serve elsewhere (its code, complete requirements without local build tags, a
portable example, a typed signature) and every image form its REST input takes: base64 PNG/JPEG/NIfTI/DICOM,
``s3://`` URIs (a moto server on loopback) and paths, each refused in one line naming the row, the image and the
reason — the byte limit before anything is decoded. The served model's own HTTP test is test_serve."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from radfm.registry.limits import MAX_IMAGE_BYTES_ENV
from radfm.registry.model_spec import SERVING_PACKAGES, data_uri, requirements
from radfm.registry.pyfunc import log_pyfunc
from radfm.registry.request_images import sniff
from tests.data.importers.test_import_dicom import _testdata
from tests.registry import test_registry as shared
from tests.s3 import moto_server  # noqa: F401  (session fixture: a real S3 API on 127.0.0.1)

# The fixtures live in test_registry (this task owns no conftest); binding them here makes pytest see them.
checkpoint_dir, scans = shared.checkpoint_dir, shared.scans
ROOT = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def png_bytes(seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((48, 48)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(1).random((40, 40, 3)) * 255).astype(np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def nifti_bytes(gz: bool = True) -> bytes:
    """A small 3D volume written by nibabel (``.nii.gz`` when ``gz``)."""
    import nibabel as nib

    vol = np.random.default_rng(2).normal(size=(24, 24, 6)).astype(np.float32)
    raw = nib.Nifti1Image(vol, np.diag([0.8, 0.8, 2.5, 1.0])).to_bytes()
    return gzip.compress(raw) if gz else raw


def dicom_bytes() -> bytes:
    return Path(_testdata("CT_small.dcm")).read_bytes()


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, checkpoint_dir: Path) -> Iterator[dict[str, Any]]:
    """The tiny checkpoint logged as it is for registration, its artifacts downloaded, and loaded as MLflow loads
    it (the signature enforced on every predict, as the scoring server does)."""
    tmp = tmp_path_factory.mktemp("serve_inputs")
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment("radfm-serve-inputs")
        info = log_pyfunc(checkpoint_dir)
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info.model_uri, dst_path=str(tmp / "model")))
        yield {"info": info, "dir": local, "model": mlflow.pyfunc.load_model(str(local)), "uri": uri}
    finally:
        mlflow.set_tracking_uri(previous)


def answer(model: Any, *images: str, prompt: str = "Is there a nodule?") -> list[str]:
    frame = pd.DataFrame({"prompt": [prompt] * len(images), "images": [[im] for im in images]})
    out = list(model.predict(frame, params={"max_new_tokens": 2}))
    assert len(out) == len(images) and all(isinstance(a, str) for a in out)
    return out


def refusal(model: Any, image: str) -> str:
    """The one-line 400 message the served model gives for a request with ``image``."""
    frame = pd.DataFrame({"prompt": ["Is there a nodule?"], "images": [[image]]})
    with pytest.raises(MlflowException) as caught:
        model.predict(frame, params={"max_new_tokens": 2})
    err = caught.value
    assert err.error_code == "INVALID_PARAMETER_VALUE" and err.get_http_status_code() == 400, err.message
    assert len(err.message.splitlines()) == 1, err.message
    return err.message


# ---- what the model carries ------------------------------------------------------------------------------------
def test_requirements_are_pinned_without_local_tags() -> None:
    reqs = requirements()
    assert [r.split("==")[0] for r in reqs] == list(SERVING_PACKAGES)
    for req in reqs:
        assert "+" not in req, req  # torch 2.x+cpu is found only on the index that built it
        assert re.fullmatch(r"[a-z0-9_.-]+==\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?", req), req
    names = {_norm(r.split("==")[0]) for r in reqs}
    assert {"torch", "pydicom", "nibabel", "pillow", "s3fs", "mlflow"} <= names
    assert "radfm" not in names  # radfm travels as the model's code, never fetched from an index


def test_logged_model_carries_its_code_requirements_and_a_portable_example(logged: dict[str, Any]) -> None:
    model_dir: Path = logged["dir"]
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "code: code" in mlmodel and "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel
    assert (model_dir / "code" / "radfm" / "registry" / "request_images.py").is_file()
    assert (model_dir / "served_model.py").is_file()
    assert not list(model_dir.rglob("__pycache__")) and not list(model_dir.rglob("*.pyc"))
    assert (model_dir / "requirements.txt").read_text().split() == requirements()

    info = logged["info"]
    assert info.signature.inputs.input_names() == ["prompt", "images"]
    assert [s.name for s in info.signature.outputs.inputs] == ["answer"]
    assert info.signature.params.params[0].name == "max_new_tokens"

    for name in ("input_example.json", "serving_input_example.json"):
        text = (model_dir / name).read_text()
        for local in (str(ROOT), str(model_dir), os.path.expanduser("~"), "/tmp/"):
            assert local not in text, f"{name} names a path of this machine ({local})"
        strings = re.findall(r'"([^"]*)"', text)
        assert not [s for s in strings if s.startswith("/") or re.match(r"^[A-Za-z]:\\", s)], strings
    example = json.loads((model_dir / "serving_input_example.json").read_text())
    (image,) = example["dataframe_split"]["data"][0][1]
    assert image.startswith("data:image/png;base64,")
    assert sniff(base64.b64decode(image.split(",", 1)[1])) == ("PNG", ".png")
    assert example["params"] == {"max_new_tokens": 8}


def test_requirements_cover_what_the_served_code_imports(logged: dict[str, Any], tmp_path: Path) -> None:
    """A fresh Python, outside the checkout, loads the model and answers a PNG, a NIfTI and a DICOM; every
    third-party module that radfm's loaded code imports belongs to a listed requirement, and radfm itself came
    from the model's code."""
    images = [data_uri(png_bytes()), data_uri(nifti_bytes()), data_uri(dicom_bytes())]
    (tmp_path / "images.json").write_text(json.dumps(images))
    script = r'''
import ast, importlib.metadata as md, json, sys
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
images = json.load(open("images.json"))
model.predict(pd.DataFrame({"prompt": ["Is it?"] * 3, "images": [[im] for im in images]}),
              params={"max_new_tokens": 1})
import radfm
imported = set()
for name, mod in list(sys.modules.items()):
    if (name == "radfm" or name.startswith("radfm.")) and getattr(mod, "__file__", None):
        for node in ast.walk(ast.parse(open(mod.__file__).read())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
third = sorted(m for m in imported if m in sys.modules and m not in sys.stdlib_module_names and m != "radfm")
dists = md.packages_distributions()
print(json.dumps({"radfm": radfm.__file__, "modules": {m: dists.get(m, []) for m in third}}))
'''
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script, str(logged["dir"])], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(seen["radfm"]).resolve().is_relative_to((logged["dir"] / "code").resolve()), seen["radfm"]
    listed = {_norm(r.split("==")[0]) for r in requirements()}
    missing = {m: d for m, d in seen["modules"].items() if not {_norm(x) for x in d} & listed}
    assert not missing, f"imported by radfm at serving time but not in the requirements: {missing}"
    assert {"torch", "PIL", "nibabel", "pydicom"} <= set(seen["modules"])


# ---- the REST input forms ---------------------------------------------------------------------------------------
def test_base64_images_of_every_format_are_answered(logged: dict[str, Any]) -> None:
    model = logged["model"]
    answer(model, data_uri(png_bytes(), "image/png"), data_uri(jpeg_bytes(), "image/jpeg"),
           data_uri(nifti_bytes(gz=True)), data_uri(nifti_bytes(gz=False), "application/octet-stream"),
           data_uri(dicom_bytes(), "application/dicom"))


def test_paths_still_work_and_forms_are_told_apart(logged: dict[str, Any], scans: list[Path]) -> None:
    model = logged["model"]
    answer(model, str(scans[0]), f"file://{scans[1]}")
    # no image at all: the signature's images column may be an empty list
    assert len(model.predict(pd.DataFrame({"prompt": ["Is it normal?"], "images": [[]]}),
                             params={"max_new_tokens": 2})) == 1
    png = base64.b64encode(png_bytes()).decode()
    assert re.search(r"^row 0: image 0 looks like base64 without its prefix: send it as data:;base64,",
                     refusal(model, png))
    assert "image 0 https:// is not fetched by the served model" in refusal(model, "https://example.org/a.png")
    assert "is a data URI without ';base64,'" in refusal(model, "data:image/png," + png)
    assert re.search(r"^row 0: image 0 \(base64\) is not valid base64", refusal(model, "data:;base64,@@@@"))
    assert re.search(r"^row 0: image 0 \(base64, 11 bytes\) is not a PNG, JPEG, NIfTI \(.nii/.nii.gz\), DICOM or "
                     r"\.npy file", refusal(model, data_uri(b"hello world")))
    # the media type is not trusted: PNG bytes sent as NIfTI are read as the PNG they are
    answer(model, data_uri(png_bytes(), "application/x-nifti"))


def test_base64_bytes_are_limited_before_decoding_and_headers_after(logged: dict[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = logged["model"]
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "1000")
    # not base64 at all: refused for its length, so it was never decoded
    message = refusal(model, "data:image/png;base64," + "@" * 4000)
    assert message.endswith("row 0: image 0 (base64) has 3,000 bytes, over the limit of 1,000 per image: send a "
                            f"smaller or compressed file (or raise {MAX_IMAGE_BYTES_ENV} where the model runs)")
    monkeypatch.delenv(MAX_IMAGE_BYTES_ENV)
    # within the byte limit, its header claims ~4 TB: the readers' limits apply to the decoded bytes
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((32000, 32000, 1000))
    header.set_data_dtype(np.float32)
    claims = header.binaryblock + b"\0" * 4
    message = refusal(model, data_uri(claims))
    assert re.search(r"^row 0: image 0 \(base64 NIfTI, 352 bytes\) cannot be read: .*32000×32000×1000", message)


def test_s3_uris_are_fetched_and_limited(logged: dict[str, Any], moto_server: Any,  # noqa: F811
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    model = logged["model"]
    bucket = moto_server.bucket()
    client = moto_server.client()
    client.put_object(Bucket=bucket, Key="scans/ct.nii.gz", Body=nifti_bytes())
    client.put_object(Bucket=bucket, Key="scans/x.png", Body=png_bytes())
    monkeypatch.setenv("RADFM_S3_ENDPOINT_URL", moto_server.endpoint_url)
    import pydicom
    from pydicom.uid import generate_uid

    series_uid = generate_uid()
    for k in range(3):  # a DICOM series under a prefix: three slices 2.5 mm apart
        ds = pydicom.dcmread(_testdata("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.InstanceNumber = series_uid, generate_uid(), k + 1
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 2.5 * k]
        buf = io.BytesIO()
        ds.save_as(buf)
        client.put_object(Bucket=bucket, Key=f"series/slice_{k}.dcm", Body=buf.getvalue())
    answer(model, f"s3://{bucket}/scans/ct.nii.gz", f"s3://{bucket}/scans/x.png", f"s3://{bucket}/series/")
    assert refusal(model, f"s3://{bucket}/scans/none.nii.gz").endswith(
        f"row 0: image s3://{bucket}/scans/none.nii.gz cannot be read: file not found")
    assert "names no object" in refusal(model, f"s3://{bucket}")
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "100")
    assert re.search(rf"row 0: image s3://{bucket}/scans/x.png has [\d,]+ bytes, over the limit of 100 per image",
                     refusal(model, f"s3://{bucket}/scans/x.png"))
