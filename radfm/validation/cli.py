"""``radfm validate DATA``: run the suites, print a short table, exit 1 when an expectation fails."""

from __future__ import annotations

import argparse
from pathlib import Path

from radfm.validation.config import ValidationConfig


def run_cli(args: argparse.Namespace) -> int:
    """Entry of the ``validate`` sub-command (attributes: data, manifest, out, config, mostly, no_images).

    Returns 0 when every expectation holds, 1 when one fails, 2 when the input cannot be read at all.
    """
    from radfm.paths import home_path
    from radfm.validation.report import describe_failure
    from radfm.validation.run import validate_dataset

    data = str(args.data)
    try:
        cfg = ValidationConfig.from_yaml(args.config) if args.config else ValidationConfig.default()
        if args.mostly is not None:
            cfg = cfg.with_mostly(args.mostly)
        out = Path(args.out) if args.out else home_path("validation", Path(data.rstrip("/")).name or "data")
        report = validate_dataset(data, manifest=args.manifest, out_dir=out, config=cfg,
                                  images=not args.no_images)
    except (FileNotFoundError, ValueError) as exc:
        print(f"radfm validate: {exc}")
        return 2
    print(report.table())
    stats = report.statistics
    print(f"\n{stats['rows']} rows, {stats.get('images_checked', 0)} images checked "
          f"in {stats['timings']['total_s']:.1f} s")
    for failure in report.failures:
        print("FAIL " + describe_failure(failure))
    print(f"report: {report.json_path}\ndata docs: {report.docs_path}")
    print("validation " + ("passed" if report.success else "FAILED"))
    return 0 if report.success else 1
