"""The dataset's version: ``data/`` tracked by DVC through ``data.dvc``, with an S3 remote (s3fs underneath).

One definition of a data version, used by every run's tags, the registry, the retrain flow's comparison and
``radfm data version``: **the md5 DVC computes for the tracked folder** (``data/``, not the data set inside it),
computed here from the workspace without DVC (DVC's directory hash: md5 of the sorted ``[{"md5", "relpath"}]``
list). When the workspace holds what ``data.dvc`` records, that is ``data.dvc``'s md5; when the data changed and
was not ``dvc add``-ed yet, it is what ``dvc add`` would record, so a run never claims a version it did not see.
A data set that no ``.dvc`` file tracks is versioned by the same digest of its own folder
(:func:`version_of`). DVC runs as a subprocess of this interpreter (``python -m dvc``): its Python API is not a
stable interface and a ``Repo`` object holds locks. Credentials come from the standard AWS variables (or the
AWS config files) and are never written to the DVC config.
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


def recorded_version(repo_root: str | Path, target: str = "data") -> str | None:
    """The md5 ``target.dvc`` records (what was last ``dvc add``-ed, ``.dir`` dropped); None without one."""
    meta = read_dvc_file(repo_root, target)
    outs = (meta or {}).get("outs") or []
    if outs and outs[0].get("md5"):
        return str(outs[0]["md5"]).removesuffix(".dir")
    return None


def data_version(repo_root: str | Path, target: str = "data") -> str:
    """The version id of ``target``: the md5 DVC computes for it in the workspace (equal to ``target.dvc``'s when
    the workspace holds what was last added), or, while the workspace has no ``target`` (not pulled yet), the md5
    ``target.dvc`` records. A workspace that differs from ``target.dvc`` is logged: ``radfm data add`` records
    it."""
    path = Path(repo_root) / target
    recorded = recorded_version(repo_root, target)
    if path.exists():
        version = content_hash(path)
        if recorded and recorded != version:
            log.warning("%s differs from what %s.dvc records (%s): its version is %s; `radfm data add` records it "
                        "(then commit %s.dvc)", path, target, recorded, version, target)
        return version
    if recorded:
        return recorded
    raise FileNotFoundError(f"{path} does not exist and {path}.dvc is absent: no data to version")


def tracked_target(path: str | Path) -> tuple[Path, str] | None:
    """``(repo_root, target)`` of the DVC-tracked folder that holds ``path`` (``path`` itself or a folder above it
    with ``<folder>.dvc`` beside it, as ``dvc add`` writes it): ``data/medmd-synth`` → ``(., "data")``. Lexical:
    a data folder linked in from elsewhere is versioned where the run found it."""
    full = Path(os.path.abspath(Path(str(path)).expanduser()))
    for folder in (full, *full.parents):
        if folder.parent == folder:
            break
        if (folder.parent / f"{folder.name}.dvc").is_file():
            return folder.parent, folder.name
    return None


def version_of(data_root: str | Path) -> str:
    """The data version of a run on ``data_root``: :func:`data_version` of the DVC-tracked folder that holds it
    (``data/`` for ``data/medmd-synth``: what ``data.dvc`` records and ``radfm data version`` prints), else the
    same digest of ``data_root`` itself (what ``dvc add`` would record for it)."""
    found = tracked_target(data_root)
    if found is not None:
        return data_version(*found)
    return content_hash(data_root)


def default_remote(repo_root: str | Path) -> str | None:
    """The remote ``dvc pull`` uses without ``-r`` (``core.remote`` at any config level, ``config.local``
    included), or None: no remote configured, or ``repo_root`` is not inside a DVC repository."""
    try:
        name = _dvc(repo_root, "config", "core.remote", timeout=120).strip()
    except VersioningError:
        return None
    return name or None


def sync(repo_root: str | Path, target: str = "data", remote: str | None = None) -> str | None:
    """Make the workspace hold the data version ``target.dvc`` records when there is a remote to pull it from
    (``remote``, else DVC's default remote, else ``RADFM_DVC_REMOTE_URL``, configured locally as ``radfm data
    pull`` does) → the remote pulled from. Without one (the embedded default: data made here, nothing pushed
    yet) the workspace stays as it is and None comes back; :func:`data_version` versions what is there."""
    name = remote or default_remote(repo_root)
    url = os.environ.get("RADFM_DVC_REMOTE_URL")
    if name is None and url:
        init_repo(repo_root)
        name = configure_remote(repo_root, url, local=True)
    if name is None:
        return None
    pull(repo_root, target, remote=remote)
    return name


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
