"""A federation in this process: the project's ServerRun and ClientApp over `LocalGrid`, a Flower
Grid that calls the ClientApp directly, one Context per node, one node after another.

For tests and studies that need many short federations (the Byzantine study, one round per
strategy), where Ray's start-up would dominate. It runs the same server and client code as
`flwr run`; what it leaves out is the transport: messages are not serialised, there are no
timeouts and nodes run in turn. `flwr run` (simulations.flower) remains the way to run.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from ahm_core.config import AHMConfig, to_flat
from ahm_core.federated import APP_DEFAULTS
from client.app import app as client_app
from server.run import ServerRun

FIRST_NODE_ID = 10_000  # node i has id FIRST_NODE_ID + i, so sorted ids are partition order


class LocalGrid(Grid):
    """`num_nodes` SuperNodes in this process, node i holding partition i."""

    def __init__(self, run_config: dict[str, Any], num_nodes: int, app: ClientApp = client_app):
        self.app = app
        self._run = Run.create_empty(run_id=0)
        # What a ServerApp process knows of itself and Message() reads: run 0, the SuperLink.
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 0, 0, SUPERLINK_NODE_ID
        self.contexts = {
            FIRST_NODE_ID + i: Context(
                run_id=0,
                node_id=FIRST_NODE_ID + i,
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        """Set the run this grid serves."""
        self._run = run

    @property
    def run(self) -> Run:
        """The run this grid serves."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message to one node."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """Every node's id."""
        return list(self.contexts)

    def _handle(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        # a copy, as a transport delivers one: SecAgg+ sends every node the same record, and
        # its client mod takes entries out of the one it receives
        message = copy.deepcopy(message)
        try:
            return self.app(message, self.contexts[node])
        except Exception as err:  # a failing client is a reply with an error, as in Flower
            return Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=message)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Run each message's node now; its reply waits for `pull_messages`."""
        ids = []
        for number, message in enumerate(messages):
            key = f"{len(self._replies)}-{number}"
            self._replies[key] = self._handle(message)
            ids.append(key)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies of pushed messages."""
        return [self._replies.pop(key) for key in message_ids if key in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        """Each node's reply, in turn (there is no timeout in one process)."""
        return self.pull_messages(self.push_messages(messages))


def run_local(
    cfg: AHMConfig,
    out_dir: str | Path,
    num_nodes: int,
    grid_type: type[LocalGrid] = LocalGrid,
    **options: Any,
) -> dict:
    """A whole federated run of `cfg` in this process; returns what rounds.json holds."""
    run_config = {**to_flat(cfg), **APP_DEFAULTS, "out-dir": str(Path(out_dir)), **options}
    grid = grid_type(run_config, num_nodes)
    return ServerRun(cfg, {k: run_config[k] for k in APP_DEFAULTS}).run(grid)
