"""docker/: every compose file validates (docker-compose config), and its structure holds; and a
native deployment of the real apps runs on loopback, insecure and with TLS, scraped by Prometheus.

The validation runs docker/check_compose.sh (it installs Debian's docker-compose when missing;
skipped only when it is absent and cannot be installed). The structural checks parse the YAML
themselves (overlays merged the way Compose merges `command`): Flower images pinned to the flwr
version of pyproject.toml, distinct partition-ids, Prometheus scraping the ServerApp's metrics
port, TLS flags on every Flower service of the TLS overlay, and every flag accepted by the
installed Flower CLI. The certificate script is run for real when openssl is there. The native
deployment (about a minute per run; processes in tests/deploy.py) is described at its section.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import deploy
import pytest
import tomli
import tomli_w
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from scales import E2E
from scales import config as scale_config

from server.metrics import ServerMetrics
from simulations.flower import OFFLINE, free_port, run_config

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
BIN = Path(sys.executable).parent
OVERLAYS = ["with-tls.yml", "gpu.yml"]
CLI = {"superlink": "flower-superlink", "supernode": "flower-supernode"}
CLI_SUPEREXEC = "flower-superexec"

# --- helpers ------------------------------------------------------------------------------------


def load(path: Path) -> dict:
    with path.open() as f:
        return yaml.safe_load(f)


def interpolate(value, env: dict[str, str] | None = None):
    """Compose's ${VAR:-default} / ${VAR} interpolation, over a parsed document."""
    env = env or {}
    if isinstance(value, str):
        return re.sub(
            r"\$\{(\w+)(?::?-([^}]*))?\}",
            lambda m: env.get(m.group(1)) or (m.group(2) or ""),
            value,
        )
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def merge(*docs: dict) -> dict:
    """Merge compose documents: services key by key (lists such as `command` are replaced, like
    Compose does for `command`; `secrets` lists are unioned), top-level maps key by key."""
    out: dict = {}
    for doc in docs:
        for key, value in doc.items():
            if key == "services":
                services = out.setdefault("services", {})
                for name, svc in value.items():
                    merged = services.setdefault(name, {})
                    for k, v in svc.items():
                        if k == "secrets" and k in merged:
                            merged[k] = merged[k] + [s for s in v if s not in merged[k]]
                        elif k in {"depends_on", "environment", "build"} and k in merged:
                            merged[k] = {**merged[k], **copy.deepcopy(v)}
                        else:
                            merged[k] = copy.deepcopy(v)
            elif isinstance(value, dict):
                out.setdefault(key, {}).update(copy.deepcopy(value))
            else:
                out[key] = copy.deepcopy(value)
    return out


def compose(*files: str | Path, env: dict[str, str] | None = None) -> dict:
    return interpolate(merge(*(load(DOCKER / f) for f in files)), env)


def scale_overlay(tmp_path: Path, n: int, *flags: str) -> Path:
    out = tmp_path / f"scale-{n}{''.join(flags)}.yml"
    subprocess.run(["bash", DOCKER / "scale.sh", str(n), *flags, "-o", out], check=True)
    return out


def kind(name: str, svc: dict) -> str | None:
    """superlink / supernode / superexec for the Flower services (None for the others)."""
    image = str(svc.get("image", ""))
    if "entrypoint" in svc:  # one-shot helpers on a Flower image (state init, registrar)
        return None
    if image.startswith("flwr/superlink:"):
        return "superlink"
    if image.startswith("flwr/supernode:"):
        return "supernode"
    if image.startswith("ahm/superexec:"):
        return "superexec"
    return None


def flower_services(doc: dict) -> dict[str, str]:
    return {n: k for n, s in doc["services"].items() if (k := kind(n, s))}


def option(command: list[str], flag: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == flag:
            return command[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def node_config(command: list[str]) -> dict[str, int]:
    raw = option(command, "--node-config")
    assert raw, f"no --node-config in {command}"
    return {k: int(v) for k, v in (kv.split("=") for kv in raw.split())}


def flwr_requirement() -> Requirement:
    with (ROOT / "pyproject.toml").open("rb") as f:
        deps = tomli.load(f)["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps]
    (flwr,) = [r for r in reqs if r.name == "flwr"]
    return flwr


def all_compose_docs(tmp_path: Path) -> dict[str, dict]:
    docs = {f: load(DOCKER / f) for f in ["compose.yml", *OVERLAYS]}
    for flags in [(), ("--tls", "--gpu")]:
        path = scale_overlay(tmp_path, 4, *flags)
        docs[path.name] = load(path)
    return docs


# --- the validation check -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def check_compose() -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", DOCKER / "check_compose.sh"], capture_output=True, text=True, timeout=900
    )
    if result.returncode == 3:
        pytest.skip(f"docker-compose is absent and cannot be installed here: {result.stderr}")
    return result


def test_check_compose_validates_every_compose_file(check_compose):
    out = check_compose.stdout + check_compose.stderr
    assert check_compose.returncode == 0, out
    ok = [line for line in check_compose.stdout.splitlines() if line.startswith("ok ")]
    assert len(ok) == 6, out
    for name in ["compose.yml", *OVERLAYS]:
        assert any(f"-f {name}" in line for line in ok), f"{name} never validated:\n{out}"


def test_merged_tls_config_from_docker_compose(check_compose):
    """The TLS flags survive Compose's own merge (not only ours)."""
    exe = shutil.which("docker-compose")
    assert exe, "check_compose passed but docker-compose is not on PATH"
    text = subprocess.run(
        [exe, "-f", "compose.yml", "-f", "with-tls.yml", "config"],
        cwd=DOCKER,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = yaml.safe_load(text)
    for name, k in flower_services(doc).items():
        command = doc["services"][name]["command"]
        assert "--insecure" not in command, name
        assert ("--root-certificates" in command) or ("--ssl-certfile" in command), name
        if k == "supernode":
            assert "--auth-supernode-private-key" in command


# --- structure -----------------------------------------------------------------------------------


def test_flower_images_pinned_to_pyproject_flwr(tmp_path):
    flwr = flwr_requirement()
    versions = set()
    for doc in all_compose_docs(tmp_path).values():
        text = yaml.safe_dump(doc)
        images = re.findall(r"image: (\S+)", text)
        for image in images:
            repo, _, tag = image.partition(":")
            if repo.startswith("flwr/"):
                versions.add(tag)
            elif repo == "ahm/superexec":
                versions.add(tag.split("-")[0])
        for version in re.findall(r"FLWR_VERSION: '?([^'\s]+)", text):
            versions.add(version)
    dockerfile = (DOCKER / "Dockerfile").read_text()
    versions.update(re.findall(r"^ARG FLWR_VERSION=(\S+)", dockerfile, re.M))
    versions.update(re.findall(r"^flwr_version=(\S+)", (DOCKER / "scale.sh").read_text(), re.M))
    assert len(versions) == 1, f"Flower versions disagree across docker/: {versions}"
    (version,) = versions
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"pin an exact release, not {version!r}"
    assert flwr.specifier.contains(Version(version)), (
        f"images use flwr {version}, pyproject.toml requires {flwr}"
    )


def test_every_flower_service_uses_a_pinned_image():
    doc = compose("compose.yml")
    for name, svc in doc["services"].items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith((":latest", ":nightly")), (name, image)


def check_supernodes(doc: dict, n: int) -> None:
    services = doc["services"]
    supernodes = {name: s for name, s in services.items() if kind(name, s) == "supernode"}
    assert len(supernodes) == n
    ids = []
    for name, svc in supernodes.items():
        cfg = node_config(svc["command"])
        assert cfg["num-partitions"] == n, (name, cfg)
        ids.append(cfg["partition-id"])
        assert name == f"supernode-{cfg['partition-id']}"
        assert option(svc["command"], "--isolation") == "process"
        assert option(svc["command"], "--host") == "0.0.0.0"
        # its own ClientApp SuperExec dials its Runtime API
        port = option(svc["command"], "--port")
        clients = [
            s
            for s in services.values()
            if option(s.get("command", []), "--runtime-api-address") == f"{name}:{port}"
        ]
        assert len(clients) == 1, f"{name} needs exactly one ClientApp SuperExec"
    assert sorted(ids) == list(range(n)), f"partition-ids must be distinct 0..{n - 1}: {ids}"


def test_supernodes_have_distinct_partition_ids():
    check_supernodes(compose("compose.yml"), 2)
    check_supernodes(compose("compose.yml", "with-tls.yml"), 2)
    check_supernodes(compose("compose.yml", env={"AHM_NUM_PARTITIONS": "2"}), 2)


@pytest.mark.parametrize("n", [3, 5])
def test_scaled_supernodes_have_distinct_partition_ids(tmp_path, n):
    plain = scale_overlay(tmp_path, n)
    check_supernodes(compose("compose.yml", plain), n)
    tls = scale_overlay(tmp_path, n, "--tls")
    check_supernodes(compose("compose.yml", "with-tls.yml", tls), n)


def test_superlink_state_on_a_volume_and_serverapp_on_the_superlink():
    doc = compose("compose.yml")
    link = doc["services"]["superlink"]
    database = option(link["command"], "--database")
    assert database and database.startswith("/app/state/")
    assert "superlink-state:/app/state" in link["volumes"]
    assert "superlink-state" in doc["volumes"]
    assert option(link["command"], "--isolation") == "process"
    server = doc["services"]["superexec-serverapp"]
    assert option(server["command"], "--runtime-api-address") == "superlink:8000"


def test_prometheus_scrapes_the_serverapp_metrics_port():
    prom = load(DOCKER / "prometheus/prometheus.yml")
    targets = [
        t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    with (DOCKER / "run-config.toml").open("rb") as f:
        run_config = tomli.load(f)
    port = run_config["metrics-port"]
    assert port == 9400
    assert run_config["metrics-address"] == "0.0.0.0"
    assert f"superexec-serverapp:{port}" in targets
    server = compose("compose.yml")["services"]["superexec-serverapp"]
    assert str(port) in [str(p) for p in server.get("expose", [])]


def flatten(table: dict, prefix: str = "") -> dict:
    """Flower's flattening of a run config: nested tables become dotted keys."""
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_run_config_keys_exist_in_pyproject():
    with (ROOT / "pyproject.toml").open("rb") as f:
        app_config = tomli.load(f)["tool"]["flwr"]["app"]["config"]
    with (DOCKER / "run-config.toml").open("rb") as f:
        overrides = flatten(tomli.load(f))
    known = flatten(app_config)
    assert set(overrides) <= set(known), f"unknown run-config keys: {set(overrides) - set(known)}"
    for key, value in overrides.items():
        assert type(value) is type(known[key]), f"{key}: {value!r} vs default {known[key]!r}"


TLS_FLAGS = {
    "superlink": [
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--enable-supernode-auth",
        "--superexec-auth-secret-file",
    ],
    "supernode": [
        "--root-certificates",
        "--auth-supernode-private-key",
        "--ssl-ca-certfile",
        "--ssl-certfile",
        "--ssl-keyfile",
        "--superexec-auth-secret-file",
    ],
    "superexec": ["--root-certificates", "--superexec-auth-secret-file"],
}


def check_tls(doc: dict) -> None:
    services = flower_services(doc)
    assert sorted(set(services.values())) == ["superexec", "superlink", "supernode"]
    node_keys = []
    for name, k in services.items():
        svc = doc["services"][name]
        command = svc["command"]
        assert "--insecure" not in command, f"{name} still runs insecure"
        for flag in TLS_FLAGS[k]:
            assert option(command, flag) or flag == "--enable-supernode-auth", (name, flag)
            if flag != "--enable-supernode-auth":
                assert option(command, flag).startswith("/run/secrets/"), (name, flag)
        assert "--enable-supernode-auth" in command or k != "superlink"
        # every secret a command reads is mounted into that service and defined
        used = {a.removeprefix("/run/secrets/") for a in command if a.startswith("/run/secrets/")}
        mounted = {s if isinstance(s, str) else s["source"] for s in svc.get("secrets", [])}
        assert used <= mounted, (name, used - mounted)
        assert used <= set(doc["secrets"]), (name, used - set(doc["secrets"]))
        if k == "supernode":
            node_keys.append(option(command, "--auth-supernode-private-key"))
            assert svc["depends_on"]["supernode-registrar"]["condition"] == (
                "service_completed_successfully"
            )
    assert len(node_keys) == len(set(node_keys)), "each SuperNode needs its own key pair"
    registrar = doc["services"]["supernode-registrar"]
    assert any(v.endswith(":/app/node-auth-pub:ro") for v in registrar["volumes"])


def test_tls_overlay_gives_every_flower_service_its_cert_flags(tmp_path):
    check_tls(compose("compose.yml", "with-tls.yml"))
    check_tls(compose("compose.yml", "with-tls.yml", "gpu.yml"))
    check_tls(compose("compose.yml", "with-tls.yml", scale_overlay(tmp_path, 4, "--tls")))


def test_gpu_overlay_reserves_a_gpu_for_each_client(tmp_path):
    for doc in [
        compose("compose.yml", "gpu.yml"),
        compose("compose.yml", "gpu.yml", scale_overlay(tmp_path, 4, "--gpu")),
    ]:
        for name, svc in doc["services"].items():
            if not name.startswith("superexec-clientapp-"):
                assert "deploy" not in svc, f"{name} should not reserve a GPU"
                continue
            devices = svc["deploy"]["resources"]["reservations"]["devices"]
            assert any("gpu" in d["capabilities"] for d in devices), name
            assert svc["build"]["args"]["TORCH_VARIANT"].startswith("cu"), name
            assert svc["image"].endswith(svc["build"]["args"]["TORCH_VARIANT"])


def cli_flags(binary: str) -> set[str]:
    exe = BIN / binary  # installed with flwr, a dependency of the project
    env = {**os.environ, **OFFLINE, "COLUMNS": "200"}
    out = subprocess.run(
        [exe, "--help"], capture_output=True, text=True, env=env, timeout=120
    ).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", out))


def test_every_flag_is_accepted_by_the_installed_flower(tmp_path):
    accepted = {k: cli_flags(b) for k, b in {**CLI, "superexec": CLI_SUPEREXEC}.items()}
    docs = [
        compose("compose.yml"),
        compose("compose.yml", "with-tls.yml", "gpu.yml"),
        compose("compose.yml", scale_overlay(tmp_path, 4)),
        compose("compose.yml", "with-tls.yml", scale_overlay(tmp_path, 4, "--tls")),
    ]
    for doc in docs:
        for name, k in flower_services(doc).items():
            used = {a.split("=")[0] for a in doc["services"][name]["command"] if a[:2] == "--"}
            assert used <= accepted[k], f"{name}: flags unknown to Flower: {used - accepted[k]}"


def test_grafana_dashboard_queries_metrics_the_server_exports():
    from prometheus_client import generate_latest

    m = ServerMetrics()
    m.record_round(1, 2.0, 2, 1, 1, {"norm": 1}, 0.5, 0.9, {2: 3})
    exported = set(re.findall(r"^(ahm_\w+)", generate_latest(m.registry).decode(), re.M))
    dashboard = json.loads((DOCKER / "grafana/dashboards/ahm.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\bahm_\w+", e)}
    assert used, "the dashboard queries no ahm_ metric"
    assert used <= exported, (
        f"dashboard queries metrics the server does not export: {used - exported}"
    )
    for needed in [
        "ahm_verification_accuracy",
        "ahm_train_loss",
        "ahm_clients_total",
        "ahm_updates_rejected_total",
        "ahm_k_chosen_total",
    ]:
        assert needed in used, needed
    assert any('outcome="failed"' in e for e in exprs)
    datasource = load(DOCKER / "grafana/provisioning/datasources/prometheus.yml")
    uid = datasource["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in dashboard["panels"])
    provider = load(DOCKER / "grafana/provisioning/dashboards/ahm.yml")["providers"][0]
    grafana = compose("compose.yml")["services"]["grafana"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]


def test_requirements_split_for_the_image():
    script = DOCKER / "requirements_from_pyproject.py"
    run = [sys.executable, script]
    torch = subprocess.run(
        [*run, "torch", ROOT / "pyproject.toml"], capture_output=True, text=True, check=True
    ).stdout.split()
    rest = subprocess.run(
        [*run, "rest", ROOT / "pyproject.toml"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert {Requirement(r).name for r in torch} == {"torch", "torchvision"}
    reqs = {Requirement(r).name: Requirement(r) for r in rest}
    assert "torch" not in reqs and "torchvision" not in reqs
    assert reqs["flwr"].extras == set(), "the image keeps its own flwr, without Ray"
    assert reqs["flwr"].specifier == flwr_requirement().specifier


def test_shell_scripts_parse():
    scripts = ["certs/generate.sh", "check_compose.sh", "scale.sh"]
    for script in scripts:
        subprocess.run(["bash", "-n", DOCKER / script], check=True)
    subprocess.run(["sh", "-n", DOCKER / "register-supernodes.sh"], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(
            ["shellcheck", *scripts, "register-supernodes.sh"],
            cwd=DOCKER,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout


def test_generated_files_are_git_ignored():
    ignore = (DOCKER / ".gitignore").read_text().split()
    assert "certs/out/" in ignore
    assert "supernodes.generated.yml" in ignore


# --- certificates ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    for tool in ["openssl", "ssh-keygen"]:
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    out = tmp_path_factory.mktemp("certs") / "out"
    subprocess.run(
        ["bash", DOCKER / "certs/generate.sh", "-n", "2", "-o", out],
        check=True,
        capture_output=True,
    )
    return out


def openssl(*args: str | Path) -> str:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=True).stdout


def test_cert_script_issues_certificates_that_verify(certs):
    for name in ["superlink", "supernode-0", "supernode-1"]:
        assert "OK" in openssl("verify", "-CAfile", certs / "ca.crt", certs / f"{name}.crt")
        text = openssl("x509", "-in", certs / f"{name}.crt", "-noout", "-ext", "subjectAltName")
        host = "superlink" if name == "superlink" else name
        for san in [f"DNS:{host}", "DNS:localhost", "IP Address:127.0.0.1"]:
            assert san in text, (name, text)
    with_tls = compose("compose.yml", "with-tls.yml", env={"AHM_CERTS_DIR": str(certs)})
    for secret in with_tls["secrets"].values():
        assert Path(secret["file"]).is_file(), f"generate.sh does not write {secret['file']}"
    assert len((certs / "superexec.secret").read_bytes()) >= 32


def test_cert_script_node_keys_load_as_nist_ecdsa(certs):
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        load_ssh_private_key,
        load_ssh_public_key,
    )

    for i in range(2):
        private = load_ssh_private_key((certs / f"node-auth/supernode-{i}.key").read_bytes(), None)
        public = load_ssh_public_key((certs / f"node-auth-pub/supernode-{i}.pub").read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name in {"secp256r1", "secp384r1", "secp521r1"}
        assert private.public_key().public_numbers() == public.public_numbers()


def test_cert_script_is_idempotent_and_keeps_keys_private(certs):
    before = {p: p.read_bytes() for p in certs.rglob("*") if p.is_file()}
    result = subprocess.run(
        ["bash", DOCKER / "certs/generate.sh", "-n", "2", "-o", certs],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "issuing" not in result.stdout and "new " not in result.stdout, result.stdout
    after = {p: p.read_bytes() for p in certs.rglob("*") if p.is_file()}
    assert before == after
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    assert stat.S_IMODE((certs / "ca.key").stat().st_mode) == 0o600


# --- a native deployment on loopback --------------------------------------------------------------
#
# flower-superlink + 2 flower-supernode + `flwr run . ahm --stream` on loopback with free ports: the
# real AHM apps at the tiny scale of tests/test_flower_e2e.py, 2 rounds. First insecure (with a
# real Prometheus scraping the ServerApp), then with TLS from docker/certs/generate.sh and SuperNode
# authentication (node keys registered by docker/register-supernodes.sh). The commands are those
# of docs/deployment.md, on one host. `--isolation subprocess`: the SuperLink
# and each SuperNode spawn their own flower-superexec, which runs the ServerApp / ClientApps from
# this environment (runtime dependency installation off); their Runtime APIs stay on loopback.
# SuperExec authentication is not covered: Flower ignores its secret in subprocess isolation
# (docker/with-tls.yml uses it with `--isolation process`, where the SuperExecs are containers).


@dataclasses.dataclass
class Deployment:
    """A finished native deployment run: its processes (stopped), their logs, what it wrote."""

    tmp: Path
    tls: bool
    prometheus: bool  # a Prometheus server scraped the ServerApp during the run
    group: deploy.ProcessGroup
    returncode: int | None = None  # of `flwr run`
    rounds: list[dict] = dataclasses.field(default_factory=list)  # rounds.json
    prometheus_samples: list[dict] = dataclasses.field(default_factory=list)  # ahm_round >= 1
    exported: str = ""  # the exporter's text once it served a finished round


def start_federation(d: Deployment, env: dict[str, str], metrics_port: int) -> list[str | Path]:
    """Certificates (TLS), SuperLink, node-key registration (TLS), 2 SuperNodes, the CLI's
    connection `ahm` and the run config; returns the `flwr run` command."""
    tmp, group = d.tmp, d.group

    def home(name: str) -> dict[str, str]:  # each Flower process gets a FLWR_HOME of its own
        (tmp / "home" / name).mkdir(parents=True, exist_ok=True)
        return {**env, "FLWR_HOME": str(tmp / "home" / name)}

    certs = tmp / "certs"
    if d.tls:
        subprocess.run(
            ["bash", DOCKER / "certs/generate.sh", "-n", "2", "-o", certs],
            check=True,
            capture_output=True,
        )
    port = free_port()
    link = f"127.0.0.1:{port}"
    server_tls, client_tls = ["--insecure"], ["--insecure"]
    if d.tls:
        server_tls = [f"--ssl-ca-certfile={certs}/ca.crt", f"--ssl-certfile={certs}/superlink.crt"]
        server_tls += [f"--ssl-keyfile={certs}/superlink.key", "--enable-supernode-auth"]
        client_tls = [f"--root-certificates={certs}/ca.crt"]
    superlink = [BIN / "flower-superlink", *server_tls, "--isolation", "subprocess"]
    superlink += ["--host", "127.0.0.1", "--port", str(port), "--database", tmp / "state.db"]
    group.start("superlink", [*superlink, "--disable-runtime-dependency-installation"], home("sl"))
    deploy.wait_for_port(port, 60, group, "superlink")

    if d.tls:  # what an operator runs on a host: the registrar script of docker/with-tls.yml
        register = {
            "AHM_SUPERLINK_CONTROL": link,
            "AHM_CA_CERT": str(certs / "ca.crt"),
            "AHM_NODE_KEYS_DIR": str(certs / "node-auth-pub"),
            "AHM_WAIT_S": "60",
        }
        command = ["sh", DOCKER / "register-supernodes.sh"]
        registered = group.run("registrar", command, {**home("registrar"), **register}, 120)
        assert registered.returncode == 0, "registering the SuperNode keys failed"
        assert "2 SuperNode key(s) registered" in registered.stdout

    for i in range(2):
        node = f"supernode-{i}"
        auth = [f"--auth-supernode-private-key={certs}/node-auth/{node}.key"] if d.tls else []
        command = [BIN / "flower-supernode", "--superlink", link, *client_tls, *auth]
        command += ["--isolation", "subprocess", "--port", str(free_port())]  # its Runtime API
        command += ["--node-config", f"partition-id={i} num-partitions=2"]
        group.start(node, command, home(node))
    if d.tls:  # a SuperNode whose key was never registered: the SuperLink must turn it away
        key = tmp / "intruder.key"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", key], check=True
        )
        command = [BIN / "flower-supernode", "--superlink", link, *client_tls]
        command += [f"--auth-supernode-private-key={key}", "--max-retries", "2"]
        command += ["--isolation", "subprocess", "--port", str(free_port())]
        command += ["--node-config", "partition-id=0 num-partitions=2"]
        group.start("intruder", command, home("intruder"))

    tls = f'root-certificates = "{certs}/ca.crt"' if d.tls else "insecure = true"
    connection = f'[superlink]\ndefault = "ahm"\n\n[superlink.ahm]\naddress = "{link}"\n{tls}\n'
    (tmp / "home/cli").mkdir()
    (tmp / "home/cli/config.toml").write_text(connection)
    # the scale of test_flower_e2e, less work: each ClientApp message starts a process that
    # imports torch, so the clients train 1 epoch and only the server evaluates
    cfg = scale_config(E2E, **{"federation.local_epochs": 1, "federation.fraction_evaluate": 0.0})
    options = {"metrics-port": metrics_port, "resume": False}
    config = run_config(cfg, tmp / "out", **options)
    (tmp / "run-config.toml").write_bytes(tomli_w.dumps(config).encode())
    return [BIN / "flwr", "run", ".", "ahm", "--run-config", tmp / "run-config.toml", "--stream"]


def watch_metrics(d: Deployment, metrics_port: int, prometheus_port: int | None, done) -> None:
    """While the run lasts: keep the exporter's text once it served a finished round, and the
    answers of Prometheus' HTTP API to `ahm_round` that are >= 1."""
    while not done.is_set():
        with contextlib.suppress(OSError, ValueError):  # not serving (yet), or already closed
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            text = urllib.request.urlopen(url, timeout=2).read().decode()
            if re.search(r"^ahm_round [1-9]", text, re.M):
                d.exported = text
        if prometheus_port is not None:
            with contextlib.suppress(OSError, ValueError, KeyError):
                url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?query=ahm_round"
                answer = json.loads(urllib.request.urlopen(url, timeout=2).read())
                for sample in answer["data"]["result"]:
                    if float(sample["value"][1]) >= 1:
                        d.prometheus_samples.append(sample)
        time.sleep(0.25)


def run_deployment(tmp: Path, tls: bool, prometheus: bool) -> Deployment:
    """A whole native deployment run; its processes are stopped by PID however it ends, and their
    logs printed when it fails."""

    if tls and not (shutil.which("openssl") and shutil.which("ssh-keygen")):
        pytest.skip("openssl or ssh-keygen not installed (docker/certs/generate.sh needs them)")
    env = {**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"  # the SuperExecs are found on PATH
    d = Deployment(tmp, tls, prometheus, deploy.ProcessGroup(tmp / "logs", env))
    metrics_port = free_port()
    done = threading.Event()
    with d.group:
        prometheus_port = None
        if prometheus:
            prometheus_port = free_port()
            target = f"127.0.0.1:{metrics_port}"
            deploy.start_prometheus(d.group, tmp / "prometheus", target, prometheus_port)
        command = start_federation(d, env, metrics_port)
        args = (d, metrics_port, prometheus_port, done)
        watcher = threading.Thread(target=watch_metrics, args=args, daemon=True)
        watcher.start()
        try:
            cli = {**env, "FLWR_HOME": str(tmp / "home/cli")}
            nodes = ["superlink", "supernode-0", "supernode-1"]
            d.returncode = d.group.run(
                "flwr-run", command, cli, 300, watch=nodes, cwd=ROOT
            ).returncode
        finally:
            done.set()
            watcher.join()
    with contextlib.suppress(OSError, ValueError, KeyError):
        d.rounds = json.loads((tmp / "out/rounds.json").read_text())["rounds"]
    return d


@pytest.fixture(scope="module")
def insecure_deployment(tmp_path_factory) -> Deployment:
    """With a Prometheus server when it is installed or installable (the Prometheus tests say
    why it is not)."""
    prometheus = deploy.ensure_prometheus() is None
    return run_deployment(tmp_path_factory.mktemp("insecure"), False, prometheus)


@pytest.fixture(scope="module")
def tls_deployment(tmp_path_factory) -> Deployment:
    return run_deployment(tmp_path_factory.mktemp("tls"), True, False)


@pytest.mark.parametrize("mode", ["insecure", "tls"])
def test_native_deployment_runs_two_rounds_with_both_supernodes(request, mode):
    d: Deployment = request.getfixturevalue(f"{mode}_deployment")
    with d.group.on_failure():
        assert d.returncode == 0, "flwr run failed"
        assert [r["round"] for r in d.rounds] == [0, 1, 2], "rounds.json lacks rounds"
        for r in d.rounds[1:]:
            assert (r["sampled"], r["succeeded"], r["failed"], r["accepted"]) == (2, 2, 0, 2), r
            assert 0 < r["accuracy"] <= 1
        if d.tls:  # nothing insecure; the SuperNodes are the nodes registered with their keys
            assert not any("--insecure" in p.args for p in d.group.procs.values())
            superlink = d.group.output("superlink")
            registered = re.findall(r"RegisterNode\] Created node_id=(\d+)", superlink)
            activated = re.findall(r"ActivateNode\] Activated node_id=(\d+)", superlink)
            nodes = [
                re.search(r"SuperNode ID: (\d+)", d.group.output(f"supernode-{i}"))[1]
                for i in range(2)
            ]
            assert sorted(registered) == sorted(activated) == sorted(nodes)
            intruder = d.group.procs["intruder"]
            assert intruder.returncode not in (0, None, -signal.SIGTERM, -signal.SIGKILL)
            assert "Failed to activate SuperNode" in d.group.output("intruder")


def prometheus_ran(d: Deployment) -> None:
    reason = deploy.ensure_prometheus()
    if reason or not d.prometheus:
        pytest.skip(reason or "no Prometheus server ran with the deployment")


def test_prometheus_scrapes_the_serverapp_during_a_run(insecure_deployment):
    d = insecure_deployment
    prometheus_ran(d)
    with d.group.on_failure():
        assert d.prometheus_samples, "Prometheus' API never answered ahm_round >= 1 during the run"
        sample = d.prometheus_samples[-1]
        assert sample["metric"]["__name__"] == "ahm_round"
        assert sample["metric"]["job"] == "ahm-serverapp"
        assert float(sample["value"][1]) >= 1


def test_promtool_checks_the_serverapp_metrics_endpoint(insecure_deployment):
    d = insecure_deployment
    prometheus_ran(d)
    with d.group.on_failure():
        assert d.exported, "the exporter never served a finished round"
        for name in ["ahm_round", "ahm_clients_total", "ahm_verification_accuracy"]:
            assert re.search(rf"^{name}\b", d.exported, re.M), name
        saved = d.tmp / "metrics.txt"
        saved.write_text(d.exported)
        with saved.open() as stdin:  # promtool check metrics < metrics.txt
            check = subprocess.run(
                [shutil.which("promtool"), "check", "metrics"],
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert check.returncode == 0, check.stdout + check.stderr + d.exported
