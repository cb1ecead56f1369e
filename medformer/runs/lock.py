"""One run per output_dir: an exclusive lock on `output_dir/run.lock`, held for the run's life.

`fcntl.flock` locks belong to the open file: the OS drops them when the process ends, however it
ends, so a crashed or killed run never leaves its folder locked.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from ..errors import UserError

LOCK_FILE = "run.lock"


class RunLockedError(UserError):
    """Another live process is running in this output_dir."""


class RunLock:
    """`with RunLock(output_dir):` creates the folder, locks it, and unlocks at exit."""

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.dir = Path(output_dir)
        self.enabled = enabled  # multi-process runs: only the main process locks
        self.handle: IO[str] | None = None

    def __enter__(self) -> RunLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise RunLockedError(
                f"output_dir {self.dir} is in use by another run (pid {owner}): wait for it to end, "
                "or choose another output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
