"""Re-run one row of a paper-tables run's CGAN at a fixed budget (one rung; by default 40 epochs on
200 auxiliary pairs) and print its rank-1 beside the row's reported worst case: the check that a
larger budget does not raise leakage beyond the reported interval. Deterministic on the CPU.

    .venv/bin/python benchmarks/cgan_budget.py outputs/study26/synthetic ppfr_fd [EPOCHS] [AUX]
"""

import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from ahm_core.attacks import ATTACKS
from ahm_core.cases import build_case
from ahm_core.config import apply_overrides
from ahm_core.data.sources import run_data
from ahm_core.io import load_checkpoint
from ahm_core.judges import OWN, judges
from ahm_core.masking.methods import ROWS
from ahm_core.metrics import LPIPS
from ahm_core.paper import slug
from ahm_core.scoring import score
from ahm_core.tables import interval
from simulations.cli import CONF
from simulations.schema import register, split_run_config

torch.set_num_threads(1)
register()
run, name = Path(sys.argv[1]), sys.argv[2]
epochs, aux = (
    int(sys.argv[3]) if len(sys.argv) > 3 else 40,
    int(sys.argv[4]) if len(sys.argv) > 4 else 200,
)
row = next(r for r in ROWS if slug(r.name) == name)
with initialize_config_dir(str(CONF), version_base=None):
    cfg, _ = split_run_config(compose("paper_tables", ["profile=study"]))
cfg = apply_overrides(
    cfg,
    {
        "masking.method": row.method,
        **row.overrides,
        "attack.cgan_epochs": epochs,
        "attack.aux_images": aux,
        "attack.rungs": 1,
    },
)
result = json.loads((run / "rows" / name / "row.json").read_text())
stage = None
if result.get("first_stage"):
    stage = load_checkpoint(result["checkpoint"], ("first_stage",))["first_stage"]["module"]
judged = judges(run / "rows" / "arcface" / "train" / "checkpoint.pt", cfg, torch.device("cpu"))
data = run_data(cfg.data)
case = build_case(
    cfg,
    data.faces,
    data.train,
    data.pairs,
    run / "budget_check" / name,
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
        f"{row.name} {j}: CGAN at {epochs} epochs / {aux} aux rank-1 {rank1['rank1']:.3f} "
        f"{interval(rank1['rank1_ci95'])}; reported worst case {worst['rank1']:.3f} "
        f"{interval(worst['rank1_ci95'])} by {worst['attack']}"
    )
