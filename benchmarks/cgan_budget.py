"""Re-run one cell of a paper-tables run's CGAN at a fixed budget (one rung; by default 40 epochs on
200 auxiliary pairs) and print its rank-1 beside the cell's reported worst case: the check that a
larger budget does not raise leakage beyond the reported interval. The cell's own config and
judge are read from its row.json. Deterministic on the CPU.

    .venv/bin/python benchmarks/cgan_budget.py outputs/study/synthetic ppfr_fd [SEED] [EPOCHS] [AUX]
"""

import json
import sys
from pathlib import Path

import torch

from ahm_core.attacks import ATTACKS
from ahm_core.cases import build_case
from ahm_core.config import AHMConfig, apply_overrides
from ahm_core.data.sources import run_data
from ahm_core.io import load_checkpoint
from ahm_core.judges import OWN, judges
from ahm_core.metrics import LPIPS
from ahm_core.scoring import score
from ahm_core.tables import interval

torch.set_num_threads(1)
run, name = Path(sys.argv[1]), sys.argv[2]
given = [int(a) for a in sys.argv[3:6]]
seed, epochs, aux = given + [0, 40, 200][len(given) :]
folder = run / "rows" / name / f"seed_{seed}"
result = json.loads((folder / "row.json").read_text())
budget = {"attack.cgan_epochs": epochs, "attack.aux_images": aux, "attack.rungs": 1}
cfg = apply_overrides(AHMConfig(), {**result["config"], **budget})
stage = None
if result.get("first_stage"):
    stage = load_checkpoint(result["checkpoint"], ("first_stage",))["first_stage"]["module"]
judged = judges(folder / result["judge"], cfg, torch.device("cpu"))
data = run_data(cfg.data)
case = build_case(
    cfg,
    data.faces,
    data.train,
    data.pairs,
    folder / "budget_check",
    torch.device("cpu"),
    result["k_proportions"],
    stage,
    judge=judged.models[OWN],
)
scored = score(ATTACKS["cgan"].run(case), case, judged, LPIPS(calibrated=False))
for j in judged.models:
    worst = result["worst"]["judges"][j]["rank1"]
    rank1 = scored["judges"][j]["rank1"]
    print(
        f"{name} seed {seed} {j}: CGAN at {epochs} epochs / {aux} aux rank-1 {rank1['rank1']:.3f} "
        f"{interval(rank1['rank1_ci95'])}; reported worst case {worst['rank1']:.3f} "
        f"{interval(worst['rank1_ci95'])} by {worst['attack']}"
    )
