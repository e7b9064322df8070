"""How a ``radfm`` command reports a failure: a known error is one line and exit code 2, a bug keeps its traceback.

A known error is one the user can fix without reading code: a bad sample or image (``SampleError``), a dataset
that failed validation, a registry or service that cannot do what was asked, a missing or unreadable file, an
unreachable server, a bad Hydra override or config value. It prints

    radfm <command>: error: <what, naming the thing, and what to do>

on stderr and the command exits 2. Anything else is a bug: its traceback is printed and the command exits 1.
``--debug`` or ``RADFM_DEBUG=1`` prints the traceback of a known error too (the exit code stays 2).

Used by :mod:`radfm.cli`, the Hydra entry of ``radfm train`` and the pipeline flow's command line; it imports
nothing heavy, so classifying an error never costs the import of the library that raised it.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

DEBUG_ENV = "RADFM_DEBUG"
KNOWN_EXIT = 2
BUG_EXIT = 1
DETAILS = "(--debug for details)"
MAX_CHARS = 1000  # a message that quotes its input (a 2 MB prompt) must not flood the terminal

# (module, class) of the library's own known errors. Looked up in sys.modules: an exception can only be an
# instance of a class whose module is loaded, so nothing is imported to classify it.
KNOWN_CLASSES: tuple[tuple[str, str], ...] = (
    ("radfm.data.errors", "SampleError"),
    ("radfm.validation.report", "ValidationFailed"),
    ("radfm.registry.registry", "RegistryError"),
    ("radfm.registry.promotion", "MissingMetricsError"),
    ("radfm.registry.limits", "PredictInputError"),
    ("radfm.services", "ServiceError"),
    ("radfm.data.versioning", "VersioningError"),
    ("radfm.model.checkpoint", "CorruptWeightsError"),
    ("hydra.errors", "HydraException"),
    ("omegaconf.errors", "OmegaConfBaseException"),
)
# The file-system and network errors a user causes (a typo in a path, a read-only folder, a server not started).
KNOWN_BUILTINS: tuple[type[BaseException], ...] = (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                                   PermissionError, ConnectionError)
# A ValueError raised in one of these modules is about a config value or a file the user gave (the run builder,
# the composed config, the model/data/validation configs, the promotion gate file, a checkpoint to load or
# import, the RadBench options) and names the key or the file.
INPUT_MODULES: tuple[str, ...] = ("radfm.train.builder", "radfm.train.compose", "radfm.train.param_groups",
                                  "radfm.train.ray_launcher", "radfm.model.config", "radfm.model.presets",
                                  "radfm.data.config", "radfm.data.limits", "radfm.validation.config",
                                  "radfm.registry.promotion", "radfm.model.checkpoint", "radfm.model.convert",
                                  "radfm.eval.radbench")
# MLflow errors that mean "you asked for something that is not there / not allowed", not a server fault.
MLFLOW_USER_CODES: frozenset[str] = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE",
                                               "RESOURCE_ALREADY_EXISTS", "PERMISSION_DENIED", "UNAUTHENTICATED",
                                               "BAD_REQUEST", "ENDPOINT_NOT_FOUND", "NOT_FOUND",
                                               "INVALID_STATE"})
# What to do about an OS error whose message is only the system's ("[Errno 2] No such file or directory: 'x'").
_OS_HINTS: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "check the path"),
    (NotADirectoryError, "a folder was expected"),
    (IsADirectoryError, "a file was expected, not a folder"),
    (PermissionError, "check its permissions or choose another location"),
    (ConnectionError, "is the server running? (`radfm services status`; MLFLOW_TRACKING_URI names the tracking "
                      "server)"),
)


def debug_enabled(flag: bool | None = None) -> bool:
    """``flag`` (``--debug``) or ``RADFM_DEBUG`` set to anything but ``''``/``0``/``false``/``no``/``off``."""
    return bool(flag) or env_true(DEBUG_ENV)


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


def _is_known_class(exc: BaseException) -> bool:
    for module, name in KNOWN_CLASSES:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def _raised_in(exc: BaseException) -> str:
    """The module of the innermost frame of ``exc``'s traceback: where it was raised."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")) if tb is not None else ""


def _mlflow_user_error(exc: BaseException) -> bool:
    cls = getattr(sys.modules.get("mlflow.exceptions"), "MlflowException", None)
    return isinstance(cls, type) and isinstance(exc, cls) and getattr(exc, "error_code", "") in MLFLOW_USER_CODES


def underlying(exc: BaseException) -> BaseException:
    """The error a wrapper stands for: the first worker's failure of a distributed run (Ray Train's
    ``WorkerGroupError`` carries ``worker_failures``), else ``exc`` itself."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)]
        if isinstance(first, BaseException) and first is not exc:
            return underlying(first)
    return exc


def is_known(exc: BaseException) -> bool:
    """Whether ``exc`` is an error the user can fix (one line, exit 2) rather than a bug (traceback, exit 1)."""
    if isinstance(exc, KNOWN_BUILTINS) or _is_known_class(exc) or _mlflow_user_error(exc):
        return True
    return isinstance(exc, ValueError) and _raised_in(exc) in INPUT_MODULES


def one_line(text: str) -> str:
    """``text`` on one line: a short message of up to three lines is joined (Hydra's "Could not override 'x'." +
    "To append to your config use +x=1" is one sentence in two lines); a longer one keeps its first line and
    points at ``--debug``."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    joined = lines[0]
    for line in lines[1:]:
        joined += (" " if joined[-1] in ".:;!?)" else "; ") + line
    if len(lines) == 1 or (len(lines) <= 3 and len(joined) <= 300):
        out = joined
    else:
        out = f"{lines[0]} {DETAILS}"
    if len(out) > MAX_CHARS:
        out = out[:MAX_CHARS].rstrip() + f"… {DETAILS}"
    return out


def _hydra_missing(text: str) -> str:
    """Hydra's "Could not find 'model/tinyy'" + an indented list of options → one line that keeps the options."""
    lines = text.splitlines()
    head = lines[0].strip()
    for i, line in enumerate(lines):
        if line.startswith("Available options in"):
            options = []
            for opt in lines[i + 1:]:
                if not opt.startswith(("\t", " ")) or not opt.strip():
                    break
                options.append(opt.strip())
            group = line.removeprefix("Available options in").strip().rstrip(":")
            return f"{head} (available options in {group}: {', '.join(options)})"
    return one_line(text)


def describe(exc: BaseException) -> str:
    """The one-line message of a known error: what went wrong, naming the thing, and what to do."""
    name = type(exc).__name__
    validation = getattr(exc, "report", None)
    if name == "ValidationFailed" and validation is not None:
        first = str(exc).splitlines()[0] if str(exc) else "validation failed"
        where = getattr(validation, "json_path", None)
        return f"{first}; report {where} {DETAILS}" if where else f"{first} {DETAILS}"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        # raised by the system, not by radfm: its text names the file but says nothing about what to do
        target = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
        hint = next((h for cls, h in _OS_HINTS if isinstance(exc, cls)), "")
        return one_line(f"{target}: {exc.strerror}" + (f": {hint}" if hint else ""))
    if isinstance(exc, ConnectionError) and exc.errno is not None:
        return one_line(f"{exc.strerror or exc}: {_OS_HINTS[-1][1]}")
    full_key = getattr(exc, "full_key", None)
    msg = getattr(exc, "msg", None)
    if type(exc).__module__.startswith("omegaconf") and isinstance(msg, str):
        return one_line(f"{msg.splitlines()[0] if msg else name}" + (f" (config key {full_key})" if full_key
                                                                       else ""))
    text = str(exc)
    if _mlflow_user_error(exc):
        text = str(getattr(exc, "message", None) or exc)
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            text = one_line(text) + ": is MLFLOW_TRACKING_URI the registry that holds it? (`radfm register` adds a " \
                "version)"
    if type(exc).__module__.startswith("hydra"):
        if "Available options in" in text:
            return _hydra_missing(text)
        override = getattr(exc, "override", None)  # OverrideParseException's text does not quote the override
        if isinstance(override, str):
            text = f"cannot parse the override {override!r}: {text}"
    return one_line(text) or name


def report(prog: str, exc: BaseException, debug: bool | None = None, known: bool | None = None) -> int:
    """Print ``exc`` the way a command reports it (see the module docstring) and return the exit code.

    ``known``: None to classify ``exc`` with :func:`is_known`; True where the caller knows the error is about the
    user's input (an importer's ``ValueError`` about the user's table).
    """
    inner = underlying(exc)
    known = is_known(inner) if known is None else known
    if debug_enabled(debug):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        return KNOWN_EXIT if known else BUG_EXIT
    if not known:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        print(f"{prog}: internal error ({type(exc).__name__}): this is a bug; please report it with the traceback "
              "above", file=sys.stderr)
        return BUG_EXIT
    print(f"{prog}: error: {describe(inner)}", file=sys.stderr)
    return KNOWN_EXIT


def run_guarded(prog: str, fn: Callable[[], int | None], debug: bool | None = None) -> int:
    """``fn()``'s exit code, or the code :func:`report` gives for the exception it raised. ``SystemExit`` (argparse,
    an explicit exit) and ``KeyboardInterrupt`` pass through unchanged."""
    try:
        return int(fn() or 0)
    except Exception as exc:  # noqa: BLE001 - every failure of a command ends here, known or not
        sys.stdout.flush()  # what the command printed before the failure comes first
        return report(prog, exc, debug)
