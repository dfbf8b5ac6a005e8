"""The two policy tools: the reward floor table and the noise-against-signal probe."""

import pytest

from simulations import policy_noise, reward_floors


def test_the_floor_table_prints_a_row_per_k(capsys):
    reward_floors.main(["--k", "2,4", "--samples", "5000"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| k |") and [line.split(" | ")[0] for line in lines[2:]] == [
        "| 2",
        "| 4",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--k", "2,x"], "--k: expected comma-separated integers"),
        (["--k", "1,2"], "--k: every k must be >= 2"),
        (["--max-coef", "0.4"], "--max-coef: must be in (1/2, 1]"),
        (["--samples", "0"], "--samples: must be >= 1"),
    ],
)
def test_the_floor_table_refuses_bad_options_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        reward_floors.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err


def test_the_noise_probe_reports_noise_and_signal_per_seed(capsys):
    policy_noise.main(["--net", "small", "--updates", "20", "--seeds", "2", "--slope", "5"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "small at lr 0.0001, 20 updates, noise 1 nat per sample"
    assert [line.split(":")[0] for line in lines[1:]] == ["seed 0", "seed 1"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--lr", "0"], "--lr: must be > 0"), (["--updates", "0"], "--updates: must be >= 1")],
)
def test_the_noise_probe_refuses_bad_options_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        policy_noise.main(argv)
    assert message in capsys.readouterr().err
