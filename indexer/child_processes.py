"""Forked helper processes (decode workers) keep nothing of their parent's that others wait for, and die with it.

A DataLoader decode worker is a ``fork`` of the indexing process (the CLI, or ``photodex serve`` running an
index job), so it starts with every open descriptor of its parent. Torch's workers notice a dead parent
only at their next poll (seconds later); meanwhile an orphan would keep

* the writer lock's file (and a PostgreSQL lock's socket): ``flock`` belongs to the open file, so the
  collection stayed locked in a dead writer's name;
* a listening socket: a restart of a killed server could not bind its port.

So, once :func:`prepare_forks` (or :func:`drop_in_children`) has run, every child forked from this process

* replaces the registered descriptors and any inherited listening socket with ``/dev/null`` (the number
  stays taken, so a stale Python object in the child can never close a file opened later), and
* is sent SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``), exiting at once if the parent died
  before that was set. (The signal follows the forking thread: children must not outlive the thread that
  made them, which a DataLoader's workers never do.)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import stat
import sys
from typing import Any

PR_SET_PDEATHSIG = 1

_DROP: set[int] = set()  # descriptors a child must not keep (the writer lock's)
_hooked = False
_parent_pid = 0
_libc: Any = None


def prepare_forks() -> None:
    """From now on, children forked from this process drop what they must not keep and die with it."""
    global _hooked, _libc
    if _hooked:
        return
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            _libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls it
    os.register_at_fork(before=_before_fork, after_in_child=_in_child)
    _hooked = True


def drop_in_children(fd: int) -> None:
    """Children forked from now on get ``/dev/null`` in place of ``fd``."""
    prepare_forks()
    _DROP.add(fd)


def keep_in_children(fd: int | None) -> None:
    """``fd`` is no longer this process's to protect (it was closed)."""
    _DROP.discard(fd)  # type: ignore[arg-type]


def _before_fork() -> None:
    global _parent_pid
    _parent_pid = os.getpid()


def _in_child() -> None:
    _die_with_parent()
    fds = _DROP | _listening_sockets()
    _DROP.clear()
    if fds:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in fds:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
        os.close(null)


def _die_with_parent() -> None:
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != _parent_pid:  # the parent died before the signal was asked for
        os._exit(0)


def _listening_sockets() -> set[int]:
    """This process's descriptors that are listening sockets (Linux: read from ``/proc/self/fd``)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return set()
    found = set()
    for name in names:
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                found.add(fd)
        except OSError:
            pass
        finally:
            sock.detach()  # the descriptor is not this object's to close
    return found
