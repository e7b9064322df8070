"""The dataset's version: ``data/`` tracked by DVC through ``data.dvc``, with an S3 remote (s3fs underneath).

Every dataset has a version id: the md5 DVC records for the directory in ``data.dvc`` or, before the folder is
tracked, the same digest computed here (DVC's directory hash: md5 of the sorted ``[{"md5", "relpath"}]`` list),
so a run can always record what it trained on. DVC runs as a subprocess of this interpreter (``python -m dvc``):
its Python API is not a stable interface and a ``Repo`` object holds locks. Credentials come from the standard
AWS variables (or the AWS config files) and are never written to the DVC config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_REMOTE = "storage"
ENDPOINT_ENV = ("RADFM_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# DVC never looks inside these folders, so the computed version must not either.
_SKIP_DIRS = {".git", ".dvc", ".hg"}


class VersioningError(RuntimeError):
    """A DVC command failed; the message holds the command and DVC's own explanation."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DVC_NO_ANALYTICS", "1")
    # A DVC subprocess must not wait on a terminal prompt (credentials, git editor).
    env.setdefault("GIT_TERMINAL_PROMPT", "0")
    return env


def _dvc(repo_root: str | Path, *args: str, timeout: float = 900) -> str:
    cmd = [sys.executable, "-m", "dvc", *args]
    try:
        proc = subprocess.run(cmd, cwd=str(repo_root), env=_env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise VersioningError(f"`dvc {' '.join(args)}` in {repo_root} did not finish in {timeout:.0f} s") from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip())[-4000:]
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {repo_root} (exit {proc.returncode}):\n{detail}")
    return proc.stdout


def _git_toplevel(path: Path) -> Path | None:
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=str(path), capture_output=True,
                          text=True, check=False)
    return Path(proc.stdout.strip()).resolve() if proc.returncode == 0 else None


def init_repo(repo_root: str | Path) -> Path:
    """``dvc init`` in ``repo_root`` unless it is a DVC repo already: inside git where there is one
    (``--subdir`` when ``repo_root`` is below the git top level), ``--no-scm`` otherwise."""
    root = Path(repo_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if (root / ".dvc").is_dir():
        return root
    top = _git_toplevel(root)
    if top is None:
        args = ["init", "--no-scm"]
    elif top == root:
        args = ["init"]
    else:
        args = ["init", "--subdir"]
    _dvc(root, *args)
    _dvc(root, "config", "core.analytics", "false")
    log.info("initialised DVC in %s (%s)", root, "git" if top else "no git")
    return root


def endpoint_from_env() -> str | None:
    for key in ENDPOINT_ENV:
        if os.environ.get(key):
            return os.environ[key]
    return None


def configure_remote(repo_root: str | Path, url: str, endpoint_url: str | None = None,
                     name: str = DEFAULT_REMOTE, default: bool = True, local: bool = False) -> str:
    """Add (or replace) remote ``name`` at ``url`` (``s3://bucket/path``); the endpoint (MinIO, moto, Ceph)
    comes from ``endpoint_url`` or ``RADFM_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL``. ``local`` writes to
    ``.dvc/config.local`` (not committed) instead of ``.dvc/config``."""
    scope = ["--local"] if local else []
    _dvc(repo_root, "remote", "add", *scope, "--force", *(["--default"] if default else []), name, url)
    endpoint = endpoint_url or endpoint_from_env()
    if endpoint and url.startswith("s3://"):
        _dvc(repo_root, "remote", "modify", *scope, name, "endpointurl", endpoint)
    return name


def add(repo_root: str | Path, target: str = "data") -> str:
    """``dvc add target`` (writes ``target.dvc``, git-ignores the folder); returns the new version id."""
    if not (Path(repo_root) / target).exists():
        raise FileNotFoundError(f"{Path(repo_root) / target} does not exist: nothing to version")
    _dvc(repo_root, "add", target)
    version = data_version(repo_root, target)
    log.info("versioned %s as %s", target, version)
    return version


def push(repo_root: str | Path, target: str | None = "data", remote: str | None = None, jobs: int | None = None) -> None:
    """Upload the cached objects of ``target`` (every tracked output when None) to the remote."""
    _dvc(repo_root, "push", *_remote_args(remote, jobs), *([f"{target}.dvc"] if target else []))


def pull(repo_root: str | Path, target: str | None = "data", remote: str | None = None,
         jobs: int | None = None) -> str:
    """Download ``target`` from the remote and check it out; returns its version id."""
    _dvc(repo_root, "pull", *_remote_args(remote, jobs), *([f"{target}.dvc"] if target else []))
    return data_version(repo_root, target or "data")


def _remote_args(remote: str | None, jobs: int | None) -> list[str]:
    args = ["-r", remote] if remote else []
    return args + (["-j", str(jobs)] if jobs else [])


def read_dvc_file(repo_root: str | Path, target: str = "data") -> dict | None:
    path = Path(repo_root) / f"{target}.dvc"
    if not path.is_file():
        return None
    import yaml

    return yaml.safe_load(path.read_text())


def data_version(repo_root: str | Path, target: str = "data") -> str:
    """The version id of ``target``: the md5 recorded in ``target.dvc`` (what was last added), or, when the
    folder is not tracked yet, the same digest computed from its content. ``.dir`` is dropped."""
    meta = read_dvc_file(repo_root, target)
    if meta:
        outs = meta.get("outs") or []
        if outs and outs[0].get("md5"):
            return str(outs[0]["md5"]).removesuffix(".dir")
    path = Path(repo_root) / target
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist and {path}.dvc is absent: no data to version")
    return content_hash(path)


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(path: str | Path) -> str:
    """DVC 3's md5 of a file or of a directory tree (computed without DVC)."""
    path = Path(path)
    if path.is_file():
        return _md5_file(path)
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        for name in filenames:
            full = Path(dirpath) / name
            if name == ".dvcignore" or not full.is_file():
                continue
            entries.append({"md5": _md5_file(full), "relpath": full.relative_to(path).as_posix()})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()
