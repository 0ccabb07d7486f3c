"""Size-limited tmpfs mounts of the test's own, in a user and mount namespace: a disk that really
fills up (ENOSPC, SQLite's ``database or disk is full``) without root on the host.

:func:`unavailable` says why a test cannot have one (no unshare(1), or the kernel refuses
unprivileged user or mount namespaces); the test then skips with that reason.
:func:`in_tmpfs` runs one command on a fresh mount; :class:`TmpfsNamespace` keeps its mounts
alive across the kills of the processes it starts (a sleeping holder process owns the namespace).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

_MOUNT = 'mount -t tmpfs -o size="$1" tmpfs "$2"'


def unavailable(probe_dir: Path) -> str | None:
    """Why a size-limited tmpfs of the test's own cannot be mounted here; None if it can."""
    unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
    if unshare is None or nsenter is None:
        return "needs unshare(1) and nsenter(1) (util-linux) for a size-limited tmpfs of the test's own"
    probe_dir.mkdir(parents=True, exist_ok=True)
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", _MOUNT, "sh", "64k",
         str(probe_dir)], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"user and mount namespaces not permitted here: {probe.stderr.strip()}"
    return None


def in_tmpfs(mountpoint: Path, size: str, argv: Sequence[str]) -> list[str]:
    """A command line that mounts a tmpfs of ``size`` (e.g. "512k") on ``mountpoint`` in a new
    user and mount namespace and then runs ``argv`` there."""
    unshare = shutil.which("unshare")
    assert unshare is not None, "check unavailable() first"
    return [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", f'{_MOUNT} && shift 2 && exec "$@"',
            "sh", size, str(mountpoint), *argv]


def fill(directory: Path) -> int:
    """Fill the file system under ``directory`` to its last block (a file named ``filler``);
    returns the bytes written. :func:`free` gives them back."""
    written = 0
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            with contextlib.suppress(OSError):
                while True:
                    written += os.write(fd, b"x" * size)
    finally:
        os.close(fd)
    return written


def free(directory: Path) -> None:
    """Give back what :func:`fill` took."""
    with contextlib.suppress(FileNotFoundError):
        (directory / "filler").unlink()


class TmpfsNamespace:
    """Tmpfs mounts in one user and mount namespace, held open by a sleeping process.

    Processes started with :meth:`enter` see the mounts; the test reaches their files through
    :meth:`host_path` (``/proc/<holder>/root/...``), so an agent killed with -9 and started again
    finds its outbox where it left it.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, mounts: dict[Path, str]) -> TmpfsNamespace:
        """Mount a tmpfs of the given size (e.g. "16m") on each existing directory."""
        unshare = shutil.which("unshare")
        assert unshare is not None, "check unavailable() first"
        script = " && ".join(f'mount -t tmpfs -o size={size} tmpfs "${i + 1}"'
                             for i, size in enumerate(mounts.values()))
        process = await asyncio.create_subprocess_exec(
            unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
            f"{script} && echo ready && exec sleep 2147483647", "sh", *map(str, mounts),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if line != b"ready\n":
            error = await process.stderr.read()
            raise RuntimeError(f"tmpfs mounts failed: {error.decode(errors='replace').strip()}")
        return cls(process)

    def enter(self, argv: Sequence[str]) -> list[str]:
        """A command line that runs ``argv`` inside the namespace (nsenter execs it: the pid is
        the command's own)."""
        nsenter = shutil.which("nsenter")
        assert nsenter is not None
        return [nsenter, "-t", str(self.process.pid), "-U", "-m", "--preserve-credentials", *argv]

    def host_path(self, path: Path) -> Path:
        """The test's way to ``path`` as the namespace sees it."""
        return Path(f"/proc/{self.process.pid}/root") / path.resolve().relative_to("/")

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
