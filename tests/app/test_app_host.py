"""``radfm app`` listens on loopback only: 127.0.0.1 by default, any other address refused before anything binds
or loads, its one listening socket on loopback, and a foreign ``Host`` header (DNS rebinding) answered with 400."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest

from radfm.app import DEFAULT_HOST, add_parser, check_host, main, run
from tests.registry import test_registry as shared

checkpoint_dir = shared.checkpoint_dir  # the tiny saved checkpoint (a session fixture of tests/registry)

pytestmark = pytest.mark.timeout(120)

FOREIGN = ["0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", "", "127.0.0.1.example.org"]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def radfm_parser() -> argparse.ArgumentParser:
    """A ``radfm``-like parser with ``app`` added as radfm.cli adds it."""
    parser = argparse.ArgumentParser(prog="radfm")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_default_host_is_loopback() -> None:
    args = radfm_parser().parse_args(["app"])
    assert DEFAULT_HOST == "127.0.0.1" and args.host == "127.0.0.1"
    assert args.model == "models:/radfm@champion" and args.func is run
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert check_host(host) == host


@pytest.mark.parametrize("host", FOREIGN)
def test_a_foreign_address_is_refused(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="loopback only"):
        check_host(host)
    for parse in (lambda: radfm_parser().parse_args(["app", "--host", host]), lambda: main(["--host", host])):
        with pytest.raises(SystemExit) as exit_:
            parse()
        assert exit_.value.code == 2
        assert "refusing to listen on" in capsys.readouterr().err
    # a namespace built without the parser is refused too, before the model is loaded
    with pytest.raises(ValueError, match="loopback only"):
        run(argparse.Namespace(host=host, model="models:/never-loaded@x", port=0, max_new_tokens=8))


def test_bind_refuses_a_foreign_address_and_a_taken_port() -> None:
    from radfm.app import PortInUseError
    from radfm.app.ui import bind

    with pytest.raises(ValueError, match="loopback only"):
        bind("0.0.0.0", 0)
    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(PortInUseError, match="pass another --port"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def _get(url: str, host: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with NO_PROXY.open(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_taken_port_is_reported_before_the_model_is_loaded(capsys: pytest.CaptureFixture[str]) -> None:
    from radfm.app.ui import bind

    taken = bind("127.0.0.1", 0)
    try:
        assert main(["--model", "no/such/model", "--port", str(taken.getsockname()[1])]) == 2
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1:" in err and "loading" not in err


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_app_listens_on_loopback_refuses_a_foreign_host_and_stops_cleanly(checkpoint_dir: Path, tmp_path: Path,
                                                                              stop: signal.Signals) -> None:
    """``python -m radfm.app`` as a user runs it: its only listening socket is on 127.0.0.1, a request naming
    another host (a DNS-rebinding page) gets 400, and Ctrl-C or SIGTERM stops it with exit code 0, its uploads
    folder removed."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "radfm.app", "--model", str(checkpoint_dir), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "open http" in line:
                break
        url = next((m.group(0) for m in map(re.compile(r"http://\S+").search, lines) if m), None)
        assert url, "".join(lines)
        port = urlsplit(url).port
        listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN}
        assert listening == {("127.0.0.1", port)}
        assert _get(url) == 200
        assert _get(url, host=f"localhost:{port}") == 200
        # a page of evil.example whose name resolves to 127.0.0.1 sends its own name as Host
        assert _get(url, host=f"evil.example:{port}") == 400
        assert _get(url + "config", host="evil.example") == 400
        assert [p.name for p in tmp_path.glob("radfm-app-*")] != []
        proc.send_signal(stop)
        code = proc.wait(timeout=30)
        assert code == 0, "".join(lines) + proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert list(tmp_path.glob("radfm-app-*")) == []  # the uploads folder went with the app
