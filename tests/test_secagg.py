"""Secure aggregation (`federation.secagg`, Flower's SecAgg+) in in-process federations: the mean
update, and nothing else, reaches the server; a client whose metrics fail is dropped before the
masked vectors are summed; what cannot see individual updates is refused."""

from __future__ import annotations

import pytest
import torch
from scales import NODES, ONE_ROUND, config

from ahm_core.config import AHMConfig, ConfigError
from server.secagg import check_secagg
from simulations.local import run_local

PLAIN = {  # the screen's per-update bounds, which secure aggregation cannot apply, off
    "federation.rounds": 2,
    "federation.clip_ratio": 0.0,
    "federation.median_statistics": False,
    "federation.capture_clients": NODES,
}


def secure(**extra) -> AHMConfig:
    return config(ONE_ROUND, **{**PLAIN, "federation.secagg": True, **extra})


def state(run: dict) -> dict:
    return torch.load(run["checkpoint"], weights_only=True)["state"]


def test_the_server_gets_the_mean_update_up_to_quantisation_and_captures_only_it(tmp_path):
    masked = run_local(secure(), tmp_path / "secure", NODES)
    plain = run_local(config(ONE_ROUND, **PLAIN), tmp_path / "plain", NODES)
    a, b = state(masked), state(plain)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3  # 2**22 levels in +-8
    assert all(r["accepted"] == NODES for r in masked["rounds"][1:])
    captured = sorted((tmp_path / "secure" / "captured" / "round_0001").iterdir())
    assert len(captured) == 1  # the aggregate, whatever capture_clients asks
    record = torch.load(captured[0], weights_only=True)
    plain_round = torch.load(
        sorted((tmp_path / "plain" / "captured" / "round_0001").iterdir())[0], weights_only=True
    )
    assert not torch.allclose(record["update"][k := next(iter(a))], plain_round["update"][k])


def test_a_client_whose_metrics_fail_is_dropped_before_the_sum(tmp_path):
    """A claim of 1e9 examples would be its weight in the masked sum: it is refused before the
    vectors are added, and the protocol unmasks the others' mean as if it had dropped out."""
    hostile = {"federation.fault_fraction": 1 / NODES, "federation.fault_mode": "huge_examples"}
    run = run_local(secure(**hostile, **{"federation.rounds": 1}), tmp_path / "hostile", NODES)
    r = run["rounds"][1]
    assert (r["sampled"], r["accepted"], r["failed"]) == (NODES, NODES - 1, 1)
    failing = {"federation.fault_fraction": 1 / NODES, "federation.fault_mode": "raise"}
    honest = run_local(secure(**failing, **{"federation.rounds": 1}), tmp_path / "raise", NODES)
    a, b = state(run), state(honest)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


def test_the_screen_sees_only_the_mean_under_secure_aggregation(tmp_path):
    """What secure aggregation costs: a sign-flipped update (x1) that the screen rejects in the
    clear is summed unseen with the honest ones; a x10 flip breaks the mean itself, which the
    screen then rejects, and the honest clients' round with it."""
    flip = {"federation.fault_fraction": 1 / NODES, "federation.fault_mode": "signflip"}
    plain = config(ONE_ROUND, **PLAIN, **flip, **{"federation.fault_scale": 1.0})
    seen = run_local(plain, tmp_path / "seen", NODES)["rounds"][1:]
    hidden = run_local(
        secure(**flip, **{"federation.fault_scale": 1.0}), tmp_path / "hidden", NODES
    )
    broken = run_local(secure(**flip), tmp_path / "broken", NODES)["rounds"][1:]
    assert all(r["accepted"] == NODES - 1 and sum(r["rejected"].values()) == 1 for r in seen)
    assert all(r["accepted"] == NODES and not r["rejected"] for r in hidden["rounds"][1:])
    assert all(r["accepted"] == 0 and sum(r["rejected"].values()) == NODES for r in broken)


def test_client_side_dp_fedavg_noises_the_securely_aggregated_mean(tmp_path):
    dp = {"federation.dp": "client_fixed", "federation.dp_noise_multiplier": 0.5}
    run = run_local(secure(**dp), tmp_path, NODES)
    assert all(
        r["accepted"] == NODES and r["dp"]["releases"] == r["round"] for r in run["rounds"][1:]
    )


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"federation.strategy": "krum"}, "federation.secagg: the server sees only the clients'"),
        ({"federation.strategy": "fedmedian"}, "fedmedian needs each client's"),
        ({"federation.dp": "server_fixed"}, "federation.dp: server_fixed clips each client's"),
        ({"federation.min_clients": 1}, "federation.min_clients: SecAgg+ masks each update"),
        ({"federation.secagg_num_shares": 2}, "secagg_num_shares=2: a count of neighbours must"),
        ({"federation.secagg_num_shares": 2.5}, "secagg_num_shares=2.5: a count"),
        ({"federation.secagg_num_shares": NODES + 2}, "at most federation.min_clients"),
    ],
)
def test_what_secure_aggregation_cannot_run_is_refused_in_one_line(overrides, line):
    with pytest.raises(ConfigError) as err:
        check_secagg(secure(**overrides).federation)
    assert line in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("shares", [0.5, 1.0, 3])
def test_a_proportion_or_an_odd_count_of_neighbours_is_taken(shares):
    check_secagg(secure(**{"federation.secagg_num_shares": shares}).federation)
