"""Keep torch.distributed's rendezvous store of a loopback Ray on loopback: a Ray worker setup hook.

Ray Train's rank 0 hosts torch's ``TCPStore`` (the rendezvous of the process group) at
``MASTER_ADDR:MASTER_PORT``. torch binds that server to every interface (``::``) whatever ``MASTER_ADDR`` says,
so a training run on a Ray that lives on 127.0.0.1 still listened on the network. When ``MASTER_ADDR`` is a
loopback address only processes of this machine can use the store anyway, so rank 0 may as well listen on that
address alone: the patched ``_create_c10d_store`` binds the socket itself and hands it to ``TCPStore``
(``master_listen_fd``). Any other address (a real cluster) goes to torch unchanged.

The hook runs in every Ray worker; it does not import torch (2 s per worker), it patches
``torch.distributed.rendezvous`` when a worker first imports it. Installed by radfm's local Ray::

    ray.init(..., runtime_env={"worker_process_setup_hook": WORKER_SETUP_HOOK})
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import ipaddress
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from types import ModuleType
from typing import Any

__all__ = ["WORKER_SETUP_HOOK", "loopback_torch_store"]

WORKER_SETUP_HOOK = "radfm.services.loopback.loopback_torch_store"
_RENDEZVOUS = "torch.distributed.rendezvous"
_PATCHED = "__radfm_loopback__"


def loopback_torch_store() -> None:
    """Make rank 0's torch store listen only on a loopback ``MASTER_ADDR`` (now or when torch is imported)."""
    module = sys.modules.get(_RENDEZVOUS)
    if module is not None:
        _patch(module)
    elif not any(isinstance(finder, _PatchOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _patch(rendezvous: ModuleType) -> None:
    create: Callable[..., Any] = rendezvous._create_c10d_store
    if getattr(create, _PATCHED, False):
        return

    @functools.wraps(create)
    def create_store(hostname: str, port: int, rank: int, world_size: int, timeout: timedelta,
                     use_libuv: bool = True) -> Any:
        if rank != 0 or not port or not is_loopback(hostname) or rendezvous._torchelastic_use_agent_store():
            return create(hostname, port, rank, world_size, timeout, use_libuv)
        family = socket.AF_INET6 if ":" in hostname else socket.AF_INET
        try:
            listener = socket.create_server((hostname, port), family=family, backlog=socket.SOMAXCONN)
        except OSError:
            # Taken, e.g. by the multi-tenant server torch already runs for this port in this process: torch
            # reuses that one, or reports the clash in its own words.
            return create(hostname, port, rank, world_size, timeout, use_libuv)
        fd = listener.detach()
        try:
            return rendezvous.TCPStore(host_name=hostname, port=port, world_size=world_size, is_master=True,
                                       timeout=timeout, multi_tenant=True, master_listen_fd=fd,
                                       use_libuv=use_libuv)
        except BaseException:
            os.close(fd)
            raise

    setattr(create_store, _PATCHED, True)
    rendezvous._create_c10d_store = create_store


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds ``torch.distributed.rendezvous`` as the path finder would, with a loader that patches it."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _RENDEZVOUS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then patches the module; everything else is the real loader's."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        _patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package… for inspect and linecache
        return getattr(self._inner, name)
