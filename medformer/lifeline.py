"""Child processes that die with their parent: a study killed with -9 leaves no cell training.

A `python -m finetune` child started by the study gets the study's pid in $MEDFORMER_PARENT_PID
and asks the kernel (Linux prctl PR_SET_PDEATHSIG) for SIGKILL when its parent goes; worker
processes poll their parent instead (the kernel signal follows the thread that started a process,
and a pool's workers are started by threads that end before the workers do).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_ENV = "MEDFORMER_PARENT_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def child_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child process that must not outlive this one (see die_with_parent_from_env)."""
    return {**env, PARENT_ENV: str(os.getpid())}


def die_with_parent_from_env() -> None:
    """In an entry point: die with the parent named in $MEDFORMER_PARENT_PID, if any (the variable is
    removed, so this process's own children do not inherit it)."""
    parent = os.environ.pop(PARENT_ENV, None)
    if parent and parent.isdigit():
        die_with_parent(int(parent), kernel_signal=True)


def die_with_parent(parent_pid: int, kernel_signal: bool = False) -> None:
    """SIGKILL this process once `parent_pid` is no longer its parent: by the kernel's parent-death
    signal (Linux, `kernel_signal`), else by a watchdog thread that checks every half second."""
    if not (kernel_signal and _set_parent_death_signal()):
        threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="die-with-parent").start()
    if os.getppid() != parent_pid:  # the parent died before the signal was set up
        os.kill(os.getpid(), signal.SIGKILL)


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0


def _watch_parent(parent_pid: int, every: float = 0.5) -> None:
    while os.getppid() == parent_pid:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGKILL)
