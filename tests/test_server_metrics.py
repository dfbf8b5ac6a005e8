import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from server.metrics import ServerMetrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_are_served_and_parse():
    port = free_port()
    metrics = ServerMetrics(port=port)
    try:
        metrics.record_round(
            1,
            3.5,
            sampled=4,
            succeeded=3,
            failed=1,
            rejected={"non_finite": 1},
            train_loss=12.5,
            accuracy=0.8,
            k_histogram={2: 100, 3: 28},
        )
        metrics.record_round(
            2,
            7.0,
            sampled=4,
            succeeded=4,
            failed=0,
            rejected={"norm": 2},
            accuracy=0.85,
            k_histogram={2: 50},
        )
        seen = scrape(port)
    finally:
        metrics.close()
    assert seen[("ahm_round", ())] == 2
    assert seen[("ahm_clients_total", (("outcome", "failed"),))] == 1
    assert seen[("ahm_clients_total", (("outcome", "succeeded"),))] == 7
    assert seen[("ahm_updates_rejected_total", (("reason", "non_finite"),))] == 1
    assert seen[("ahm_updates_rejected_total", (("reason", "norm"),))] == 2
    assert seen[("ahm_train_loss", ())] == 12.5  # round 2 reported none: the last value stays
    assert seen[("ahm_verification_accuracy", ())] == 0.85
    assert seen[("ahm_k_chosen_total", (("k", "2"),))] == 150
    assert seen[("ahm_round_duration_seconds_count", ())] == 2
    assert seen[("ahm_round_duration_seconds_sum", ())] == 10.5
    assert seen[("ahm_round_duration_seconds_bucket", (("le", "5.0"),))] == 1


def test_port_zero_serves_nothing():
    metrics = ServerMetrics(port=0)
    metrics.record_round(1, 1.0, sampled=2, succeeded=2, failed=0)
    assert metrics.server is None
    assert metrics.registry.get_sample_value("ahm_round") == 1
