"""``radfm --help`` lists every sub-command, and every sub-command, nested sub-command and option says what it is
for (an argparse ``help=``)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from radfm.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def missing_help(parser: argparse.ArgumentParser, prog: str = "radfm",
                 hidden_ok: frozenset[str] = frozenset()) -> list[str]:
    """Every sub-command (nested ones included) and option under ``parser`` without a help line, as
    ``"radfm data add --repo"``. An option hidden with ``help=SUPPRESS`` counts only where ``hidden_ok`` names it
    (``--debug``, documented once on ``radfm`` itself and accepted after any sub-command)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        if isinstance(action, argparse._SubParsersAction):
            if not action.help:
                missing.append(f"{prog} {action.metavar or action.dest}")
            # the pseudo-actions argparse lists under the group: one per sub-command, holding its help line
            helped = {a.dest for a in action._choices_actions if a.help}
            for sub_name, sub in action.choices.items():
                if sub_name not in helped:
                    missing.append(f"{prog} {sub_name}")
                missing += missing_help(sub, f"{prog} {sub_name}", hidden_ok)
        elif action.help == argparse.SUPPRESS:
            if name not in hidden_ok:
                missing.append(f"{prog} {name} (hidden)")
        elif not (action.help or "").strip():
            missing.append(f"{prog} {name}")
    return missing


def test_every_subcommand_and_option_has_help() -> None:
    from radfm.data.synth import build_parser as synth_parser

    parser = build_parser()
    top = {"/".join(a.option_strings) for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS}
    assert "--debug" in top
    assert missing_help(parser, hidden_ok=frozenset(top)) == []
    # `radfm synth` hands its command line to MedMD-synth's own parser, `radfm pipeline` and `radfm flows` to
    # the flows' own
    assert missing_help(synth_parser(), "radfm synth") == []
    from flows.pipeline import build_parser as pipeline_parser

    assert missing_help(pipeline_parser(), "radfm pipeline") == []


def test_the_walk_finds_what_has_no_help() -> None:
    parser = argparse.ArgumentParser(prog="x")
    parser.add_argument("--fine", help="documented")
    parser.add_argument("--bare")
    sub = parser.add_subparsers(dest="cmd", help="commands")
    a = sub.add_parser("a", help="documented")
    a.add_argument("thing")
    nested = sub.add_parser("b").add_subparsers(dest="action")
    nested.add_parser("c", help="documented").add_argument("--secret", help=argparse.SUPPRESS)
    assert missing_help(parser, "x") == ["x --bare", "x a thing", "x b", "x b action", "x b c --secret (hidden)"]


def test_help_lists_train_and_every_command() -> None:
    out = subprocess.run([sys.executable, "-m", "radfm.cli", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # the sub-commands are the lines indented by four under "positional arguments:"
    listing = out.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    listed = {line.split()[0] for line in listing.splitlines() if line.startswith("    ") and line[4] != " "}
    assert {"train", "pipeline", "demo", "eval", "predict", "synth", "ingest", "data", "services", "flows"} <= listed
    assert "train a model" in out.stdout


def test_train_keeps_hydras_command_line() -> None:
    """``radfm train …`` still goes to Hydra before argparse sees it: ``--help`` is Hydra's, overrides are its."""
    out = subprocess.run([sys.executable, "-m", "radfm.cli", "train", "--cfg", "job", "trainer.max_steps=7"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "max_steps: 7" in out.stdout


@pytest.mark.parametrize(("argv", "expected"), [
    (["ingest", "table", "t.csv", "--out", "o", "--image-root", "i"],
     {"kind": "table", "source": "t.csv", "out": "o", "image_root": "i", "task": None, "on_error": "raise"}),
    (["ingest", "dicom", "d", "--reports", "r.csv", "--out", "o", "--on-error", "quarantine"],
     {"kind": "dicom", "source": "d", "reports": "r.csv", "on_error": "quarantine"}),
    (["ingest", "medmnist", "m.npz", "--out", "o", "--max-per-split", "5"],
     {"kind": "medmnist", "max_per_split": 5, "name": None}),
    (["data", "version"], {"action": "version", "repo": ".", "target": "data"}),
    (["data", "push", "--remote-url", "s3://b/p"], {"action": "push", "remote_url": "s3://b/p"}),
    (["services", "up", "--only", "mlflow,s3"], {"action": "up", "only": "mlflow,s3"}),
    (["flows", "serve", "--only", "nightly-retrain"], {"action": "serve", "only": ["nightly-retrain"]}),
    (["eval", "--model", "models:/radfm@champion", "--manifest", "m", "--out", "o"],
     {"model": "models:/radfm@champion", "split": "test", "batch_size": 64}),
])
def test_nested_commands_parse_as_before(argv: list[str], expected: dict[str, object]) -> None:
    """The sub-commands that became nested parsers read the same command lines into the same attributes."""
    args = vars(build_parser().parse_args(argv))
    assert {k: args.get(k) for k in expected} == expected
    assert callable(args["func"])


def test_a_dicom_import_without_reports_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["ingest", "dicom", "studies", "--out", "o"])
    assert exit_.value.code == 2
    assert "the following arguments are required: --reports" in capsys.readouterr().err


def test_flows_list_and_serve_hand_over_their_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import radfm.cli as cli

    calls: list[list[str]] = []
    monkeypatch.setattr(cli, "_flows_module", lambda module, argv, debug=False: calls.append([module, *argv]) or 0)
    assert main(["flows", "list"]) == 0
    assert main(["flows", "serve", "--only", "a", "--only", "b"]) == 0
    assert calls == [["serve", "list"], ["serve", "serve", "--only", "a", "--only", "b"]]
