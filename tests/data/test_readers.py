"""Readers on real files that the installed packages ship (pydicom, pydicom-data, nibabel, matplotlib)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import nibabel.testing
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from radfm.data.dicom_order import SliceOrderError, order_slices, series_order
from radfm.data.errors import SampleError
from radfm.data.importers import dicom_to_array, ingest_dicom_folder
from radfm.data.readers import SAFE_DICOM_TAGS, ImageData, detect_format, read_image

NIB_DATA = Path(nibabel.testing.data_path)
MPL_DATA = Path(__import__("matplotlib").get_data_path()) / "sample_data"


def dcm_file(name: str) -> Path:
    return Path(get_testdata_file(name))


def raw_hu(path: Path, frame: int | None = None) -> np.ndarray:
    """pydicom's own pixels × RescaleSlope + RescaleIntercept (the reference for our reader)."""
    ds = pydicom.dcmread(path)
    px = ds.pixel_array.astype(np.float64)
    return px * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


# --- DICOM: single file, multi-frame, colour, sniffing -----------------------------------------------------


def test_ct_small_is_rescaled_to_hounsfield() -> None:
    img = read_image(dcm_file("CT_small.dcm"), "ct1")
    assert isinstance(img, ImageData)
    assert img.array.dtype == np.float32 and img.array.shape == (1, 128, 128, 1)
    assert img.modality == "CT" and not img.is_3d
    assert img.spacing == pytest.approx((0.661468, 0.661468, 5.0))
    np.testing.assert_allclose(img.array[0, :, :, 0], raw_hu(dcm_file("CT_small.dcm")))
    assert img.array.min() < -800  # air in HU, so the intercept really was applied


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "RG1_UNCI.dcm"])
def test_meta_holds_no_patient_identifiers(name: str) -> None:
    path = dcm_file(name)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta = read_image(path, "s").meta
    allowed = set(SAFE_DICOM_TAGS) | {"format", "frames", "slices", "slice_order"}
    assert set(meta) <= allowed
    text = repr(meta)
    for tag in ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "StudyInstanceUID",
                "SeriesInstanceUID", "SOPInstanceUID", "StudyDate", "AccessionNumber"):
        value = str(ds.get(tag, "") or "")
        if len(value) > 3:
            assert value not in text, f"{tag} leaked into meta"
    # MR_small's institution is 'TOSHIBA', a prefix of its (allowed) manufacturer: compare whole values
    assert str(ds.get("InstitutionName", "")) not in {str(v) for v in meta.values()}


def test_mr_small() -> None:
    img = read_image(dcm_file("MR_small.dcm"))
    assert img.array.shape == (1, 64, 64, 1) and img.modality == "MR"
    assert img.spacing == pytest.approx((0.3125, 0.3125, 0.8))
    np.testing.assert_allclose(img.array[0, :, :, 0], raw_hu(dcm_file("MR_small.dcm")))


def test_cr_chest_monochrome1_is_inverted() -> None:
    path = dcm_file("RG1_UNCI.dcm")  # pydicom-data: a real CR chest film, 1955×1841, MONOCHROME1
    img = read_image(path, "cxr")
    assert img.array.shape == (1, 1955, 1841, 1) and img.modality == "CR"
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    # MONOCHROME1 draws high values dark: after the flip, bright (bone) is high like every other image
    np.testing.assert_array_equal(img.array[0, :, :, 0], raw.max() + raw.min() - raw)
    assert img.spacing == (1.0, 1.0, 1.0)  # the file says PixelSpacing 0\0: unit spacing, never zero


def test_large_mr_and_jpeg2000_decode_the_same() -> None:
    unc = read_image(dcm_file("MR2_UNCI.dcm"))
    assert unc.array.shape == (1, 1024, 1024, 1) and unc.modality == "MR"
    np.testing.assert_allclose(unc.array[0, :, :, 0], raw_hu(dcm_file("MR2_UNCI.dcm")), rtol=1e-6)
    j2k = read_image(dcm_file("MR2_J2KI.dcm"))  # lossless JPEG 2000, decoded through Pillow
    np.testing.assert_allclose(j2k.array, unc.array, rtol=1e-6)


def test_multiframe_mr_becomes_depth() -> None:
    path = dcm_file("emri_small.dcm")
    img = read_image(path, "mf")
    assert img.array.shape == (1, 64, 64, 10) and img.is_3d and img.meta["frames"] == 10
    px = pydicom.dcmread(path).pixel_array  # (frames, rows, cols)
    np.testing.assert_array_equal(img.array[0], np.transpose(px, (1, 2, 0)))


def test_enhanced_ct_frames_sorted_and_rescaled_from_functional_groups() -> None:
    path = dcm_file("eCT_Supplemental.dcm")
    img = read_image(path)
    px = pydicom.dcmread(path).pixel_array.astype(np.float32)
    # frames are stored against the slice normal; the intercept (-1024) lives only in the functional groups
    np.testing.assert_array_equal(img.array[0, :, :, 0], px[1] - 1024)
    np.testing.assert_array_equal(img.array[0, :, :, 1], px[0] - 1024)
    assert img.meta["slice_order"] == "ImagePositionPatient"
    assert img.spacing == pytest.approx((0.388672, 0.388672, 10.0))


def test_colour_dicom_has_three_channels() -> None:
    img = read_image(dcm_file("US1_UNCI.dcm"))
    assert img.array.shape == (3, 480, 640, 1) and img.modality == "US"
    px = pydicom.dcmread(dcm_file("US1_UNCI.dcm")).pixel_array
    np.testing.assert_array_equal(img.array[:, :, :, 0], np.moveaxis(px, -1, 0))


@pytest.mark.parametrize("name", ["IM0001", "1.2.840.113619.2.55.3.12345"])
def test_dicom_without_suffix_is_sniffed(tmp_path: Path, name: str) -> None:
    dst = tmp_path / name
    shutil.copy(dcm_file("CT_small.dcm"), dst)
    assert detect_format(dst) == "dicom"
    np.testing.assert_array_equal(read_image(dst).array, read_image(dcm_file("CT_small.dcm")).array)


# --- DICOM series folders ----------------------------------------------------------------------------------

# a coronal plane: the slice normal is +y, so sorting on z (a common shortcut) would be wrong
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def write_series(folder: Path, *, positions: bool = True, seed: int = 0) -> list[dict]:
    """Split emri_small's 10 frames into slice files with shuffled names, reversed InstanceNumbers, and a
    different rescale per slice. Returns, in true spatial order, what each slice should decode to."""
    src = pydicom.dcmread(dcm_file("emri_small.dcm"))
    frames = src.pixel_array
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"{n:08x}.dcm" for n in rng.permutation(1000)[:10]]
    truth = []
    for k in range(10):
        ds = pydicom.dcmread(dcm_file("emri_small.dcm"))
        del ds.NumberOfFrames
        ds.PixelData = np.ascontiguousarray(frames[k]).tobytes()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = 10 - k  # reversed: InstanceNumber order disagrees with spatial order
        ds.RescaleSlope, ds.RescaleIntercept = 1.0 + 0.25 * k, -100.0 + 7 * k
        if positions:
            ds.ImageOrientationPatient = CORONAL
            ds.ImagePositionPatient = [5.0, -20.0 + 1.5 * k, 40.0]
        ds.save_as(folder / names[k], enforce_file_format=True)
        truth.append({"file": folder / names[k], "k": k})
    for t in truth:  # reference: what pydicom itself decodes from each written file, rescaled
        t["hu"] = raw_hu(t["file"])
    return truth


def test_series_folder_sorted_by_position_along_normal_with_rescale(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "series")
    img = read_image(tmp_path / "series", "ser")
    assert img.array.shape == (1, 64, 64, 10) and img.modality == "MR"
    assert img.meta["slice_order"] == "ImagePositionPatient" and img.meta["slices"] == 10
    for d, t in enumerate(truth):  # spatial order is k order
        np.testing.assert_allclose(img.array[0, :, :, d], t["hu"], rtol=1e-6)
    assert img.spacing[2] == pytest.approx(1.5)
    assert not np.array_equal(img.array[0, :, :, 0], img.array[0, :, :, -1])


def test_series_falls_back_to_instance_number(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "series", positions=False)
    for t in truth:  # emri_small carries no position tags; make sure none slipped in
        assert "ImagePositionPatient" not in pydicom.dcmread(t["file"], stop_before_pixels=True)
    img = read_image(tmp_path / "series")
    assert img.meta["slice_order"] == "InstanceNumber"
    for d, t in enumerate(reversed(truth)):  # InstanceNumber = 10 - k
        np.testing.assert_allclose(img.array[0, :, :, d], t["hu"], rtol=1e-6)


def test_series_with_mixed_series_uid_is_rejected(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "series")
    ds = pydicom.dcmread(truth[3]["file"])
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(truth[3]["file"], enforce_file_format=True)
    with pytest.raises(SampleError) as e:
        read_image(tmp_path / "series", "mixed-1")
    assert "mixed-1" in str(e.value) and "series" in str(e.value) and "SeriesInstanceUID" in e.value.reason


def test_series_with_mismatched_rows_cols_is_rejected(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "series")
    ds = pydicom.dcmread(truth[5]["file"])
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:32, :48]).tobytes()
    ds.Rows, ds.Columns = 32, 48
    ds.save_as(truth[5]["file"], enforce_file_format=True)
    with pytest.raises(SampleError) as e:
        read_image(tmp_path / "series", "mm-2")
    assert "mm-2" in str(e.value) and "mismatched" in e.value.reason
    assert truth[5]["file"].name in e.value.reason and "32×48" in e.value.reason


def test_series_with_duplicate_positions_is_rejected(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "series")
    ds = pydicom.dcmread(truth[2]["file"])
    ds.ImagePositionPatient = [5.0, -20.0 + 1.5 * 3, 40.0]  # the same place as slice 3
    ds.save_as(truth[2]["file"], enforce_file_format=True)
    with pytest.raises(SampleError, match="duplicate slice positions"):
        read_image(tmp_path / "series", "dup")


def test_series_with_a_non_dicom_file_names_it(tmp_path: Path) -> None:
    write_series(tmp_path / "series")
    (tmp_path / "series" / "notes.txt").write_text("reported by Dr X")
    with pytest.raises(SampleError) as e:
        read_image(tmp_path / "series", "junk")
    assert "notes.txt" in e.value.reason


# --- one slice order for the reader and the DICOM importer (radfm.data.dicom_order) ------------------------


@pytest.mark.parametrize("rule", ["ImagePositionPatient", "InstanceNumber", "file name"])
def test_reader_and_importer_order_a_shuffled_series_alike(tmp_path: Path, rule: str) -> None:
    """File names, InstanceNumbers and positions each give another order; every rule of the shared order is
    followed the same way by read_image (a series folder) and the importer (dicom_to_array, ingest)."""
    truth = write_series(tmp_path / "dicom" / "series", positions=rule == "ImagePositionPatient", seed=3)
    if rule == "file name":
        for t in truth:
            ds = pydicom.dcmread(t["file"])
            del ds.InstanceNumber
            ds.save_as(t["file"], enforce_file_format=True)
    by_name = sorted(truth, key=lambda t: t["file"].name)
    expected = {"ImagePositionPatient": truth, "InstanceNumber": truth[::-1], "file name": by_name}[rule]
    if rule != "file name":  # so the test tells the rule under test from the fallback to names
        assert [t["k"] for t in expected] != [t["k"] for t in by_name]

    img = read_image(tmp_path / "dicom" / "series", "ser")
    assert img.meta["slice_order"] == rule
    for d, t in enumerate(expected):
        np.testing.assert_allclose(img.array[0, :, :, d], t["hu"], rtol=1e-6)

    shuffled = [truth[i]["file"] for i in np.random.default_rng(7).permutation(len(truth))]
    image = dicom_to_array(shuffled, "ser")  # the importer's path, given the files in another order
    assert image.is_3d and image.spacing[2] == pytest.approx(img.spacing[2])
    np.testing.assert_array_equal(image.array, img.array[0])

    (tmp_path / "reports.csv").write_text("folder,report\nseries,Fine.\n")
    samples, _ = ingest_dicom_folder(tmp_path / "dicom", tmp_path / "reports.csv", tmp_path / "out", salt="s")
    vol = np.asarray(nib.load(tmp_path / "out" / samples[0].images[0].path).dataobj)
    np.testing.assert_allclose(vol, img.array[0], rtol=1e-6)


def test_slice_order_rules() -> None:
    axial = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    names = ["c.dcm", "a.dcm", "d.dcm", "b.dcm"]
    # Coronal: only y (the normal) orders the slices; z, the usual shortcut, would give another order.
    coronal = order_slices([[0, 3, 9], [0, 1, 5], [0, 2, 1], [0, 0, 7]], CORONAL, [1, 2, 3, 4], names)
    assert list(coronal.order) == [3, 1, 2, 0] and coronal.how == "ImagePositionPatient"
    assert coronal.spacing == pytest.approx(1.0)
    # One slice without a position: InstanceNumber, equal numbers by file name.
    by_number = order_slices([[0, 0, 1], None, [0, 0, 3], [0, 0, 2]], axial, [2, 1, 2, "1"], names)
    assert list(by_number.order) == [1, 3, 0, 2] and by_number.how == "InstanceNumber"
    assert by_number.spacing is None
    # One slice without an InstanceNumber either (or an unusable orientation): file names.
    by_name = order_slices([None] * 4, axial, [2, None, 3, 4], names)
    assert list(by_name.order) == [1, 3, 0, 2] and by_name.how == "file name"
    assert order_slices([[0, 0, 1]] * 4, [0, 0, 0, 0, 0, 0], None, names).how == "file name"
    # Without numbers or names (the frames of one file): the order given.
    assert order_slices([None, None], axial).how == "as given"
    with pytest.raises(SliceOrderError, match="duplicate slice positions"):
        order_slices([[0, 0, 1], [0, 0, 2], [0, 0, 1]], axial, [1, 2, 3], ["a", "b", "c"])


def test_series_order_does_not_depend_on_the_order_files_are_given(tmp_path: Path) -> None:
    truth = write_series(tmp_path / "series", seed=1)
    headers = [pydicom.dcmread(t["file"], stop_before_pixels=True) for t in truth]
    names = [t["file"].name for t in truth]
    for perm in np.random.default_rng(0).permutation(np.tile(np.arange(10), (5, 1)), axis=1):
        order = series_order([headers[i] for i in perm], [names[i] for i in perm])
        assert [int(perm[i]) for i in order.order] == list(range(10))  # spatial order is k order


# --- NIfTI, PNG/JPG, NPY/NPZ -------------------------------------------------------------------------------


def test_nifti_3d_canonical_with_zooms() -> None:
    path = NIB_DATA / "anatomical.nii"
    img = read_image(path)
    canon = nib.as_closest_canonical(nib.load(path))
    assert img.array.shape == (1, *canon.shape) and img.meta["orientation"] == "RAS"
    np.testing.assert_allclose(img.array[0], canon.get_fdata(), rtol=1e-6)
    assert img.spacing == pytest.approx(canon.header.get_zooms()[:3])
    assert img.modality is None


def test_nifti_4d_gz_keeps_the_first_volume() -> None:
    path = NIB_DATA / "example4d.nii.gz"
    img = read_image(path)
    canon = nib.as_closest_canonical(nib.load(path))
    assert img.array.shape == (1, 128, 96, 24) and img.meta["volumes"] == 2
    np.testing.assert_allclose(img.array[0], canon.get_fdata()[..., 0], rtol=1e-6)
    assert img.spacing == pytest.approx((2.0, 2.0, 2.2), rel=1e-5)


def test_jpg_rgb_photo() -> None:
    path = MPL_DATA / "grace_hopper.jpg"
    img = read_image(path)
    ref = np.asarray(Image.open(path).convert("RGB"))
    assert img.array.shape == (3, *ref.shape[:2], 1)
    np.testing.assert_array_equal(img.array[..., 0], np.moveaxis(ref, -1, 0))


def test_png_rgba_drops_alpha() -> None:
    img = read_image(MPL_DATA / "logo2.png")
    assert img.array.shape[0] == 3 and img.array.shape[-1] == 1


def test_grey_png_from_a_real_ct(tmp_path: Path) -> None:
    hu = raw_hu(dcm_file("CT_small.dcm"))
    u16 = np.clip(hu + 1024, 0, 65535).astype(np.uint16)
    Image.fromarray(u16).save(tmp_path / "ct16.png")
    img16 = read_image(tmp_path / "ct16.png")
    assert img16.array.shape == (1, 128, 128, 1)
    np.testing.assert_array_equal(img16.array[0, :, :, 0], u16)
    u8 = (np.clip((hu + 1000) / 2000, 0, 1) * 255).astype(np.uint8)
    Image.fromarray(np.stack([u8] * 3, -1)).save(tmp_path / "grey_as_rgb.jpg", quality=100)
    Image.fromarray(u8).save(tmp_path / "grey.png")
    assert read_image(tmp_path / "grey.png").array.shape == (1, 128, 128, 1)
    # a JPEG of an R=G=B radiograph decodes to equal channels, so it comes back as one grey channel
    grey = read_image(tmp_path / "grey_as_rgb.jpg")
    assert grey.array.shape == (1, 128, 128, 1) and grey.meta["grey_from_rgb"]


def test_npy_and_npz_layouts(tmp_path: Path) -> None:
    vol = read_image(NIB_DATA / "anatomical.nii").array[0]  # real H×W×D data
    np.save(tmp_path / "v.npy", vol)
    np.save(tmp_path / "s.npy", vol[..., 0])
    np.savez(tmp_path / "named.npz", other=np.zeros(3), image=vol, spacing=np.array([0.5, 0.7, 2.0]))
    np.savez(tmp_path / "first.npz", vol.astype(np.int16))
    assert read_image(tmp_path / "v.npy").array.shape == (1, *vol.shape)
    assert read_image(tmp_path / "s.npy").array.shape == (1, *vol.shape[:2], 1)
    named = read_image(tmp_path / "named.npz")
    assert named.meta["key"] == "image" and named.spacing == pytest.approx((0.5, 0.7, 2.0))
    np.testing.assert_array_equal(named.array[0], vol)
    assert read_image(tmp_path / "first.npz").meta["key"] == "arr_0"


def test_remote_url_file_and_series_folder(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/ct.dcm", dcm_file("CT_small.dcm").read_bytes())
    fs.pipe("/bucket/vol.nii.gz", (NIB_DATA / "example4d.nii.gz").read_bytes())
    for t in write_series(tmp_path / "series"):
        fs.pipe(f"/bucket/series/{t['file'].name}", t["file"].read_bytes())
    # memory:// takes the same fsspec path as s3:// (s3fs), without a server
    np.testing.assert_array_equal(read_image("memory://bucket/ct.dcm").array,
                                  read_image(dcm_file("CT_small.dcm")).array)
    assert read_image("memory://bucket/vol.nii.gz").array.shape == (1, 128, 96, 24)
    np.testing.assert_array_equal(read_image("memory://bucket/series").array,
                                  read_image(tmp_path / "series").array)
    with pytest.raises(SampleError) as e:
        read_image("memory://bucket/absent.dcm", "r1")
    assert e.value.file == "memory://bucket/absent.dcm" and "r1" in str(e.value)


def test_s3_file_and_series_folder_through_moto(moto_server, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    s3fs = pytest.importorskip("s3fs")
    from radfm.data.cache import TensorCache

    bucket = moto_server.bucket()
    client = moto_server.client()
    client.put_object(Bucket=bucket, Key="scans/ct.dcm", Body=dcm_file("CT_small.dcm").read_bytes())
    client.put_object(Bucket=bucket, Key="scans/anat.nii", Body=(NIB_DATA / "anatomical.nii").read_bytes())
    for t in write_series(tmp_path / "series"):
        client.put_object(Bucket=bucket, Key=f"scans/series/{t['file'].name}", Body=t["file"].read_bytes())
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint_url)  # s3fs reads it when its client starts
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        np.testing.assert_array_equal(read_image(f"s3://{bucket}/scans/ct.dcm", "s3-1").array,
                                      read_image(dcm_file("CT_small.dcm")).array)
        assert read_image(f"s3://{bucket}/scans/anat.nii").array.shape == (1, 33, 41, 25)
        np.testing.assert_array_equal(read_image(f"s3://{bucket}/scans/series").array,
                                      read_image(tmp_path / "series").array)
        with pytest.raises(SampleError, match="not found"):
            read_image(f"s3://{bucket}/scans/absent.nii.gz", "s3-2")
        cache = TensorCache(tmp_path / "cache")  # remote content hash = local content hash of the same bytes
        local_ct = cache.content_hash(dcm_file("CT_small.dcm"))
        assert cache.content_hash(f"s3://{bucket}/scans/ct.dcm") == local_ct
        assert cache.content_hash(f"s3://{bucket}/scans/series") == cache.content_hash(tmp_path / "series")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


# --- every error path names the sample, the file and the reason ---------------------------------------------


def _truncated(src: Path, dst: Path, frac: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * frac)])
    return dst


def _broken(kind: str, tmp: Path) -> tuple[Path, str]:
    """A broken file of ``kind`` and a word its reason must contain."""
    if kind == "missing":
        return tmp / "nowhere.nii.gz", "not found"
    if kind == "unknown_suffix":
        (tmp / "scan.xyz").write_bytes(b"not an image at all" * 10)
        return tmp / "scan.xyz", "unsupported format"
    if kind == "truncated_dicom":
        return _truncated(dcm_file("CT_small.dcm"), tmp / "ct_trunc.dcm"), "corrupt or truncated"
    if kind == "truncated_multiframe":
        return _truncated(dcm_file("emri_small.dcm"), tmp / "emri_trunc.dcm", 0.7), "corrupt or truncated"
    if kind == "garbage_niigz":
        with gzip.open(tmp / "garbage.nii.gz", "wb") as f:
            f.write(np.random.default_rng(0).bytes(4096))
        return tmp / "garbage.nii.gz", "corrupt"
    if kind == "garbage_not_gzip":
        (tmp / "plain.nii.gz").write_bytes(b"\x00garbage" * 100)
        return tmp / "plain.nii.gz", "corrupt"
    if kind == "truncated_nii":
        return _truncated(NIB_DATA / "anatomical.nii", tmp / "anat_trunc.nii"), "corrupt or truncated"
    if kind == "truncated_png":
        Image.open(MPL_DATA / "logo2.png").save(tmp / "full.png")
        return _truncated(tmp / "full.png", tmp / "cut.png"), "corrupt or truncated"
    if kind == "empty_file":
        (tmp / "empty.png").write_bytes(b"")
        return tmp / "empty.png", "empty"
    if kind == "zero_size":  # PIL refuses to write (and to open) a 0×0 PNG, so the 0-size array is an npy
        np.save(tmp / "zero.npy", np.zeros((0, 64), np.float32))
        return tmp / "zero.npy", "zero-size"
    if kind == "nan":
        a = read_image(NIB_DATA / "anatomical.nii").array[0]
        a[3, 4, 5] = np.nan
        np.save(tmp / "nan.npy", a)
        return tmp / "nan.npy", "NaN"
    if kind == "inf":
        a = np.ones((8, 8), np.float32)
        a[0, 0] = np.inf
        np.save(tmp / "inf.npy", a)
        return tmp / "inf.npy", "infinite"
    if kind == "constant":
        np.save(tmp / "const.npy", np.full((16, 16, 8), 42.0, np.float32))
        return tmp / "const.npy", "constant"
    if kind == "object_npy":
        np.save(tmp / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return tmp / "obj.npy", "Python objects"
    if kind == "empty_npz":
        np.savez(tmp / "none.npz")
        return tmp / "none.npz", "no arrays"
    if kind == "dicom_without_pixels":
        return dcm_file("rtplan.dcm"), "no image"
    if kind == "undecodable_dicom":  # JPEG Lossless without gdcm/pylibjpeg installed
        return dcm_file("JPEG-LL.dcm"), "decode"
    if kind == "empty_folder":
        (tmp / "series").mkdir()
        return tmp / "series", "no files"
    raise AssertionError(kind)


BROKEN = ["missing", "unknown_suffix", "truncated_dicom", "truncated_multiframe", "garbage_niigz",
          "garbage_not_gzip", "truncated_nii", "truncated_png", "empty_file", "zero_size", "nan", "inf",
          "constant", "object_npy", "empty_npz", "dicom_without_pixels", "undecodable_dicom", "empty_folder"]


@pytest.mark.parametrize("kind", BROKEN)
def test_bad_input_raises_sample_error_naming_sample_file_and_reason(tmp_path: Path, kind: str) -> None:
    path, word = _broken(kind, tmp_path)
    if kind == "undecodable_dicom":
        try:
            _ = pydicom.dcmread(path).pixel_array
            pytest.skip("a JPEG Lossless decoder is installed here")
        except RuntimeError:
            pass
    with pytest.raises(SampleError) as e:
        read_image(path, f"case-{kind}")
    msg = str(e.value)
    assert f"case-{kind}" in msg and path.name in msg and word.lower() in msg.lower(), msg
    assert e.value.sample_id == f"case-{kind}" and e.value.file == str(path) and e.value.reason


def test_constant_is_allowed_on_request(tmp_path: Path) -> None:
    path, _ = _broken("constant", tmp_path)
    img = read_image(path, allow_constant=True)
    assert img.array.shape == (1, 16, 16, 8) and float(img.array.max()) == 42.0


def test_nifti_sagittal_stack_keeps_its_slices_last(tmp_path: Path) -> None:
    """A 16-slice sagittal stack is canonicalised (axes point R, A, S) but its slice axis stays the depth."""
    arr = np.random.default_rng(0).random((32, 24, 16)).astype(np.float32)  # rows, columns, 16 sagittal slices
    # Rows run inferior, columns posterior, slices left→right (the slice axis is the RAS x axis).
    affine = np.array([[0, 0, 2.5, 0], [0, -1.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    path = tmp_path / "sag.nii.gz"
    nib.save(nib.Nifti1Image(arr, affine), path)
    img = read_image(path)
    assert img.array.shape == (1, 24, 32, 16)  # (A, S, R): in-plane first, the 16 slices last
    assert img.meta["orientation"] == "ASR"
    assert img.spacing == pytest.approx((1.0, 1.0, 2.5))
    canon = nib.as_closest_canonical(nib.load(path)).get_fdata()  # (R, A, S)
    np.testing.assert_allclose(img.array[0], np.transpose(canon, (1, 2, 0)), rtol=1e-6)
