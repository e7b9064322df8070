"""Bad input at the table importer (issue 25), one named case each: links and paths out of the image root,
missing and broken files, oversized headers, empty and malformed tables. DICOM: test_import_bad_dicom.py.

Each case asserts that the error names the sample (or row) and the file and says why, in raise mode and in
quarantine mode (where rows in = rows written + quarantined), and that nothing from outside the root, and no
symbolic link, ends up under the output folder. Real files only: PIL, nibabel and pydicom's test files.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from radfm.data.errors import Quarantine, SampleError
from radfm.data.importers import ingest_table
from radfm.data.manifest import read_manifest

SECRET = b"-----BEGIN PRIVATE KEY----- not for the data set"


# ----------------------------------------------------------------------------------------------- helpers


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)).save(path)
    return path


def _outside(tmp_path: Path) -> Path:
    """A private file and folder next to (not under) the image root."""
    folder = tmp_path / "private"
    folder.mkdir(exist_ok=True)
    (folder / "id_rsa").write_bytes(SECRET)
    return folder


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    _png(src / "good.png")
    return src


def _no_leak(out: Path) -> None:
    """No symbolic link and no byte of the private file anywhere under ``out``."""
    for dirpath, dirnames, filenames in os.walk(out):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            assert not path.is_symlink(), f"a link was written: {path}"
            if path.is_file():
                assert SECRET not in path.read_bytes(), f"outside bytes copied into {path}"


def _both(tmp_path: Path, src: Path, bad: str, reason: str, file: str | None = None, **kw: object
          ) -> tuple[SampleError, Quarantine]:
    """A table of one good row and one bad row (``bad``: its image as written) through ingest, raise mode then
    quarantine mode. Raise: a SampleError for sample ``bad`` naming ``file`` (default: the image as written),
    its row and ``reason``. Quarantine: the good row kept, the bad one recorded alike, 2 in = 1 out + 1."""
    table = src / "t.csv"
    table.write_text("id,image,question,answer\n"
                     "good,good.png,Is there a nodule?,No.\n"
                     f'bad,"{bad}",Is there a nodule?,Yes.\n')
    with pytest.raises(SampleError) as err:
        ingest_table(table, tmp_path / "raise", **kw)
    e = err.value
    assert e.sample_id == "bad" and e.file == (file or bad), str(e)
    assert "t.csv row 3" in str(e) and reason in str(e), str(e)
    assert not (tmp_path / "raise" / "manifest.jsonl").exists()

    out = tmp_path / "quarantine"
    samples, quarantine = ingest_table(table, out, on_error="quarantine", **kw)
    assert [s.id for s in samples] == ["good"] and len(quarantine) == 1
    assert len(samples) + len(quarantine) == 2  # rows in = rows written + quarantined
    item = quarantine.items[0]
    assert (item.sample_id, item.file) == ("bad", file or bad) and reason in item.reason
    assert [s.id for s in read_manifest(out / "manifest.jsonl")] == ["good"]
    report = [json.loads(line) for line in (out / "manifest.quarantine.jsonl").read_text().splitlines()]
    assert len(report) == 1 and report[0]["sample_id"] == "bad" and reason in report[0]["reason"]
    _no_leak(tmp_path / "raise")
    _no_leak(out)
    return e, quarantine


# ------------------------------------------------------------------------------------- table: containment


def test_symlink_file_out_of_root_is_refused_and_not_copied(tmp_path: Path) -> None:
    src = _src(tmp_path)
    os.symlink(_outside(tmp_path) / "id_rsa", src / "a.png")
    _both(tmp_path, src, "a.png", "resolves outside the image root")
    assert not list((tmp_path / "quarantine").rglob("a.png"))


def test_symlink_to_etc_passwd_is_refused(tmp_path: Path) -> None:
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd on this system")
    src = _src(tmp_path)
    os.symlink("/etc/passwd", src / "a.png")
    _both(tmp_path, src, "a.png", "resolves outside the image root")
    assert not list(tmp_path.joinpath("quarantine").rglob("a.png"))


def test_symlink_folder_out_of_root_is_refused_whole(tmp_path: Path) -> None:
    src = _src(tmp_path)
    os.symlink(_outside(tmp_path), src / "series", target_is_directory=True)
    _both(tmp_path, src, "series", "resolves outside the image root")
    assert not (tmp_path / "quarantine" / "images" / "t" / "series").exists()


def test_link_out_inside_a_named_folder_is_refused(tmp_path: Path) -> None:
    """A real series folder under the root holding one link out: the whole image is refused, nothing copied."""
    src = _src(tmp_path)
    _png(src / "series" / "slice0.png")
    os.symlink(_outside(tmp_path) / "id_rsa", src / "series" / "slice1.png")
    e, _ = _both(tmp_path, src, "series", "resolves outside the image root", file="series/slice1.png")
    assert "series/slice1.png" in str(e)
    assert not (tmp_path / "quarantine" / "images" / "t" / "series").exists()


def test_symlink_inside_root_is_copied_as_a_regular_file(tmp_path: Path) -> None:
    src = _src(tmp_path)
    real = _png(src / "real" / "a.png", seed=3)
    os.symlink(real, src / "alias.png")
    os.symlink(src / "real", src / "alias_dir", target_is_directory=True)
    (src / "t.csv").write_text("id,image,question,answer\n"
                               "r1,alias.png,Is there a nodule?,No.\n"
                               "r2,alias_dir/a.png,Is there a nodule?,No.\n")
    for link in (False, True):
        out = tmp_path / f"out-{link}"
        samples, quarantine = ingest_table(src / "t.csv", out, link=link)
        assert len(samples) == 2 and len(quarantine) == 0
        # Both spellings lead to one file, named where it really is, copied once as a regular file.
        assert {s.images[0].path for s in samples} == {"images/t/real/a.png"}
        placed = out / "images" / "t" / "real" / "a.png"
        assert placed.is_file() and not placed.is_symlink() and placed.read_bytes() == real.read_bytes()
        _no_leak(out)


def test_dotdot_escape_is_refused(tmp_path: Path) -> None:
    src = _src(tmp_path)
    _png(tmp_path / "outside.png")
    _both(tmp_path, src, "../outside.png", "resolves outside the image root")


def test_dotdot_through_a_subfolder_that_stays_inside_is_accepted(tmp_path: Path) -> None:
    src = _src(tmp_path)
    _png(src / "sub" / "x.png")
    (src / "t.csv").write_text("id,image,question,answer\nr1,sub/../good.png,Q?,A.\n")
    samples, _ = ingest_table(src / "t.csv", tmp_path / "out")
    assert samples[0].images[0].path == "images/t/good.png"


def test_absolute_path_outside_is_refused(tmp_path: Path) -> None:
    src = _src(tmp_path)
    outside = _png(tmp_path / "elsewhere" / "x.png")
    _both(tmp_path, src, str(outside), "resolves outside the image root")


def test_image_root_itself_is_refused(tmp_path: Path) -> None:
    src = _src(tmp_path)
    _both(tmp_path, src, ".", "names the image root itself")


def test_path_with_a_nul_byte_is_one_bad_row(tmp_path: Path) -> None:
    src = _src(tmp_path)
    (src / "t.jsonl").write_text(json.dumps({"id": "bad", "image": "a\u0000.png", "question": "Q?", "answer": "A."})
                                 + "\n")
    with pytest.raises(SampleError, match="not a usable path") as err:
        ingest_table(src / "t.jsonl", tmp_path / "out")
    assert err.value.sample_id == "bad" and "t.jsonl line 1" in str(err.value)
    _, quarantine = ingest_table(src / "t.jsonl", tmp_path / "q", on_error="quarantine")
    assert len(quarantine) == 1


def test_missing_image_is_named(tmp_path: Path) -> None:
    src = _src(tmp_path)
    _both(tmp_path, src, "nope/missing.png", "not found")


def test_dangling_link_is_not_found(tmp_path: Path) -> None:
    src = _src(tmp_path)
    os.symlink(src / "gone.png", src / "dangling.png")
    _both(tmp_path, src, "dangling.png", "not found")


def test_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    src = _src(tmp_path)
    try:
        os.mkfifo(src / "pipe.png")
    except (AttributeError, OSError) as exc:
        pytest.skip(f"no named pipes here ({exc})")
    _both(tmp_path, src, "pipe.png", "not a regular file or folder")


def test_copy_leaves_earlier_links_in_the_output_replaced(tmp_path: Path) -> None:
    """A link left in the output folder (by hand, or an older radfm) is replaced by the file, not written
    through: the outside file keeps its bytes."""
    src = _src(tmp_path)
    out = tmp_path / "out"
    victim = _outside(tmp_path) / "id_rsa"
    (out / "images" / "t").mkdir(parents=True)
    os.symlink(victim, out / "images" / "t" / "good.png")
    (src / "t.csv").write_text("id,image,question,answer\nr1,good.png,Q?,A.\n")
    ingest_table(src / "t.csv", out)
    assert victim.read_bytes() == SECRET
    assert not (out / "images" / "t" / "good.png").is_symlink()


# ----------------------------------------------------------------------------------- table: broken images


def test_truncated_png_is_refused_at_ingest(tmp_path: Path) -> None:
    src = _src(tmp_path)
    data = _png(tmp_path / "whole.png", seed=5).read_bytes()
    (src / "cut.png").write_bytes(data[: len(data) // 2])
    _both(tmp_path, src, "cut.png", "truncated")
    assert not list((tmp_path / "quarantine").rglob("cut.png"))  # never copied


def test_png_with_wrong_magic_bytes_is_refused(tmp_path: Path) -> None:
    src = _src(tmp_path)
    (src / "fake.png").write_bytes(b"GIF89a but not really an image at all" * 4)
    _both(tmp_path, src, "fake.png", "wrong magic")


def test_empty_image_file_is_refused(tmp_path: Path) -> None:
    src = _src(tmp_path)
    (src / "empty.png").write_bytes(b"")
    _both(tmp_path, src, "empty.png", "empty")


def test_unknown_suffix_is_refused_not_copied(tmp_path: Path) -> None:
    src = _src(tmp_path)
    (src / "scan.bin").write_bytes((src / "good.png").read_bytes())
    _both(tmp_path, src, "scan.bin", "unsupported format")


def _nifti_header(shape: tuple[int, ...], dtype: type = np.int16) -> bytes:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(np.eye(4), code=1)
    return hdr.binaryblock + b"\x00" * 4  # the 348-byte header and an empty extension flag; no voxels


def test_nifti_header_claiming_a_giant_shape_is_refused_before_allocation(tmp_path: Path) -> None:
    """The issue's probe: a gzipped header-only .nii.gz (about 70 bytes) claiming 32000×32000×1000 voxels."""
    src = _src(tmp_path)
    (src / "giant.nii.gz").write_bytes(gzip.compress(_nifti_header((32000, 32000, 1000))))
    assert (src / "giant.nii.gz").stat().st_size < 200
    _both(tmp_path, src, "giant.nii.gz", "max_voxels")


def test_truncated_nifti_is_refused(tmp_path: Path) -> None:
    src = _src(tmp_path)
    (src / "cut.nii").write_bytes(_nifti_header((64, 64, 16)) + b"\x01" * 1000)
    _both(tmp_path, src, "cut.nii", "truncated")


def test_npy_with_wrong_magic_is_refused(tmp_path: Path) -> None:
    src = _src(tmp_path)
    (src / "vol.npy").write_bytes(b"\x93NUMPX" + b"\x00" * 100)
    _both(tmp_path, src, "vol.npy", "wrong magic")


def test_limits_given_to_ingest_refuse_a_real_image(tmp_path: Path) -> None:
    """``limits`` reaches the probe: a real 16×16 PNG is over a 100-voxel limit."""
    from radfm.data.limits import ImageLimits

    src = tmp_path / "src"
    _png(src / "good.png")
    _png(src / "big.png")
    (src / "t.csv").write_text("id,image,question,answer\nbig,big.png,Q?,A.\n")
    with pytest.raises(SampleError) as err:
        ingest_table(src / "t.csv", tmp_path / "out", limits=ImageLimits(max_voxels=100))
    assert err.value.sample_id == "big" and err.value.file == "big.png" and "max_voxels" in str(err.value)


# ------------------------------------------------------------------------------------------- table: files


def test_empty_csv_is_one_error_naming_the_table(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_bytes(b"")
    for on_error in ("raise", "quarantine"):
        with pytest.raises(ValueError, match=r"cases\.csv: no rows") as err:
            ingest_table(tmp_path / "cases.csv", tmp_path / "out", on_error=on_error)
        assert str(tmp_path / "cases.csv") in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_header_only_csv_is_one_error_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text("id,image,question,answer\n")
    for on_error in ("raise", "quarantine"):
        with pytest.raises(ValueError, match=r"cases\.csv: no rows"):
            ingest_table(tmp_path / "cases.csv", tmp_path / "out", on_error=on_error)
    assert not (tmp_path / "out").exists()


def test_missing_table_or_image_root_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"table .*nope\.csv not found"):
        ingest_table(tmp_path / "nope.csv", tmp_path / "out")
    (tmp_path / "t.csv").write_text("id,image,question,answer\nr1,a.png,Q?,A.\n")
    with pytest.raises(FileNotFoundError, match=r"image root .*gone is not a folder"):
        ingest_table(tmp_path / "t.csv", tmp_path / "out", image_root=tmp_path / "gone")
    assert not (tmp_path / "out").exists()


def test_blank_jsonl_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "cases.jsonl").write_text("\n\n  \n")
    with pytest.raises(ValueError, match=r"cases\.jsonl: no rows"):
        ingest_table(tmp_path / "cases.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_csv_that_is_not_utf8_names_the_table(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_bytes(b"id,image,question,answer\nr1,a.png,Q\xff\xfe?,A.\n")
    with pytest.raises(ValueError, match=r"cases\.csv: not UTF-8"):
        ingest_table(tmp_path / "cases.csv", tmp_path / "out")


def test_csv_with_ragged_rows_names_the_table(tmp_path: Path) -> None:
    (tmp_path / "cases.csv").write_text("id,image,question,answer\nr1,a.png,Q?,A.\nr2,a.png,Q?,A.,extra,more\n")
    with pytest.raises(ValueError, match=r"cases\.csv: not a valid table"):
        ingest_table(tmp_path / "cases.csv", tmp_path / "out")


def test_csv_whose_rows_are_all_longer_than_the_header_is_refused(tmp_path: Path) -> None:
    """pandas would take the extra leading fields as an index and shift every value a column: refused."""
    (tmp_path / "cases.csv").write_text("id,image,question,answer\nr1,a.png,Q?,A.,extra,more\n")
    with pytest.raises(ValueError, match=r"cases\.csv: rows have more fields than the header"):
        ingest_table(tmp_path / "cases.csv", tmp_path / "out")


def test_jsonl_line_that_is_not_utf8_is_one_bad_row(tmp_path: Path) -> None:
    src = _src(tmp_path)
    (src / "t.jsonl").write_bytes(b'{"id": "a", "image": "good.png", "question": "Q?", "answer": "A."}\n'
                                  b'{"id": "b", "question": "Q\xff?", "answer": "A."}\n')
    samples, quarantine = ingest_table(src / "t.jsonl", tmp_path / "out", on_error="quarantine")
    assert len(samples) == 1 and len(quarantine) == 1
    assert quarantine.items[0].sample_id == "t.jsonl line 2" and "not UTF-8" in quarantine.items[0].reason
