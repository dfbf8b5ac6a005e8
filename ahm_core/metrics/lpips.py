"""LPIPS (AlexNet, v0.1) distances that never download anything (docs/design.md D8).

The `lpips` package ships its linear heads; its AlexNet backbone is torchvision's ImageNet
checkpoint, which `lpips` would fetch from the internet. Here the backbone is read from
torchvision's cache file (`alexnet_checkpoint()`) or, only when asked for (`calibrated=False`),
left randomly initialised: such distances are labelled "LPIPS (uncalibrated)" and are fit for
tests and offline demos, not for comparison with published numbers.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lpips
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from ahm_core.freq import check_images
from ahm_core.io import load_checkpoint

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet IMAGENET1K_V1 weights
MIN_SIZE = 32  # AlexNet's fifth layer needs at least this many pixels a side


def alexnet_checkpoint() -> Path:
    """Where torchvision caches its AlexNet weights: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def as_rgb(images: Tensor) -> Tensor:
    """[N, 1 or 3, H, W] -> [N, 3, H, W], gray repeated to three channels."""
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def check_unit_images(images: Tensor, name: str) -> None:
    """Raise one clear error unless `images` is a finite [N, 1 or 3, H, W] tensor in [0, 1]."""
    check_images(images, name, channels=None)
    if images.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected 1 or 3 channels, got shape {tuple(images.shape)}")
    if len(images) and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
        raise ValueError(f"{name}: expected values in [0, 1], got [{images.min()}, {images.max()}]")


def check_pair(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    """Both image batches valid and of the same batch size and spatial size."""
    check_unit_images(a, names[0])
    check_unit_images(b, names[1])
    if a.shape[0] != b.shape[0] or a.shape[2:] != b.shape[2:]:
        raise ValueError(
            f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)}: "
            "need the same number of images of the same size"
        )


def _load_alexnet_features() -> dict[str, Tensor]:
    """The cached ImageNet AlexNet's `features` weights; one clear error when the file is absent."""
    path = alexnet_checkpoint()
    if not path.is_file():
        raise FileNotFoundError(
            f"LPIPS needs torchvision's AlexNet weights at {path} and never downloads them: on a "
            'machine with internet run python -c "import torchvision; '
            "torchvision.models.alexnet(weights='IMAGENET1K_V1')\" and copy "
            f"~/.cache/torch/hub/checkpoints/{ALEXNET_FILE} there (or set TORCH_HOME), "
            "or ask for an uncalibrated backbone (LPIPS(calibrated=False))"
        )
    alexnet = torchvision.models.alexnet(weights=None)
    alexnet.load_state_dict(load_checkpoint(path))
    return alexnet.features.state_dict()


class LPIPS:
    """Per-image LPIPS distance between two batches of images in [0, 1] (AlexNet, v0.1)."""

    def __init__(
        self,
        calibrated: bool = True,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        """`calibrated=False` uses a random AlexNet drawn from `seed` (same seed, same metric)."""
        features = _load_alexnet_features() if calibrated else None
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            torch.manual_seed(seed)
            # lpips builds its trunk with torchvision's deprecated `pretrained=False`: no download.
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
        if features is not None:
            # lpips names a layer slice<k>.<index in alexnet.features>.<param>
            trunk = {name: features[name.split(".", 1)[1]] for name in model.net.state_dict()}
            model.net.load_state_dict(trunk)
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.calibrated = calibrated
        self.label = "LPIPS" if calibrated else "LPIPS (uncalibrated)"

    @torch.no_grad()
    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """[N] distances between a[i] and b[i] ([N, 1 or 3, H, W] in [0, 1], gray as RGB)."""
        check_pair(a, b, ("a", "b"))
        out = []
        for start in range(0, len(a), self.batch_size):
            pair = [
                _prepare(x[start : start + self.batch_size].to(self.device, torch.float32))
                for x in (a, b)
            ]
            out.append(self.model(*pair).flatten().cpu())
        return torch.cat(out) if out else torch.zeros(0)


def _prepare(images: Tensor) -> Tensor:
    """[0, 1] images -> the [-1, 1] RGB input of lpips, the shorter side at least MIN_SIZE."""
    h, w = images.shape[2:]
    if min(h, w) < MIN_SIZE:
        scale = MIN_SIZE / min(h, w)
        size = (max(MIN_SIZE, round(h * scale)), max(MIN_SIZE, round(w * scale)))
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return as_rgb(images) * 2.0 - 1.0
