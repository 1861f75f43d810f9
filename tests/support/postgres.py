"""A throw-away PostgreSQL server for tests: ``initdb`` in a temporary
directory, ``pg_ctl start`` on a free loopback port, ``pg_ctl stop -m fast``.

PostgreSQL refuses to run as root, so as root the server runs as an
unprivileged user (``postgres`` from Debian's package, else ``nobody``).
Connections over TCP need the superuser's password (scram-sha-256), so the
tests exercise the credential paths a real deployment uses; the Unix socket
(in the temporary directory, for ``createdb``) trusts.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from .net import free_port

SUPERUSER = "postgres"
PASSWORD = "test-pg-secret-7c1f"


def postgres_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when not installed."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(done.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None means this process's own user (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


class PostgresServer:
    """One server for a whole test session; :meth:`create_database` gives each
    test an empty database of its own."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="comfyui-grpc-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._user = _server_user()
        self._names = itertools.count(1)
        if self._user is not None:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.root.chmod(0o755)

    def _run(self, *argv: str) -> None:
        user = None if self._user is None else self._user.pw_uid
        group = None if self._user is None else self._user.pw_gid
        done = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            user=user,
            group=group,
            cwd=self.root,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{argv[0]} failed: {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        """Create the cluster (the first time), then start it; a restart keeps its port."""
        if not self.data.exists():
            self._init()
        for attempt in range(3):
            self.port = self.port or free_port()
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._run(
                    "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                    "-l", str(self.log), "-o", options,
                )  # fmt: skip
                return
            except RuntimeError:
                self.port = 0
                if attempt == 2:  # another process took the free port in between
                    raise

    def _init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8",
        )  # fmt: skip

    def stop(self, *, keep: bool = False) -> None:
        """Stop the server (dropping its connections); remove everything unless ``keep``."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))
        finally:
            if not keep:
                shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{SUPERUSER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "test") -> str:
        """A new, empty database; its name."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        self._run("createdb", "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER, name)
        return name
