"""The attack of the paper's appendix A.2 on a frequency-domain first stage: remove the channels
where the noise concentrates and reconstruct faces from what is left with the black-box CGAN,
trained on the attacker's own faces masked alike.

The attacker ranks the channels by the signal-to-noise ratio it measures on its own auxiliary
faces through the defence (`channel_snr`: two encodings of the same faces, independent noise
draws); channels of no signal (identically zero, or noise only) are never kept; among noiseless
channels, which a deterministic stage makes all of them, the first stage's own ranking breaks the
tie (`FirstStage.drop_order`, white box: PPFR-FD's source energy through its key). It tries each
count of `attack.kept_channels` below the channels of signal, each up its budget ladder, and is
scored at the count that leaks most on its held-out faces. A first stage with no frequency
channels (RGB, eigenface DP) is skipped with the reason."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from ahm_core.attacks.base import Reconstructions, register
from ahm_core.attacks.cgan import BlackBoxCGAN, cgan_for

if TYPE_CHECKING:
    from ahm_core.cases import Case


class ChannelSNR(NamedTuple):
    """Per channel: the variance of the signal across faces, of the noise, and their ratio (inf
    for a noiseless channel of signal, 0 for a channel of none)."""

    signal: Tensor
    noise: Tensor
    snr: Tensor


def channel_snr(encode: Tensor, again: Tensor) -> ChannelSNR:
    """SNR per channel of two encodings [N, C, h, w] of the same faces with independent noise:
    the signal is their covariance across faces, the noise half the variance of their
    difference (each averaged over positions)."""
    if encode.shape != again.shape or encode.dim() != 4:
        shapes = f"{tuple(encode.shape)}, {tuple(again.shape)}"
        raise ValueError(f"channel_snr: expected two [N, C, h, w] encodings, got {shapes}")
    x, y = encode.double(), again.double()
    dx, dy = x - x.mean(dim=0), y - y.mean(dim=0)
    signal = (dx * dy).mean(dim=(0, 2, 3)).clamp_min(0.0)
    noise = (x - y).square().mean(dim=(0, 2, 3)) / 2
    # Rounding leaves about 1e-16 of the largest variance in a channel of no signal.
    scale = max(float(signal.max()), float(noise.max()), 1e-300)
    signal = torch.where(signal > 1e-12 * scale, signal, torch.zeros_like(signal))
    snr = torch.where(noise > 0, signal / noise.clamp_min(1e-300), signal * float("inf"))
    return ChannelSNR(signal, noise, torch.nan_to_num(snr, nan=0.0, posinf=float("inf")))


def ranked_channels(case: Case) -> Tensor | None:
    """The channels of signal on the attacker's auxiliary faces, most signal-to-noise first (the
    first stage's white-box order breaking ties); channels of no signal are not listed. None
    when the first stage has no frequency channels it ranks."""
    if "ranked_channels" not in case.cache:
        g = torch.Generator().manual_seed(case.cfg.train.seed)
        aux, ranked = case.aux_images, None
        order = case.pipeline.first_stage.drop_order(aux)
        if order is not None:
            measured = channel_snr(case.pipeline.encode(aux, g), case.pipeline.encode(aux, g))
            tie = torch.empty_like(measured.snr)  # its least redundant channel last: the highest
            tie[order] = torch.arange(len(order), dtype=tie.dtype)
            by_tie = tie.argsort(descending=True, stable=True)
            ranked = by_tie[measured.snr[by_tie].argsort(descending=True, stable=True)]
            ranked = ranked[measured.signal[ranked] > 0]
        case.cache["ranked_channels"] = ranked
    return case.cache["ranked_channels"]


@register
class ChannelDrop(BlackBoxCGAN):
    """Appendix A.2: the CGAN on the channels of most signal-to-noise, at the count of
    `attack.kept_channels` that leaks most on the held-out faces."""

    name = "channel_drop"
    holds = "as cgan; the SNR of each channel on its own faces through the defence (white box)"

    def _tried(self, case: Case) -> dict[int, Tensor]:
        """Each count of `attack.kept_channels` below the channels of signal -> those kept."""
        ranked = ranked_channels(case)
        counts = [k for k in case.cfg.attack.kept_channels if k < len(ranked)]
        return {k: ranked[:k].sort().values for k in counts}

    def skip(self, case: Case) -> str | None:
        ranked = ranked_channels(case)
        if ranked is None:
            return "the first stage has no frequency channels it ranks"
        if not self._tried(case):
            kept = list(case.cfg.attack.kept_channels)
            return f"{len(ranked)} channels of signal, no more than attack.kept_channels={kept}"
        return None

    def kept(self, case: Case) -> Tensor:
        climbs = {k: cgan_for(case, keep) for k, keep in self._tried(case).items()}
        most = max(climbs, key=lambda k: climbs[k].rungs[climbs[k].best].leakage)
        return self._tried(case)[most]

    def run(self, case: Case) -> Reconstructions:
        rec = super().run(case)
        kept = self.kept(case)
        tried = {str(k): cgan_for(case, keep).figures() for k, keep in self._tried(case).items()}
        rec.figures |= {"kept": len(kept), "kept_channels": kept.tolist(), "tried": tried}
        rec.summary = f"{len(kept)} channels kept; {rec.summary}"
        return rec
