"""Processes of native deployment tests: each started with its own log file, waited on by port,
stopped by PID together with what it spawned, and its log printed when the test fails.

Also Prometheus for those tests: the Debian package (installed with apt when missing) run on
loopback against a scrape target. Linux only: processes are read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml


class ProcessGroup:
    """The processes one test starts. Each writes stdout+stderr to `logs/NAME.log`; `stop()`
    ends them, and every process they spawned, by PID: SIGTERM, then SIGKILL after a grace.

    As a context manager it stops them on exit and, when the block raised, prints their logs
    (pytest shows a failed test's output)."""

    def __init__(self, logs: Path, env: dict[str, str] | None = None) -> None:
        self.logs_dir = logs
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def log(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def start(
        self, name: str, command: Sequence[str | Path], env: dict[str, str] | None = None, **kw
    ) -> subprocess.Popen:
        """Start `command` in the background, its output in logs/NAME.log."""
        assert name not in self.procs, f"{name} started twice"
        with self.log(name).open("wb") as log:
            self.procs[name] = subprocess.Popen(
                [str(c) for c in command],
                env=env or self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # found again by its session, see stop()
                **kw,
            )
        return self.procs[name]

    def run(
        self,
        name: str,
        command: Sequence[str | Path],
        env: dict[str, str] | None,
        timeout: float,
        watch: Sequence[str] = (),
        **kw,
    ) -> subprocess.CompletedProcess:
        """Run `command` to its end, logged like the others; fails when it outlives `timeout` or
        a process of `watch` exits first (a run that lost its SuperLink would wait forever)."""
        proc = self.start(name, command, env, **kw)
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            self.check_alive(*watch)
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} did not finish in {timeout:.0f} s")
            time.sleep(0.2)
        return subprocess.CompletedProcess(proc.args, proc.returncode, self.output(name))

    def output(self, name: str) -> str:
        return self.log(name).read_text(errors="replace")

    def check_alive(self, *names: str) -> None:
        """Raise when one of `names` (all when none) has exited."""
        for proc in self.procs.values():
            proc.poll()  # reap the exited: Flower's SuperExecs watch their parent's PID
        for name in names or list(self.procs):
            code = self.procs[name].returncode
            if code is not None:
                raise AssertionError(f"{name} exited with code {code}")

    def logs(self, tail: int = 6000) -> str:
        """The end of every log, one section per process."""
        parts = []
        for name, proc in self.procs.items():
            text = self.output(name) if self.log(name).exists() else ""
            status = "running" if proc.poll() is None else f"exit code {proc.returncode}"
            parts.append(f"----- {name} ({status}, pid {proc.pid}) -----\n{text[-tail:]}")
        return "\n".join(parts)

    def stop(self, grace: float = 10.0) -> None:
        """End the started processes and everything they spawned, by PID: the processes below
        them, and those left in their sessions (each was started in a session of its own, so an
        orphan, e.g. the SuperExec of a SuperNode that exited, is still found)."""
        table = _process_table()
        roots = {p.pid for p in self.procs.values() if p.poll() is None}
        sessions = {p.pid for p in self.procs.values()}
        pids = roots | {pid for root in roots for pid in descendants(root, table)}
        pids |= {pid for pid, (_, sid) in table.items() if sid in sessions}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            for proc in self.procs.values():
                proc.poll()  # reap, so a terminated child does not linger as a zombie
            pids = {pid for pid in pids if _alive(pid)}
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                print(self.logs())
        finally:
            self.stop()

    @contextlib.contextmanager
    def on_failure(self) -> Iterator[None]:
        """Print the logs when the block raises (the processes may be stopped already)."""
        try:
            yield
        except BaseException:
            print(self.logs())
            raise


def _alive(pid: int) -> bool:
    """Running (a zombie counts as gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process this user can read."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            fields = text[text.rindex(")") + 2 :].split()
            table[int(stat.parent.name)] = (int(fields[1]), int(fields[3]))
    return table


def descendants(pid: int, table: dict[int, tuple[int, int]] | None = None) -> list[int]:
    """PIDs of every process below `pid`."""
    children: dict[int, list[int]] = {}
    for child, (parent, _) in (table or _process_table()).items():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def wait_for_port(
    port: int, timeout: float, group: ProcessGroup | None = None, *names: str
) -> None:
    """Wait until 127.0.0.1:port accepts connections; fail early when `names` of `group` exit."""
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if group is not None:
            group.check_alive(*names)
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")
        time.sleep(0.2)


# --- Prometheus -----------------------------------------------------------------------------------


def ensure_prometheus() -> str | None:
    """Install Debian's `prometheus` (prometheus + promtool) when missing: as root with apt-get, or
    through passwordless sudo. Returns why it is unavailable, None when it is there."""
    if shutil.which("prometheus") and shutil.which("promtool"):
        return None
    if not shutil.which("apt-get"):
        return "prometheus is not installed and there is no apt-get to install it"
    if os.geteuid() == 0:
        sudo = []
    elif shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"]).returncode == 0:
        sudo = ["sudo", "-n"]
    else:
        return "prometheus is not installed, and installing it needs root or passwordless sudo"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "prometheus"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:  # a stale package index: refresh it once
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not shutil.which("prometheus"):
        return f"apt-get install prometheus failed: {(result.stdout + result.stderr)[-2000:]}"
    return None


def start_prometheus(group: ProcessGroup, folder: Path, target: str, port: int) -> None:
    """Prometheus on 127.0.0.1:`port` scraping `target` (host:port) every second, its config and
    TSDB in `folder`, as process `prometheus` of `group`."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "ahm-serverapp", "static_configs": [{"targets": [target]}]}
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    command = [
        shutil.which("prometheus"),
        f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=info",
    ]
    group.start("prometheus", command)
    wait_for_port(port, 60, group, "prometheus")
