"""Server processes: start gunicorn as the Procfile does, and read what /proc says about it.

CPU time comes from /proc/<pid>/stat (utime+stime of the master and its live workers, plus
the master's cutime+cstime, so a worker that died and was reaped is not lost). The TCP ports a
process tree owns let the Redis side tell our server's connections from anyone else's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUNICORN = Path(sys.executable).with_name("gunicorn")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class ServerFailed(RuntimeError):
    """The server did not come up; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def cpu_seconds(pid: int, with_children: bool = True) -> float:
    """utime+stime of a process (all its threads); with the reaped children's time too."""
    fields = _stat(pid)
    if not fields:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        pass
    return inodes


def local_ports(pids: Sequence[int]) -> set[int]:
    """Local TCP ports of the sockets these processes hold (from /proc/net/tcp{,6})."""
    inodes = set().union(*(_socket_inodes(p) for p in pids)) if pids else set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 9 and cols[9] in inodes:
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@dataclass
class Server:
    name: str
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def cpu_seconds(self) -> float:
        master = self.proc.pid
        return cpu_seconds(master) + sum(cpu_seconds(p, with_children=False)
                                         for p in children(master))

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process group we created (gunicorn shuts down gracefully)."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_gunicorn(name: str, app: str, env: dict[str, str], log_path: Path,
                   extra: Sequence[str] = (), timeout: float = 45.0,
                   port: int | None = None) -> Server:
    """`gunicorn [extra] <app>` from the repo root, so ./gunicorn.conf.py applies as in the
    Procfile (the bench and the tests start every server through here; `port` fixed lets a
    test restart a server where it was). Through GUNICORN_CMD_ARGS (which gunicorn applies
    over its config file) the bind is narrowed to loopback — the benchmark must not listen
    on the network — and the control socket is turned off, since two servers run at once and
    must not share the default ~/.gunicorn/gunicorn.ctl with each other or with another
    gunicorn here."""
    port = port or free_port()
    env = {**env, "PORT": str(port),
           "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port} --no-control-socket"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(GUNICORN), *extra, app], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(name=name, proc=proc, port=port, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerFailed(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.base}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise ServerFailed(f"{name} did not answer /healthz in {timeout:.0f} s:\n{server.log_tail()}")
