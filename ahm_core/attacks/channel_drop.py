"""The attack of the paper's appendix A.2 on a learnt-noise first stage: remove the channels where
the noise concentrates (for DCTDP, the largest learnt Laplace scales; for PPFR-FD and the block
DCT, the channels whose frequencies carry no signal), keep `attack.kept_channels`, and reconstruct
faces from what is left with the black-box CGAN, trained on the attacker's own faces masked alike.
The first stage ranks its channels (`FirstStage.drop_order`, white box); a first stage with no
frequency channels to rank (RGB, eigenface DP) is skipped with the reason."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ahm_core.attacks.base import register
from ahm_core.attacks.cgan import BlackBoxCGAN

if TYPE_CHECKING:
    from ahm_core.cases import Case


def _order(case: Case) -> Tensor | None:
    if "drop_order" not in case.cache:
        case.cache["drop_order"] = case.pipeline.first_stage.drop_order(case.aux_images)
    return case.cache["drop_order"]


@register
class ChannelDrop(BlackBoxCGAN):
    """Appendix A.2: the CGAN on the `attack.kept_channels` least redundant channels."""

    name = "channel_drop"
    holds = "as cgan; the first stage's noise scales or channel energies (white box)"

    def skip(self, case: Case) -> str | None:
        order, kept = _order(case), case.cfg.attack.kept_channels
        if order is None:
            return "the first stage has no frequency channels it ranks"
        if len(order) <= kept:
            return f"{len(order)} channels, no more than attack.kept_channels={kept}"
        return None

    def kept(self, case: Case) -> Tensor:
        return _order(case)[-case.cfg.attack.kept_channels :].sort().values
