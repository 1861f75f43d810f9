"""The gateway as its own process (``python -m comfyui_grpc serve``), for SIGKILL,
SIGTERM and memory measurements."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

LISTENING = re.compile(r"gRPC server listening on \S+ \(port (\d+)")


class GatewayProcess:
    """``python -m comfyui_grpc serve`` with its log captured.

    The log lines are kept in ``lines`` and, when ``log_path`` is given,
    appended to that file too (several incarnations can share one file).
    """

    def __init__(
        self,
        comfyui_urls: str | Sequence[str],
        root: Path,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        state: bool = True,
        log_path: Path | None = None,
    ) -> None:
        urls = [comfyui_urls] if isinstance(comfyui_urls, str) else list(comfyui_urls)
        self.argv = [
            sys.executable,
            "-m",
            "comfyui_grpc",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            *(arg for url in urls for arg in ("--comfyui-url", url)),
            "--artifact-dir",
            str(root / "artifacts"),
            "--reconcile-interval",
            "0.5",
            "--shutdown-grace",
            "20",
        ]
        if state:
            self.argv += ["--state-path", str(root / "state.db")]
        self.argv += list(extra_args)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self.port = 0
        self._reader: asyncio.Task[None] | None = None
        self._seen = asyncio.Condition()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, timeout: float = 30.0) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        self._reader = asyncio.create_task(self._read())
        match = await self.wait_for(LISTENING, timeout)
        self.port = int(match.group(1))

    async def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        log_file = None if self.log_path is None else _append(self.log_path)
        try:
            async for raw in self.process.stderr:
                line = raw.decode(errors="replace")
                if log_file is not None:
                    log_file.write(line)
                async with self._seen:
                    self.lines.append(line)
                    self._seen.notify_all()
        finally:
            if log_file is not None:
                log_file.close()
            async with self._seen:
                self._seen.notify_all()

    async def wait_for(self, pattern: re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        """The first log line matching ``pattern``, waiting for it if need be."""

        async def find() -> re.Match[str]:
            checked = 0
            async with self._seen:
                while True:
                    for line in self.lines[checked:]:
                        if found := pattern.search(line):
                            return found
                    checked = len(self.lines)
                    if self._reader is not None and self._reader.done():
                        raise AssertionError("gateway exited:\n" + "".join(self.lines[-200:]))
                    await self._seen.wait()

        return await asyncio.wait_for(find(), timeout)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        """SIGKILL if still running (a no-op otherwise), then reap."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.wait()

    def rss_kib(self) -> int:
        """Resident set size right now (``VmRSS`` from ``/proc``), in KiB."""
        return _status_kib(self.pid, "VmRSS")


def _append(path: Path) -> IO[str]:
    return path.open("a", encoding="utf-8")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)
