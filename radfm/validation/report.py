"""The outcome of a validation: per-suite results, the failing expectations with their offending rows, paths."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Keys of a GE result that list values or rows; the rest of the result dict is small and kept as is.
_BULKY = ("unexpected_list", "partial_unexpected_list", "unexpected_index_list", "partial_unexpected_index_list",
          "partial_unexpected_counts", "unexpected_index_query")


class ValidationFailed(ValueError):  # noqa: N818 - the name the flows and the issue use
    """A dataset failed validation; ``str()`` names each failing expectation, its offending rows and the report."""

    def __init__(self, report: ValidationReport) -> None:
        self.report = report
        super().__init__(report.message())


@dataclass
class ValidationReport:
    """What ``validate_dataset`` returns.

    ``failures``: one dict per failing expectation: ``suite``, ``check``, ``expectation`` (GE type),
    ``column``, ``kwargs``, ``unexpected_count``, ``unexpected_percent``, ``offending`` (sample ids for the
    manifest, image paths relative to the data root for the images, split names for the class balance; the
    first ``max_offending``), and for images ``samples`` (ids of samples using the offending images).
    """

    success: bool
    suites: dict[str, dict[str, Any]]
    failures: list[dict[str, Any]]
    json_path: Path | None
    docs_path: Path | None
    statistics: dict[str, Any] = field(default_factory=dict)

    def raise_for_failures(self) -> None:
        """Raise :class:`ValidationFailed` when any expectation failed."""
        if not self.success:
            raise ValidationFailed(self)

    def message(self) -> str:
        """A human summary: each failing expectation, its offending rows, where the report lies."""
        if self.success:
            return f"validation passed ({self._counts()}); report {self.json_path}"
        lines = [f"validation failed: {len(self.failures)} expectation(s) ({self._counts()})"]
        for f in self.failures:
            lines.append("  " + describe_failure(f))
        if self.json_path is not None:
            lines.append(f"report: {self.json_path}  data docs: {self.docs_path}")
        else:
            lines.append("report: not written (validate with out_dir to keep the JSON and Data Docs)")
        return "\n".join(lines)

    def _counts(self) -> str:
        n = sum(s["evaluated"] for s in self.suites.values())
        ok = sum(s["successful"] for s in self.suites.values())
        return f"{ok}/{n} expectations met"

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "suites": self.suites, "failures": self.failures,
                "statistics": self.statistics,
                "json_path": str(self.json_path) if self.json_path else None,
                "docs_path": str(self.docs_path) if self.docs_path else None}

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.json_path = path
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    def log_to_mlflow(self, artifact_path: str = "validation") -> None:
        """Log the report folder (JSON + Data Docs) as artifacts of the active MLflow run, and a pass flag."""
        import mlflow

        if self.json_path is None:
            raise ValueError("the report has no folder to log: validate with out_dir set")
        mlflow.log_artifacts(str(self.json_path.parent), artifact_path=artifact_path)
        mlflow.log_metric("validation_success", float(self.success))
        mlflow.log_metric("validation_failures", float(len(self.failures)))

    def table(self) -> str:
        """One line per expectation of every suite: status, check, column, unexpected count and share."""
        rows = [("suite", "check", "column", "unexpected", "%", "status")]
        for name, suite in self.suites.items():
            for e in suite["expectations"]:
                pct = e.get("unexpected_percent")
                rows.append((name, e["check"], str(e.get("column") or "-"), "-" if e.get("unexpected_count") is None else str(e["unexpected_count"]),
                             "-" if pct is None else f"{pct:.2f}", "ok" if e["success"] else "FAIL"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def describe_failure(f: dict[str, Any]) -> str:
    """``manifest/images_exist expect_column_values_to_be_in_set(images_exist): 3 rows (0.6%): a, b, c``."""
    col = f.get("column")
    what = f"{f['suite']}/{f['check']} {f['expectation']}" + (f"({col})" if col else "")
    count = f.get("unexpected_count")
    pct = f.get("unexpected_percent")
    size = "" if count is None else f": {count} unexpected" + ("" if pct is None else f" ({pct:.2f}%)")
    if f.get("mostly") is not None and f["mostly"] < 1:
        size += f", tolerance {1 - f['mostly']:.2%}"
    offending = ", ".join(map(str, f.get("offending", [])))
    more = " …" if count and count > len(f.get("offending", [])) else ""
    text = f"{what}{size}: {offending}{more}" if offending else f"{what}{size}"
    if f.get("values"):
        text += f" (values: {', '.join(repr(v) for v in f['values'])})"
    if f.get("detail"):
        text += f" [{f['detail']}]"
    if f.get("samples"):
        text += f" (samples: {', '.join(f['samples'])})"
    return text


def _offending(result: dict[str, Any], index_col: str, limit: int) -> list[str]:
    out: list[str] = []
    for item in result.get("unexpected_index_list") or []:
        if isinstance(item, dict):
            label = item.get(index_col)
            if label is None and index_col == "id":
                label = item.get("row")  # a row without an id: name its line
            out.append(str(label))
        else:
            out.append(f"row {item}")
        if len(out) >= limit:
            break
    return out


def _values(result: dict[str, Any], limit: int = 5) -> list[Any]:
    """The first distinct unexpected values (text cut to 40 characters); none for derived yes/no flags."""
    out: list[Any] = []
    for item in result.get("partial_unexpected_counts") or []:
        value = item.get("value") if isinstance(item, dict) else None
        if isinstance(value, bool) or value is None:
            continue
        out.append(value[:40] if isinstance(value, str) else value)
        if len(out) >= limit:
            break
    return out


def summarise_suite(result: Any, index_col: str, limit: int, *, extra: dict[str, Any] | None = None,
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A GE ``ExpectationSuiteValidationResult`` → (suite summary, failure dicts)."""
    suite_name = result.suite_name
    expectations: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for r in result.results:
        cfg = r.expectation_config
        kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "result_format")}
        res = r.result or {}
        entry = {"check": (cfg.meta or {}).get("check", cfg.type), "expectation": cfg.type,
                 "column": kwargs.get("column"), "success": bool(r.success),
                 # GE drops mostly=1.0 (its default) from the kwargs: a column expectation without it is strict
                 "mostly": kwargs.get("mostly", 1.0 if "column" in kwargs else None),
                 "unexpected_count": res.get("unexpected_count"),
                 "unexpected_percent": res.get("unexpected_percent"),
                 **({"observed_value": res["observed_value"]} if "observed_value" in res else {})}
        if r.exception_info and r.exception_info.get("raised_exception"):
            entry["error"] = r.exception_info.get("exception_message")
        expectations.append(entry)
        if r.success:
            continue
        failure = {"suite": suite_name, **entry,
                   "kwargs": {k: v for k, v in kwargs.items() if k != "column"},
                   "offending": _offending(res, index_col, limit)}
        failure.pop("success")
        values = _values(res)
        if values:
            failure["values"] = values
        if cfg.type == "expect_table_columns_to_match_set":
            mismatched = (res.get("details") or {}).get("mismatched") or {}
            failure["offending"] = [f"unexpected column {c}" for c in mismatched.get("unexpected", [])] + \
                                   [f"missing column {c}" for c in mismatched.get("missing", [])]
        if "error" in entry:
            failure["detail"] = entry["error"]
        if extra:
            for key, fn in extra.items():
                value = fn(failure)
                if value:
                    failure[key] = value
        failures.append(failure)
    stats = result.statistics or {}
    summary = {"success": bool(result.success), "evaluated": int(stats.get("evaluated_expectations", 0)),
               "successful": int(stats.get("successful_expectations", 0)), "expectations": expectations}
    return summary, failures


def slim_result(result: Any) -> dict[str, Any]:
    """GE's result as JSON with the row lists cut to their first entries (the full lists can be huge)."""
    d = result.to_json_dict()
    for r in d.get("results", []):
        res = r.get("result") or {}
        for key in _BULKY:
            if isinstance(res.get(key), list):
                res[key] = res[key][:50]
    return d
