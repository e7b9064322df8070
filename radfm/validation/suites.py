"""The expectation suites, built from a :class:`ValidationConfig` with Great Expectations' built-in expectations.

Each expectation carries ``meta={"check": name}``: the check name ties it to ``strict`` in the config and
reads better in a report than the GE class name alone.
"""

from __future__ import annotations

from typing import Any

from radfm.validation.config import ValidationConfig
from radfm.validation.frames import DERIVED, FIELDS


def _gx():
    import great_expectations as gx

    return gx


def _add(suite: Any, check: str, expectation: Any, description: str) -> None:
    expectation.meta = {"check": check}
    expectation.description = description
    suite.add_expectation(expectation)


def manifest_suite(cfg: ValidationConfig) -> Any:
    """Row-level expectations on the manifest table (see :func:`radfm.validation.frames.manifest_tables`)."""
    gx = _gx()
    E = gx.expectations
    m = cfg.mostly_for
    suite = gx.ExpectationSuite(name="manifest")
    _add(suite, "schema_columns", E.ExpectTableColumnsToMatchSet(column_set=[*FIELDS, *DERIVED], exact_match=True),
         "the manifest holds the Sample fields and nothing else")
    for col in ("id", "task", "split", "question", "answer"):
        _add(suite, "required_fields", E.ExpectColumnValuesToNotBeNull(column=col, mostly=m("required_fields")),
             f"every row has a {col}")
    _add(suite, "schema_valid", E.ExpectColumnValuesToBeInSet(column="schema_valid", value_set=[True],
                                                              mostly=m("schema_valid")),
         "every row passes the Sample schema (pydantic)")
    _add(suite, "unique_ids", E.ExpectColumnValuesToBeUnique(column="id", mostly=m("unique_ids")),
         "sample ids are unique")
    _add(suite, "allowed_tasks", E.ExpectColumnValuesToBeInSet(column="task", value_set=list(cfg.tasks),
                                                               mostly=m("allowed_tasks")),
         f"task is one of {', '.join(cfg.tasks)}")
    _add(suite, "allowed_splits", E.ExpectColumnValuesToBeInSet(column="split", value_set=list(cfg.splits),
                                                                mostly=m("allowed_splits")),
         f"split is one of {', '.join(cfg.splits)}")
    lo, hi = cfg.question_length
    _add(suite, "question_length", E.ExpectColumnValuesToBeBetween(column="question_len", min_value=lo,
                                                                   max_value=hi, mostly=m("question_length")),
         f"questions hold {lo} to {hi} characters")
    lo, hi = cfg.answer_length
    _add(suite, "answer_length", E.ExpectColumnValuesToBeBetween(column="answer_len", min_value=lo, max_value=hi,
                                                                 mostly=m("answer_length")),
         f"answers hold {lo} to {hi} characters")
    _add(suite, "answer_content", E.ExpectColumnValueLengthsToBeBetween(column="answer_text", min_value=1,
                                                                        mostly=m("answer_content")),
         "answers hold more than white space and punctuation")
    _add(suite, "answer_placeholder",
         E.ExpectColumnValuesToNotBeInSet(column="answer_text", value_set=[a for a in cfg.placeholder_answers if a],
                                          mostly=m("answer_placeholder")),
         "answers are not placeholders (n/a, null, tbd...)")
    lo, hi = cfg.images_per_sample
    _add(suite, "images_per_sample", E.ExpectColumnValuesToBeBetween(column="n_images", min_value=lo, max_value=hi,
                                                                     mostly=m("images_per_sample")),
         f"each sample has {lo} to {hi} images")
    _add(suite, "images_exist", E.ExpectColumnValuesToBeInSet(column="images_exist", value_set=[True],
                                                              mostly=m("images_exist")),
         "every image path exists under the data root")
    _add(suite, "no_group_overlap", E.ExpectColumnValuesToBeInSet(column="group_one_split", value_set=[True],
                                                                  mostly=m("no_group_overlap")),
         f"no patient/study/scene ({', '.join(cfg.group_keys)}, first present) is in two splits")
    return suite


def balance_suite(cfg: ValidationConfig) -> Any:
    """Per-split class balance of the closed binary questions."""
    gx = _gx()
    suite = gx.ExpectationSuite(name="class_balance")
    _add(suite, "class_balance",
         gx.expectations.ExpectColumnValuesToBeBetween(column="minority_share", min_value=cfg.balance_min_share,
                                                       max_value=0.5, mostly=1.0),
         f"per split, the rarest of {'/'.join(cfg.balance_answers)} answers holds at least "
         f"{cfg.balance_min_share:.0%} (splits with {cfg.balance_min_rows}+ such rows)")
    return suite


def image_suite(cfg: ValidationConfig) -> Any:
    """Per-image statistics: readable, finite, shape, depth within the buckets, intensity, 3D spacing."""
    gx = _gx()
    E = gx.expectations
    m = cfg.mostly_for
    suite = gx.ExpectationSuite(name="images")
    _add(suite, "image_readable", E.ExpectColumnValuesToBeInSet(column="readable", value_set=[True],
                                                                mostly=m("image_readable")),
         "the image exists and decodes")
    _add(suite, "image_finite", E.ExpectColumnValuesToBeInSet(column="finite", value_set=[True],
                                                              mostly=m("image_finite")),
         "no NaN or infinite voxel")
    _add(suite, "image_channels", E.ExpectColumnValuesToBeInSet(column="channels", value_set=list(cfg.channels),
                                                                mostly=m("image_channels")),
         f"channels in {list(cfg.channels)}")
    lo, hi = cfg.image_size
    for col in ("height", "width"):
        _add(suite, f"image_{col}", E.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi,
                                                                    mostly=m(f"image_{col}")),
             f"{col} from {lo} to {hi} pixels")
    _add(suite, "depth_2d", E.ExpectColumnValuesToBeInSet(column="depth_2d", value_set=[1], mostly=m("depth_2d")),
         "a 2D image has depth 1")
    b = cfg.depth_buckets
    _add(suite, "depth_3d", E.ExpectColumnValuesToBeBetween(column="depth_3d", min_value=b[0], max_value=b[-1],
                                                            mostly=m("depth_3d")),
         f"a 3D scan's depth lies within the depth buckets {b[0]}…{b[-1]}")
    lo, hi = cfg.intensity_range
    _add(suite, "intensity_min", E.ExpectColumnValuesToBeBetween(column="intensity_min", min_value=lo,
                                                                 mostly=m("intensity_min")),
         f"lowest intensity at least {lo:g}")
    _add(suite, "intensity_max", E.ExpectColumnValuesToBeBetween(column="intensity_max", max_value=hi,
                                                                 mostly=m("intensity_max")),
         f"highest intensity at most {hi:g}")
    _add(suite, "intensity_span", E.ExpectColumnValuesToBeBetween(column="intensity_span", min_value=0,
                                                                  strict_min=True, mostly=m("intensity_span")),
         "not a constant image")
    _add(suite, "spacing_present", E.ExpectColumnValuesToBeInSet(column="spacing_present", value_set=[True],
                                                                 mostly=m("spacing_present")),
         "a 3D scan carries its voxel spacing")
    lo, hi = cfg.spacing_range_mm
    _add(suite, "spacing_range", E.ExpectColumnValuesToBeBetween(column="spacing_min_mm", min_value=lo,
                                                                 max_value=hi, mostly=m("spacing_range")),
         f"3D voxel spacing from {lo:g} to {hi:g} mm")
    return suite
