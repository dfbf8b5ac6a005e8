"""pyproject.toml's Flower app config: every schema key, the values of `profile=federated`."""

from pathlib import Path

import tomli
from hydra import compose, initialize_config_dir

from ahm_core.config import to_flat
from ahm_core.federated import APP_DEFAULTS, parse_flower_run_config
from simulations import schema

ROOT = Path(__file__).resolve().parents[1]
schema.register()


def flatten(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_pyproject_runs_the_federated_profile_with_every_key():
    app = tomli.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}
    flat = flatten(app["config"])
    with initialize_config_dir(config_dir=str(ROOT / "simulations/conf"), version_base=None):
        profile, _ = schema.split_run_config(compose("federated"))
    assert flat == {**APP_DEFAULTS, **to_flat(profile)}
    cfg, options = parse_flower_run_config(flat)
    assert cfg == profile and options == APP_DEFAULTS
    assert cfg.masking.method == "masking_adamixup" and cfg.federation.rounds == 3
