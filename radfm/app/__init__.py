"""``radfm app``: a browser view over a model for people who read scans.

Upload a 2D image (PNG/JPEG), a NIfTI (``.nii``/``.nii.gz``) or the ``.dcm`` files of one DICOM series, scroll its
slices, ask a question, and read the model's answer beside its image-ablated answer (the same question with a
blank image, RadBench's ``ablated`` system): when the two agree, the answer did not come from the image.

- The model: ``--model`` (default ``models:/radfm@champion``) is loaded as ``radfm predict`` loads it
  (:mod:`radfm.registry.inference`: a ``models:/`` or ``runs:/`` URI from the tracking store of
  ``MLFLOW_TRACKING_URI``, else ``$RADFM_HOME/mlflow.db``; or a logged model's folder), or a checkpoint folder of
  :func:`radfm.model.checkpoint.save_pretrained`. Every question is checked against the same limits
  (:mod:`radfm.registry.limits`) and answered by the same code as ``radfm predict``.
- Loopback only: the server binds 127.0.0.1 by default and refuses any address that is not loopback, and answers
  only requests whose ``Host`` is a loopback name (a web page cannot reach it through DNS rebinding). To use it
  from another machine, forward the port over SSH (``ssh -L 7860:127.0.0.1:7860 host``): scans never cross the
  network unencrypted and no one else on the network can reach them.
- Nothing leaves the machine: Gradio's analytics are off, there is no share link, and the page loads nothing
  from the internet (Gradio's own fonts and scripts are served by the app). Uploads live in a temporary folder
  removed when the app stops.

This module imports nothing heavy: ``radfm --help`` builds its parser from :func:`add_parser`. The model, Gradio
and the server are imported by :func:`run`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

DEFAULT_MODEL = "models:/radfm@champion"
DEFAULT_HOST = "127.0.0.1"
# Gradio's usual port, so a user who knows Gradio finds the app where they expect it.
DEFAULT_PORT = 7860
DEFAULT_MAX_NEW_TOKENS = 64  # as `radfm predict`

__all__ = ["DEFAULT_HOST", "DEFAULT_MODEL", "DEFAULT_PORT", "PortInUseError", "add_parser", "check_host", "configure", "main",
           "run"]


def check_host(host: str) -> str:
    """``host`` when it is a loopback address (127.0.0.0/8, ::1) or ``localhost``; :class:`ValueError` otherwise.

    The app shows patients' scans and has no login: it must not be reachable from the network.
    """
    from radfm.services.loopback import is_loopback

    if not is_loopback(host.strip()):
        raise ValueError(f"refusing to listen on {host!r}: radfm app serves scans without a login, so it listens "
                         f"on loopback only ({DEFAULT_HOST}, localhost, ::1); to use it from another machine, "
                         "forward the port over SSH (ssh -L PORT:127.0.0.1:PORT this-host)")
    return host.strip()


def _host_arg(value: str) -> str:
    try:
        return check_host(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``radfm app`` on ``p``; its handler is :func:`run`."""
    p.add_argument("--model", default=DEFAULT_MODEL, help="models:/NAME@ALIAS, models:/NAME/VERSION, "
                   "runs:/RUN_ID/model, a logged model's folder or a checkpoint folder (default: the champion)")
    p.add_argument("--host", type=_host_arg, default=DEFAULT_HOST, help="loopback address to listen on "
                   f"(default {DEFAULT_HOST}; any other address is refused: forward the port over SSH instead)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; "
                   "0 picks a free one)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help="longest answer, in tokens (at most the model's context minus the prompt)")
    p.set_defaults(func=run)
    return p


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``app`` to the ``radfm`` sub-commands ``sub``."""
    text = ("a browser view on 127.0.0.1: upload a scan, scroll its slices, ask a question, see the answer beside "
            "the image-ablated answer")
    return configure(sub.add_parser("app", help=text, description=text))


class PortInUseError(OSError):
    """The port asked for is taken; the message names it and what to do."""


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve the app until Ctrl-C → exit code (2: the port is taken)."""
    host = check_host(args.host)  # again: a caller may build the namespace without the parser
    from radfm.app.session import AppModel
    from radfm.app.ui import bind, serve

    try:
        sock = bind(host, args.port)  # first: a port in use is reported before the model is loaded
    except PortInUseError as exc:
        print(f"radfm app: error: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"radfm app: loading {args.model} …", file=sys.stderr, flush=True)
        model = AppModel.load(args.model)
        serve(model, sock, max_new_tokens=args.max_new_tokens,
              on_ready=lambda url: print(f"radfm app: open {url} (Ctrl-C to stop)", file=sys.stderr, flush=True))
    finally:
        sock.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m radfm.app [options]``: :func:`run` with its own parser (the same options as ``radfm app``)."""
    from radfm.cli_errors import run_guarded
    from radfm.paths import configure_caches

    parser = configure(argparse.ArgumentParser(prog="radfm app", description=__doc__,
                                               formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    configure_caches()  # as `radfm` does before any command
    return run_guarded("radfm app", lambda: run(args))
