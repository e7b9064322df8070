"""Containment by resolved path, and copying that never follows a link.

Every image an importer takes from the user's disk is checked after resolving symbolic links: a path (file or
folder, or any entry under a folder) that resolves outside the image root is refused, however it is written
(``..``, an absolute path, a link named ``a.png`` pointing at ``/etc/passwd``, a link to a folder outside).
A link that resolves inside the root may be read; the copy holds the target's bytes as a regular file, so the
output data root (which ``radfm data push`` uploads) never holds a symbolic link.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from radfm.data.errors import SampleError

OUTSIDE = "resolves outside the image root"


def real(path: str | Path) -> Path:
    """``path`` with every symbolic link resolved (the path need not exist)."""
    return Path(os.path.realpath(path))


def is_inside(root_real: Path, path_real: Path) -> bool:
    """Whether a resolved path is ``root_real`` or under it (both already resolved)."""
    return path_real == root_real or root_real in path_real.parents


def contained_image(root_real: Path, given: str, sid: str, where: str) -> Path:
    """The resolved path of the image a row names (``given``, as the user wrote it), checked to lie under the
    resolved image root and to exist; raises :class:`SampleError` naming the row, ``given`` and the reason."""
    try:
        written = Path(given)
        resolved = real(written if written.is_absolute() else root_real / written)
    except (ValueError, OSError) as exc:  # a NUL byte, a name the file system cannot hold
        raise SampleError(sid, given, f"{where}: image path {given!r} is not a usable path ({exc})") from None
    if not is_inside(root_real, resolved):
        raise SampleError(sid, given, f"{where}: image {given!r} {OUTSIDE} {root_real} (after resolving "
                                      "links and '..'); give paths under the image root, or copy the image there")
    if resolved == root_real:
        raise SampleError(sid, given, f"{where}: image {given!r} names the image root itself; name a file or a "
                                      "series folder under it")
    if not os.path.lexists(resolved):
        raise SampleError(sid, given, f"{where}: image {given!r} not found (paths are relative to {root_real})")
    return resolved


def plan_copies(root_real: Path, src_real: Path, dest: Path, given: str, sid: str, where: str
                ) -> list[tuple[Path, Path]]:
    """(resolved source file, destination) pairs that place the image ``src_real`` (a file, or a folder such
    as a DICOM series, taken whole) at ``dest``. Every entry under a folder is resolved and checked before
    anything is copied, so a refused image leaves nothing behind; a folder reached twice (a link loop, or a
    second link to it) is taken once."""
    plan: list[tuple[Path, Path]] = []
    _plan(root_real, src_real, dest, given, sid, where, plan, set())
    return plan


def _plan(root_real: Path, src_real: Path, dest: Path, shown: str, sid: str, where: str,
          plan: list[tuple[Path, Path]], seen: set[Path]) -> None:
    try:
        mode = os.stat(src_real).st_mode  # resolved already: no link left to follow
    except OSError as exc:
        raise SampleError(sid, shown, f"{where}: cannot read {shown!r} ({exc.strerror or exc})") from None
    if stat.S_ISREG(mode):
        plan.append((src_real, dest))
        return
    if not stat.S_ISDIR(mode):  # a pipe would block the import, a device has no end
        raise SampleError(sid, shown, f"{where}: {shown!r} is not a regular file or folder (a device, pipe or "
                                      "socket); name image files only")
    if src_real in seen:
        return
    seen.add(src_real)
    try:
        names = sorted(os.listdir(src_real))
    except OSError as exc:
        raise SampleError(sid, shown, f"{where}: cannot list the folder {shown!r} ({exc.strerror or exc})"
                          ) from None
    for name in names:
        entry_shown = f"{shown.rstrip('/')}/{name}"
        entry_real = real(src_real / name)
        if not is_inside(root_real, entry_real):
            raise SampleError(sid, entry_shown, f"{where}: {entry_shown!r} inside the image folder {shown!r} "
                                                f"{OUTSIDE} {root_real} (a link out); remove the link or copy "
                                                "the file in")
        if not os.path.exists(entry_real):
            raise SampleError(sid, entry_shown, f"{where}: {entry_shown!r} is a broken link; remove or fix it")
        _plan(root_real, entry_real, dest / name, entry_shown, sid, where, plan, seen)


def place(plan: list[tuple[Path, Path]], link: bool) -> None:
    """Put each planned file in place: a hard link to the resolved file (``link=True``, when the file system
    allows), else a copy of its bytes. Never a symbolic link, never through one: the source is opened with
    ``O_NOFOLLOW`` and must be a regular file, so a link swapped in after the check fails instead of leaking."""
    for src_real, dest in plan:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(dest):
            os.unlink(dest)  # an earlier run's file, or a link someone left in the output
        if link and _hard_link(src_real, dest):
            continue
        _copy_regular(src_real, dest)


def _hard_link(src_real: Path, dest: Path) -> bool:
    try:
        os.link(src_real, dest, follow_symlinks=False)
    except OSError:  # another file system, or links not allowed: a copy is as good
        return False
    if stat.S_ISREG(os.lstat(dest).st_mode):
        return True
    os.unlink(dest)  # the source became a link after the check: a hard link to it would be a link too
    return False


def _copy_regular(src_real: Path, dest: Path) -> None:
    fd = os.open(src_real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fin:
        st = os.fstat(fin.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{src_real.name} is not a regular file")
        with open(dest, "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))  # as shutil.copy2 did: the file's own date
