"""``radfm validate DATA``: run the suites, print a short table and the question profile, exit 1 when an
expectation fails."""

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
    from radfm.validation.run import default_manifest, validate_dataset

    data = str(args.data)
    try:
        cfg = ValidationConfig.from_yaml(args.config) if args.config else ValidationConfig.default()
        if args.mostly is not None:
            cfg = cfg.with_mostly(args.mostly)
        out = Path(args.out) if args.out else home_path("validation", Path(data.rstrip("/")).name or "data")
        manifest = str(args.manifest) if args.manifest else default_manifest(data)
        report = validate_dataset(data, manifest=manifest, out_dir=out, config=cfg, images=not args.no_images)
    except (FileNotFoundError, ValueError) as exc:
        print(f"radfm validate: {exc}")
        return 2
    print(report.table())
    stats = report.statistics
    print(f"\n{stats['rows']} rows, {stats.get('images_checked', 0)} images checked "
          f"in {stats['timings']['total_s']:.1f} s")
    print("\n" + profile_text(manifest) + "\n")
    for failure in report.failures:
        print("FAIL " + describe_failure(failure))
    print(f"report: {report.json_path}\ndata docs: {report.docs_path}")
    print("validation " + ("passed" if report.success else "FAILED"))
    return 0 if report.success else 1


def profile_text(manifest: str) -> str:
    """The question profile of ``manifest`` as a short table (:mod:`radfm.data.profile`): the one written beside
    it, or computed now when none was written (validation writes nothing into the data folder)."""
    from radfm.data.profile import format_profile, load_profile, profile_manifest, profile_path

    try:
        profile = load_profile(manifest)
        where = str(profile_path(manifest))
        if profile is None:
            profile = profile_manifest(manifest)
            where = "computed now, not written (`radfm ingest` and the pipeline's prepare stage write it)"
    except (FileNotFoundError, ValueError) as exc:
        return f"question profile: not available ({exc})"
    return f"{format_profile(profile)}\nprofile: {where}"
