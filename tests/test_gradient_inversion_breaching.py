"""benchmarks/gradient_inversion.py: breaching wired to the same gradient, and the side-by-side
table. The breaching tests skip when it is absent (the optional `peer` extra)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NO_BREACHING = "breaching is not installed (pip install --no-deps breaching==0.1.2, the peer extra)"


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gi_benchmark", ROOT / "benchmarks/gradient_inversion.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = _benchmark()
needs_breaching = pytest.mark.skipif(not bench.has_breaching(), reason=NO_BREACHING)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # main() sets one thread


@pytest.mark.parametrize("images", [1, 3])
def test_the_breaching_view_gives_the_clients_loss(images: int) -> None:
    """CosineLogits + MarginLoss is TrainingLoss for one label each (eval for one image)."""
    case = bench.make_case(images, seed=0)
    coefs = torch.ones(images, 1)
    expected = case.net(case.x, case.labels[:, None], coefs).mean()
    logits = bench.CosineLogits(case.net)(case.x)
    loss = bench.MarginLoss(case.net.head)(logits, case.labels)
    torch.testing.assert_close(loss, expected)
    assert case.net.training == (images > 1)


@needs_breaching
@pytest.mark.parametrize("images", [1, 3])
def test_breaching_sees_the_same_gradient(images: int) -> None:
    """On the true batch, breaching's objective (1 - global cosine) is zero: the model it builds
    from the payload (mode, parameters, buffers) and the loss reproduce the shared gradient."""
    case = bench.make_case(images, seed=1)
    attacker = bench.breaching_attacker(case, iterations=1, restarts=1)
    payload, shared = bench.breaching_inputs(case)
    models, labels, _ = attacker.prepare_attack(payload, shared)
    attacker.objective.initialize(attacker.loss_fn, attacker.cfg.impl, None)
    gradients = shared[0]["gradients"]

    def distance(x: torch.Tensor) -> float:
        value, _ = attacker.objective(models[0], gradients, x.requires_grad_(), labels)
        return float(value.detach())

    assert models[0].training == (images > 1)
    assert abs(distance(case.x.clone())) < 1e-5
    assert distance(case.x + 0.5) > 1e-3  # the test can fail: another batch, another gradient


@needs_breaching
def test_the_benchmark_prints_both_attackers_and_their_ratio_deterministically(capsys) -> None:
    args = ["--iterations", "3", "--images", "1,2", "--seeds", "0"]
    bench.main(args)
    out = capsys.readouterr().out.splitlines()
    bench.main(args)
    assert capsys.readouterr().out.splitlines() == out
    rows = [line.split("|")[1:-1] for line in out if line.startswith("| 1 |")]
    assert len(rows) == 1 and all(cell.strip() for cell in rows[0])  # both attackers scored
    summaries = [line for line in out if "image(s), mean of 1 seed(s)" in line]
    assert len(summaries) == 2 and all("breaching" in line for line in summaries)
    assert out[-1].endswith("deterministic on the CPU")


def test_without_breaching_the_benchmark_says_so_and_runs_ours(monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench, "has_breaching", lambda: False)
    bench.main(["--iterations", "2", "--images", "2", "--seeds", "0"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("breaching is not installed")
    (row,) = [line for line in out if line.startswith("| 2 | 0 |")]
    assert row.split("|")[3].strip() and not row.split("|")[5].strip()
