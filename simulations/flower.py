"""Launch this project's Flower app with `flwr run` on the Ray simulation backend, offline.

Each launch gets its own FLWR_HOME (`flwr_home/` in the run folder) and free ports, so launches
never collide; it writes the whole run config as `run_config.toml` in the run folder and stops the
SuperLink that `flwr run` started (by the PID of the process whose command line names that
FLWR_HOME), with the simulation it runs, however the run ends: SIGINT and SIGTERM during a launch
stop it too, then raise LaunchInterrupted. `flwr run` exits 0 even when the ServerApp raised, so
a launch trusts only the ServerApp's `status.json` that carries this launch's token (a fresh
`run-token`): anything else raises ServerAppError and no rounds.json is read. Linux: processes are
read from /proc.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import tomli_w

from ahm_core.config import AHMConfig, to_flat
from ahm_core.federated import APP_DEFAULTS
from ahm_core.io import atomic_write, read_record
from server.app import status_error

PROJECT = Path(__file__).resolve().parents[1]  # holds pyproject.toml's [tool.flwr.app]
FLWR_HOME = "flwr_home"  # each launch's FLWR_HOME, in its run folder
OFFLINE = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what stops a launch and its SuperLink


class ServerAppError(RuntimeError):
    """The ServerApp of a launch failed, or ended without reporting that it completed."""


class LaunchInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a launch; its SuperLink was stopped before this was raised."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.signal = name  # SIGINT or SIGTERM


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bind_error(address: str, port: int) -> OSError | None:
    """Why a TCP server could not listen on address:port now (binding as prometheus_client's
    exporter does, with SO_REUSEADDR), or None when it could."""
    try:
        info = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
        family, kind, proto, _, where = info[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(where)
    except OSError as err:  # socket.gaierror, an address that is not here, a port in use
        return err
    return None


def run_config(cfg: AHMConfig, out_dir: Path, **options: Any) -> dict[str, Any]:
    """The flat Flower run config of `cfg` plus the app options (APP_DEFAULTS keys)."""
    unknown = sorted(set(options) - set(APP_DEFAULTS))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown app option; expected one of {list(APP_DEFAULTS)}")
    return {**to_flat(cfg), **APP_DEFAULTS, "out-dir": str(out_dir.resolve()), **options}


def flwr_env(home: Path) -> dict[str, str]:
    """The environment of an offline `flwr run` whose SuperLink lives in `home`."""
    return {
        **os.environ,
        **OFFLINE,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def launch(
    cfg: AHMConfig,
    out_dir: str | Path,
    supernodes: int,
    cpus_per_client: int = 1,
    gpus_per_client: float = 0.0,
    timeout: float | None = None,
    stream: bool = True,
    **options: Any,
) -> dict:
    """`flwr run` the federation `cfg` describes with `supernodes` clients; returns rounds.json.

    `options` are app options (`metrics-port`, `client-state-dir`, `resume`, ...). Output goes
    to this process's stdout unless `stream` is False. A failed `flwr run` raises
    CalledProcessError, a ServerApp that did not complete ServerAppError, SIGINT or SIGTERM
    LaunchInterrupted (in the main thread; the SuperLink is stopped in every case).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    config = run_config(cfg, out_dir, **{**options, "run-token": token})
    config_file = out_dir / "run_config.toml"
    text = tomli_w.dumps(config)
    atomic_write(config_file, lambda tmp: tmp.write_text(text))
    federation = (
        f"num-supernodes={supernodes} client-resources-num-cpus={cpus_per_client} "
        f"client-resources-num-gpus={gpus_per_client}"
    )
    home = out_dir / FLWR_HOME  # a killed launch's SuperLink is found by it, see stop_superlink
    stop_superlink(home)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    command = [str(Path(sys.executable).parent / "flwr"), "run", str(PROJECT), "--stream"]
    command += ["--run-config", str(config_file), "--federation-config", federation]
    output = None if stream else subprocess.DEVNULL
    env = flwr_env(home)
    with _signals_raise() as hold:
        try:  # an exception here (LaunchInterrupted too) kills `flwr run`: subprocess.run does
            subprocess.run(
                command, env=env, check=True, timeout=timeout, stdout=output, stderr=output
            )
        finally:
            hold()
            stop_superlink(home)
            shutil.rmtree(home, ignore_errors=True)
    error = status_error(out_dir, token)
    if error is not None:
        raise ServerAppError(error)
    return read_record(out_dir / "rounds.json", ("rounds",))


@contextlib.contextmanager
def _signals_raise() -> Iterator[Callable[[], None]]:
    """Inside the block SIGINT and SIGTERM raise LaunchInterrupted, until the function it yields
    is called: after that they are only noted, so cleanup runs to its end, and the first one is
    raised when the block ends. The previous handlers come back then. Only the main thread can
    handle signals: elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    noted: list[str] = []
    armed = True

    def handler(signum: int, _frame: FrameType | None) -> None:
        nonlocal armed
        noted.append(signal.Signals(signum).name)
        if armed:
            armed = False
            raise LaunchInterrupted(noted[0])

    def hold() -> None:
        nonlocal armed
        armed = False

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield hold
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)
    if noted:
        raise LaunchInterrupted(noted[0])


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: [state, ppid, pgrp, session, ...]."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, session id, command line) of every process this user can read."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat(proc.name)
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            found[int(proc.name)] = (int(fields[1]), int(fields[3]), cmdline)
    return found


def superlink_pids(marker: str | Path) -> list[int]:
    """PIDs of the SuperLink processes whose command line contains `marker` (a FLWR_HOME)."""
    return [
        pid
        for pid, (_, _, cmdline) in _processes().items()
        if "flower-superlink" in cmdline and str(marker) in cmdline
    ]


def run_processes(home: str | Path) -> list[int]:
    """The SuperLink of `home` and everything it started: its descendants (SuperExec, the
    simulation, Ray) and the rest of the sessions they lead (processes left behind detached)."""
    table = _processes()
    tree = set(superlink_pids(home))
    grew = True
    while grew:
        children = {pid for pid, (ppid, _, _) in table.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    sessions = {table[pid][1] for pid in tree if pid in table} & tree
    return sorted(tree | {pid for pid, (_, sid, _) in table.items() if sid in sessions})


def stop_superlink(home: str | Path, grace: float = 10.0) -> None:
    """Stop the SuperLink `flwr run` started for `home` and what it started (`run_processes`):
    SIGTERM to the SuperLink, then to what is left; SIGKILL after `grace` seconds each time."""
    members = run_processes(home)
    leaders = superlink_pids(home)
    _terminate(leaders, grace)
    _terminate([pid for pid in members if pid not in leaders], grace)


def _terminate(pids: list[int], grace: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
