"""The Flower ServerApp: the configured strategy over the SuperNodes with screening, evaluation,
checkpoints and Prometheus metrics (see `server.run`).

It records how the run ended in `<out-dir>/status.json`, written atomically: `{"token": ...,
"state": "running" | "complete" | "failed"}`, plus `"error": "Type: first line"` when it failed;
bad input (a config, data or checkpoint error) is logged as one line, its message the error,
and the ServerApp returns without the traceback Flower would print.
`token` echoes the app option `run-token`, so a launcher tells its own launch's outcome from a
file an earlier run left; it needs the file because `flwr run` exits 0 whatever the ServerApp did.

Flower's records reach the console once, through Flower's own handler (INFO; FLWR_LOG_LEVEL=DEBUG
for more): they do not propagate to the root logger, where Opacus (`ahm_core.privacy`) installs a
handler on import (`logging.basicConfig`) that printed each line again, plain and at DEBUG.
"""

from __future__ import annotations

import contextlib
import json
from logging import ERROR
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import FLOWER_LOGGER, log, set_logger_propagation
from flwr.serverapp import Grid, ServerApp

from ahm_core.errors import input_errors
from ahm_core.federated import APP_DEFAULTS, parse_flower_run_config
from ahm_core.io import atomic_write
from server.run import ServerRun

STATUS_FILE = "status.json"  # in out-dir
set_logger_propagation(FLOWER_LOGGER, False)
app = ServerApp()


def write_status(out_dir: Path, token: str, state: str, **extra: str) -> None:
    """Write `out_dir/status.json` atomically: the launch's token, the state and `extra`."""
    text = json.dumps({"token": token, "state": state, **extra})
    atomic_write(out_dir / STATUS_FILE, lambda tmp: tmp.write_text(text))


def status_error(out_dir: Path, token: str) -> str | None:
    """Why the ServerApp of launch `token` did not complete, in one line; None when it did."""
    try:
        status = json.loads((out_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        status = None
    if not isinstance(status, dict) or status.get("token") != token:
        return "the ServerApp wrote no status for this launch (see its log)"
    if status.get("state") == "failed":
        lines = str(status.get("error", "")).strip().splitlines() or ["no error given"]
        return f"the ServerApp failed: {lines[0]}"
    if status.get("state") != "complete":
        return f"the ServerApp ended in state {status.get('state')!r}, not 'complete' (see its log)"
    return None


def error_line(err: BaseException) -> str:
    """An exception in one line: its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation the run config describes; its outcome goes to status.json."""
    flat = context.run_config
    out = Path(str(flat.get("out-dir", APP_DEFAULTS["out-dir"]))).resolve()
    token = str(flat.get("run-token", APP_DEFAULTS["run-token"]))
    write_status(out, token, "running")
    try:
        cfg, options = parse_flower_run_config(flat)
        ServerRun(cfg, options).run(grid)
    except input_errors() as err:  # bad input: one line, no traceback (Flower prints one if raised)
        log(ERROR, "ahm: %s", err)
        write_status(out, token, "failed", error=str(err))
        return
    except BaseException as err:
        with contextlib.suppress(OSError):  # the error to report is `err`, not this write's
            write_status(out, token, "failed", error=error_line(err))
        raise
    write_status(out, token, "complete")
