"""Run the suites in an ephemeral Great Expectations context; write the JSON report and the Data Docs."""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from radfm.validation.config import ValidationConfig
from radfm.validation.frames import image_table, manifest_tables, read_raw_rows
from radfm.validation.report import ValidationReport, slim_result, summarise_suite
from radfm.validation.suites import balance_suite, image_suite, manifest_suite

log = logging.getLogger(__name__)


def default_manifest(data_root: str | Path) -> str:
    """``DATA/manifest.jsonl``, else ``DATA/manifest.parquet``, else the one manifest under ``DATA/manifests/``
    (:func:`radfm.data.manifest.find_manifest`)."""
    from radfm.data.manifest import find_manifest

    root = str(data_root).rstrip("/")
    if root.startswith("s3://"):
        return f"{root}/manifest.jsonl"
    try:
        return str(find_manifest(root))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; or pass --manifest") from None


def _context(docs_dir: Path | None) -> Any:
    """An in-memory context whose only Data Docs site is ``docs_dir`` (none when None); no analytics or bars."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {} if docs_dir is None else {"local_site": {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}}}
    # in-memory stores: nothing lands in the working directory (no gx/ folder, no uncommitted/ docs)
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               data_docs_sites=sites, analytics_enabled=False,
                               progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_suite(ctx: Any, name: str, df: pd.DataFrame, suite: Any, index_col: str, limit: int) -> Any:
    """Validate ``df`` against ``suite`` through a checkpoint (which stores the result for the Data Docs)."""
    import great_expectations as gx

    asset = ctx.data_sources.add_pandas(name).add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe(name)
    suite = ctx.suites.add(suite)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    result_format = {"result_format": "COMPLETE", "unexpected_index_column_names": [index_col],
                     "partial_unexpected_count": limit, "include_unexpected_rows": False}
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[vd],
                                                   result_format=result_format))
    run = checkpoint.run(batch_parameters={"dataframe": df})
    return next(iter(run.run_results.values()))


def validate_dataset(data_root: str | Path, manifest: str | Path | None = None, out_dir: str | Path | None = None,
                     config: ValidationConfig | None = None, images: bool = True) -> ValidationReport:
    """Validate a manifest (and, with ``images``, the statistics of its images) against the expectation suites.

    Writes ``out_dir/validation.json``, GE's raw results ``out_dir/gx/<suite>.json`` and the Data Docs
    ``out_dir/data_docs/index.html``; with ``out_dir`` None nothing is written. Never raises for a failing
    expectation: call :meth:`ValidationReport.raise_for_failures` to stop a flow.
    """
    cfg = config or ValidationConfig.default()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest_path = str(manifest) if manifest is not None else default_manifest(data_root)
    rows = read_raw_rows(manifest_path)
    tables = manifest_tables(data_root, rows, cfg)
    timings["manifest_table_s"] = time.perf_counter() - t0
    image_df = None
    image_errors: dict[str, str] = {}
    if images:
        t = time.perf_counter()
        image_df, image_errors = image_table(data_root, tables, cfg)
        timings["image_table_s"] = time.perf_counter() - t
    t = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    docs_dir = out / "data_docs" if out is not None else None
    ctx = _context(docs_dir)
    limit = cfg.max_offending
    results = {"manifest": _run_suite(ctx, "manifest", tables.rows, manifest_suite(cfg), "id", limit),
               "class_balance": _run_suite(ctx, "class_balance", tables.balance, balance_suite(cfg), "split", limit)}
    if image_df is not None:
        results["images"] = _run_suite(ctx, "images", image_df, image_suite(cfg), "path", limit)
    timings["expectations_s"] = time.perf_counter() - t

    def samples_of(failure: dict[str, Any]) -> list[str]:
        # each image's first 3 distinct samples (a row may name one image twice)
        ids = [s for p in failure["offending"] for s in list(dict.fromkeys(tables.image_samples.get(p, [])))[:3]]
        return ids[:limit]

    def read_errors(failure: dict[str, Any]) -> str:
        if failure["check"] != "image_readable":
            return ""
        return "; ".join(f"{p}: {image_errors[p]}" for p in failure["offending"][:5] if p in image_errors)

    def schema_errors(failure: dict[str, Any]) -> str:
        if failure["check"] != "schema_valid":
            return ""
        bad = tables.rows[~tables.rows["schema_valid"].astype(bool)].head(5)
        return "; ".join(f"{r.id or r.row} ({r.row}): {r.schema_error}" for r in bad.itertuples())

    suites: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    for name, result in results.items():
        extra: dict[str, Any] = {"detail": schema_errors} if name == "manifest" else {}
        if name == "images":
            extra = {"samples": samples_of, "detail": read_errors}
        summary, fails = summarise_suite(result, {"manifest": "id", "class_balance": "split",
                                                  "images": "path"}[name], limit, extra=extra)
        suites[name] = summary
        failures.extend(fails)
    stats = _statistics(tables, image_df, cfg)
    stats["timings"] = {k: round(v, 3) for k, v in timings.items()}
    report = ValidationReport(success=all(s["success"] for s in suites.values()), suites=suites,
                              failures=failures, json_path=None, docs_path=None, statistics=stats)
    if out is not None:
        t = time.perf_counter()
        gx_dir = out / "gx"
        gx_dir.mkdir(parents=True, exist_ok=True)
        for name, result in results.items():
            (gx_dir / f"{name}.json").write_text(json.dumps(slim_result(result), indent=1, default=str))
        ctx.build_data_docs()
        report.docs_path = docs_dir / "index.html"
        stats["timings"]["report_s"] = round(time.perf_counter() - t, 3)
        stats["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        report.write_json(out / "validation.json")
    else:
        stats["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    log.info("validation of %s: %s", Path(str(data_root)).name, "passed" if report.success else "FAILED")
    return report


def _statistics(tables: Any, image_df: pd.DataFrame | None, cfg: ValidationConfig) -> dict[str, Any]:
    """Counts for the report: rows per split and task, the balance table, image kinds and depths."""
    rows = tables.rows
    stats: dict[str, Any] = {
        "rows": len(rows),
        "splits": {str(k): int(v) for k, v in rows["split"].value_counts(dropna=False).items()},
        "tasks": {str(k): int(v) for k, v in rows["task"].value_counts(dropna=False).items()},
        "images_referenced": len(tables.image_kinds),
        # key names and counts only: the values are the patient/study identifiers themselves
        "group_keys_used": tables.group_keys_used,
        "rows_without_group": int(rows["group_one_split"].isna().sum()),
        "class_balance": tables.balance.astype(object).where(tables.balance.notna(), None).to_dict("records"),
        "config": cfg.to_dict(),
    }
    if image_df is not None:
        stats["images_checked"] = len(image_df)
        stats["image_kinds"] = {str(k): int(v) for k, v in Counter(image_df["kind"].fillna("?")).items()}
        depths = image_df["depth_3d"].dropna().astype(int)
        stats["depth_3d"] = {str(k): int(v) for k, v in sorted(Counter(depths).items())}
        for col in ("intensity_min", "intensity_max"):
            s = image_df[col].dropna()
            stats[col] = None if s.empty else {"min": float(s.min()), "max": float(s.max())}
    return stats
