"""The ground floor: one typed configuration schema for AHM, its coercion and its bounds.

Every entry point (notebooks, hydra simulations, Flower apps) builds an `AHMConfig` with
`from_dict` or `apply_overrides` (coerced, bounds-checked) and then calls
`ahm_core.checks.validate`, which checks the names against the registries above this module;
the science code reads only this schema. Numeric bounds live next to each field
(`metadata={"min": ...}`) so one loop checks them all.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ahm_core.freq import BLOCK


class ConfigError(ValueError):
    """Configuration values missing, unknown or out of range: one line per bad setting
    (`problems`), each naming its option; the message is those lines."""

    def __init__(self, *problems: str) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def collect(checks: typing.Iterable[Callable[[], object]], found: Sequence[str] = ()) -> None:
    """Run every check and raise one ConfigError with the problems of all that failed (after
    those already `found`), so a user fixes every bad setting in one rerun."""
    problems = list(found)
    for check in checks:
        try:
            check()
        except ConfigError as err:
            problems.extend(err.problems)
    if problems:
        raise ConfigError(*problems)


MAX_PIXELS = 25_000_000  # 5000 x 5000: above any face photo, far below a decompression bomb
PIL_MAX_PIXELS = 178_956_970  # PIL refuses to open larger images at all (2 x MAX_IMAGE_PIXELS)
AC_CHANNELS = BLOCK * BLOCK - 1


def _positive(**extra: Any) -> dict[str, Any]:
    return {"min": 1, **extra}


# What trains at all: a learning rate above 10 diverges at once; a hundred thousand epochs or
# rounds is years of work at any scale AHM runs (a value that would never end is refused).
MAX_LR = 10.0
MAX_PASSES = 100_000
SEED = {"min": 0, "max": 2**32 - 1}  # what numpy, torch and the synthetic faces' hash all take
DEVICE = re.compile(r"auto|cpu|mps|meta|cuda(:\d+)?")  # meta: shapes only, for tests


@dataclass
class DataConfig:
    """Where faces come from and at which square size they enter the pipeline."""

    source: str = "synthetic"
    root: str = ""  # folder or InsightFace directory for the real-data sources
    image_size: int = field(default=112, metadata=_positive())
    # synthetic only: at least 3 people (2 held out) with 2 images each, for verification pairs
    num_identities: int = field(default=100, metadata={"min": 3})
    images_per_identity: int = field(default=20, metadata={"min": 2})
    min_images: int = field(default=2, metadata=_positive())  # folder: smaller identities skipped
    # Largest image decoded (width x height): a bigger one is skipped in a folder, an error in a
    # RecordIO or .bin file, so a decode peaks at about 17 x max_pixels bytes (progressive CMYK).
    max_pixels: int = field(default=MAX_PIXELS, metadata=_positive(max=PIL_MAX_PIXELS))
    test_fraction: float = field(default=0.2, metadata={"min_open": 0.0, "max_open": 1.0})
    num_pairs: int = field(default=6000, metadata={"min": 20})  # verification pairs, 10 folds
    # InsightFace verification .bin files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...) also scored
    # after every epoch or round, on their own pairs and folds (ahm_core.data.benchmarks)
    verification: tuple[str, ...] = ()
    seed: int = field(default=0, metadata=SEED)


@dataclass
class MaskingConfig:
    """Which row of the paper's tables, and its first stage's options (each stage's `options`):
    the block DCT's upsampling; PPFR-FD's (docs/design.md D2); the eigenface DP's; DCTDP's."""

    method: str = "masking_adamixup"
    upsample: int = 8  # bdct, ppfr_fd, dctdp
    num_channels: int = field(default=AC_CHANNELS, metadata=_positive(max=AC_CHANNELS))
    keys: str = "fixed"
    key_seed: int = field(default=0, metadata=SEED)
    channel_mixing: str = "adjacent"  # PPFR-FD's mixing of channels: adjacent | none
    eps: float = field(default=1e-8, metadata={"min_open": 0.0})
    dp_epsilon: float = field(default=3.0, metadata={"min_open": 0.0})
    dp_components: int = field(default=128, metadata=_positive())
    # DCTDP: the total budget its learnt allocation shares out over the 63 AC channels (TFace's
    # default: 4 per coefficient), the sensitivity in grey levels, and Adam's rate on the budget.
    dctdp_epsilon: float = field(default=252.0, metadata={"min_open": 0.0})
    dctdp_sensitivity: float = field(default=1.0, metadata={"min_open": 0.0})
    dctdp_lr: float = field(default=0.1, metadata={"min_open": 0.0})


@dataclass
class MixupConfig:
    """Fixed-k MixUp (docs/design.md D3)."""

    k: int = field(default=2, metadata={"min": 2})  # images mixed
    max_coef: float = 0.55


@dataclass
class PolicyConfig:
    """The strategy network choosing k per sample, trained with REINFORCE (docs/design.md D6)."""

    k_set: tuple[int, ...] = (2, 3, 4, 5)
    net: str = "resnet18"  # the strategy network: resnet18 (docs/design.md D6) | small (CPU scale)
    per_sample: bool = True  # one k per sample (eq. 8); False: one k for the whole batch
    # ahm_core.policy.REWARDS: loss (Algorithm 1's) | margin_free | kl (margin_free less its floor)
    reward: str = "margin_free"
    # ahm_core.policy.CONTEXTS: one PMF per batch (the paper's) | sample (one PMF per face)
    context: str = "batch"
    baseline: str = "moving_average"  # moving_average | batch_mean (leave-one-out, per-sample k)
    alpha: float = 1.0  # weight of reward1 (loss of the current FRNet)
    beta: float = 1.0  # weight of reward2 (loss after one lookahead step)
    lr: float = field(default=1e-4, metadata={"min_open": 0.0, "max": MAX_LR})
    entropy: float = field(default=1e-3, metadata={"min": 0.0})
    baseline_momentum: float = field(default=0.9, metadata={"min": 0.0, "max": 1.0})
    interval: int = field(default=1, metadata=_positive())
    # >= 0: maximise the mixing entropy while FRNet1's loss stays within this many nats of its
    # loss at the smallest k (a Lagrange multiplier, updated online); negative: no budget.
    loss_budget: float = -1.0
    multiplier_lr: float = field(default=0.05, metadata={"min_open": 0.0})  # per nat of excess


@dataclass
class ModelConfig:
    """FRNet backbone and ArcFace head (docs/design.md D4, D5)."""

    backbone: str = "ir_se_small"
    blocks: tuple[int, ...] = (1, 1, 1, 1)  # ir_se_small: IR-SE blocks per stage
    width: int = field(default=32, metadata=_positive())  # ir_se_small: channels of stage 1
    embedding_size: int = field(default=512, metadata=_positive(max=65_536))
    dropout: float = field(default=0.4, metadata={"min": 0.0, "max_open": 1.0})
    scale: float = field(default=64.0, metadata={"min_open": 0.0, "max": 1024.0})  # InsightFace: 64
    margin: float = field(default=0.5, metadata={"min": 0.0})
    # batch: BatchNorm; group: GroupNorm in its place (what per-sample gradients need:
    # BatchNorm mixes the samples of a batch), `models.backbones._group_norm`
    norm: str = "batch"


@dataclass
class TrainConfig:
    """Local optimisation, shared by centralized runs and Flower clients."""

    batch_size: int = field(default=64, metadata=_positive())
    epochs: int = field(default=1, metadata=_positive(max=MAX_PASSES))
    lr: float = field(default=0.1, metadata={"min_open": 0.0, "max": MAX_LR})
    momentum: float = field(default=0.9, metadata={"min": 0.0, "max_open": 1.0})
    weight_decay: float = field(default=1e-4, metadata={"min": 0.0})
    warmup_epochs: int = field(default=0, metadata={"min": 0})
    grad_clip: float = field(default=5.0, metadata={"min": 0.0})  # 0: no clipping
    flip: bool = True  # random horizontal flips of training images
    amp: bool = True  # bfloat16 autocast on CUDA
    compile: bool = False  # torch.compile the backbone: pays off over long runs on a GPU
    workers: int = field(default=0, metadata={"min": 0})  # DataLoader worker processes
    progress: bool = True  # a progress bar per epoch
    seed: int = field(default=0, metadata=SEED)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # DP-SGD (Opacus): each sample's gradient clipped to dp_max_grad_norm (in place of
    # grad_clip), Gaussian noise of dp_noise_multiplier x that norm added to their sum, batches
    # drawn by Poisson sampling at batch_size / images; epsilon at dp_delta from Opacus's RDP
    # accountant. Needs model.norm=group and a method without a policy.
    dp_sgd: bool = False
    dp_noise_multiplier: float = field(default=1.0, metadata={"min": 0.0})
    dp_max_grad_norm: float = field(default=1.0, metadata={"min_open": 0.0})
    dp_delta: float = field(default=1e-5, metadata={"min_open": 0.0, "max_open": 1.0})


@dataclass
class FederationConfig:
    """Flower federation: sampling, local work, the server's strategy, update screening,
    DP-FedAvg, injected faults and the threat model's capture."""

    num_clients: int = field(default=4, metadata=_positive())  # Flower: the SuperNodes' count wins
    rounds: int = field(default=3, metadata=_positive(max=MAX_PASSES))
    local_epochs: int = field(default=1, metadata=_positive(max=MAX_PASSES))
    fraction_train: float = field(default=1.0, metadata={"min_open": 0.0, "max": 1.0})
    fraction_evaluate: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})
    min_clients: int = field(default=2, metadata=_positive())
    round_timeout: float = field(default=3600.0, metadata={"min_open": 0.0})  # seconds
    partition: str = "identity"
    dirichlet_alpha: float = field(default=0.5, metadata={"min_open": 0.0})
    val_fraction: float = field(default=0.1, metadata={"min": 0.0, "max_open": 1.0})
    eval_pairs: int = field(default=600, metadata={"min": 20})  # a client's local verification
    min_client_images: int = field(default=1, metadata=_positive())
    drop_small_clients: bool = False
    share_head: bool = False  # False: each client's ArcFace head over its own people stays local
    # The server's aggregation: one of Flower's strategies (server.strategy.STRATEGIES).
    strategy: str = "fedavg"
    proximal_mu: float = field(default=0.01, metadata={"min": 0.0})  # fedprox
    server_lr: float = field(default=1.0, metadata={"min_open": 0.0})  # fedavgm
    server_momentum: float = field(default=0.9, metadata={"min": 0.0, "max_open": 1.0})  # fedavgm
    fedopt_eta: float = field(default=0.01, metadata={"min_open": 0.0})  # fedadam/yogi/adagrad
    fedopt_beta_1: float = field(default=0.9, metadata={"min": 0.0, "max_open": 1.0})
    fedopt_beta_2: float = field(default=0.99, metadata={"min": 0.0, "max_open": 1.0})
    fedopt_tau: float = field(default=1e-3, metadata={"min_open": 0.0})
    trim_beta: float = field(default=0.2, metadata={"min": 0.0, "max_open": 0.5})  # fedtrimmedavg
    malicious_clients: int = field(default=1, metadata={"min": 0})  # krum, multikrum, bulyan
    multikrum_select: int = field(default=0, metadata={"min": 0})  # 0: sampled - malicious
    # Screening (server.replies): bounds on each update relative to the model and the round.
    screen: bool = True  # False: only the checks that keep the server alive (no bounds)
    max_update_ratio: float = field(default=10.0, metadata={"min_open": 0.0})  # of global norm
    max_update_norm: float = field(default=0.0, metadata={"min": 0.0})  # absolute; 0: none
    update_norm_spread: float = field(default=3.0, metadata={"min_open": 1.0})  # x round median
    min_update_cosine: float = field(default=0.0, metadata={"min": -1.0, "max": 1.0})  # stats
    max_pair_cosine: float = field(default=0.5, metadata={"min": -1.0, "max": 1.0})  # 1: off
    clip_ratio: float = field(default=1.0, metadata={"min": 0.0})  # x round median norm; 0: off
    median_statistics: bool = True  # BatchNorm statistics: the accepted updates' median
    max_weight_ratio: float = field(default=2.0, metadata={"min": 1.0})  # x median num-examples
    # DP-FedAvg: Flower's differential-privacy wrappers (none | server_fixed | server_adaptive |
    # client_fixed | client_adaptive), accounted with Opacus's RDP accountant.
    dp: str = "none"
    dp_noise_multiplier: float = field(default=1.0, metadata={"min_open": 0.0})
    dp_clipping_norm: float = field(default=1.0, metadata={"min_open": 0.0})  # adaptive: initial
    dp_target_quantile: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    dp_clip_lr: float = field(default=0.2, metadata={"min_open": 0.0})
    # adaptive: the clipped-count noise; 0: Flower's default, sampled clients / 20
    dp_clipped_count_stddev: float = field(default=0.0, metadata={"min": 0.0})
    dp_delta: float = field(default=1e-5, metadata={"min_open": 0.0, "max_open": 1.0})
    # Local DP: Flower's LocalDpMod on every client clips its update to local_dp_clipping_norm
    # and adds Gaussian noise of std sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon to every
    # value it sends, each round; accounted over rounds with Opacus's RDP accountant.
    local_dp: bool = False
    local_dp_clipping_norm: float = field(default=1.0, metadata={"min_open": 0.0})
    local_dp_sensitivity: float = field(default=1.0, metadata={"min_open": 0.0})
    local_dp_epsilon: float = field(default=1.0, metadata={"min_open": 0.0})
    local_dp_delta: float = field(default=1e-5, metadata={"min_open": 0.0, "max_open": 1.0})
    # Secure aggregation: Flower's SecAgg+ (server.secagg). Shares and threshold up to 1 are
    # proportions (of the sampled clients, of the shares), above 1 counts (a count of shares
    # odd and at most min_clients); every value of an update is clipped to
    # +-secagg_clipping_range and quantised to secagg_quantization_range levels.
    secagg: bool = False
    secagg_num_shares: float = field(default=1.0, metadata={"min_open": 0.0})
    secagg_reconstruction_threshold: float = field(default=0.67, metadata={"min_open": 0.0})
    secagg_clipping_range: float = field(default=8.0, metadata={"min_open": 0.0})
    secagg_quantization_range: int = field(default=4_194_304, metadata={"min": 2, "max": 2**31})
    capture_clients: int = field(default=0, metadata={"min": 0})  # threat model: updates stored
    # Injected faults, for tests and the Byzantine study (ahm_core.faults.MODES).
    fault_fraction: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    fault_mode: str = "raise"
    fault_scale: float = field(default=10.0, metadata={"min_open": 0.0})  # signflip/scale/noise
    fault_seconds: float = field(default=600.0, metadata={"min": 0.0})  # how long `hang` hangs


@dataclass
class AttackConfig:
    """Adversaries of the threat model (docs/design.md section 4)."""

    victims: int = field(default=256, metadata={"min": 2})  # victim images attacked
    aux_images: int = field(default=1024, metadata={"min": 2})  # the attacker's own pairs
    # Re-identification: a gallery of at most this many other photos of every training identity,
    # and the face recognisers that judge (own: the unmasked ArcFace reference; dlib: dlib's
    # pretrained descriptor, about 0.1 s a face on one core).
    gallery_per_identity: int = field(default=5, metadata=_positive())
    judges: tuple[str, ...] = ("own", "dlib")
    # The budget ladder of the CGAN attacks (ahm_core.attacks.ladder): `rungs` budgets, each
    # trained from scratch, doubling epochs and auxiliary pairs up to (cgan_epochs, aux_images);
    # the climb stops when leakage on `holdout` other auxiliary faces stops rising beyond noise.
    cgan_epochs: int = field(default=40, metadata=_positive())
    rungs: int = field(default=4, metadata=_positive())
    holdout: int = field(default=64, metadata={"min": 2})
    cgan_batch_size: int = field(default=16, metadata=_positive())
    cgan_lambda_l1: float = field(default=100.0, metadata={"min": 0.0})
    # Appendix A.2: the channel counts the attacker tries keeping of a frequency-domain tensor
    # (those of most signal-to-noise on its own faces, zero channels never) before the CGAN.
    kept_channels: tuple[int, ...] = (8, 16, 32)
    ngf: int = field(default=64, metadata=_positive())
    ndf: int = field(default=64, metadata=_positive())
    lpips_calibrated: bool = True  # False: random AlexNet, every output marked uncalibrated
    # The threat report (ahm_core.threat): the defences compared and each adversary's budget.
    defences: tuple[str, ...] = (
        "arcface",
        "ppfr_fd",
        "masking_mixup",
        "masking_adamixup",
        "dctdp",
        "dctdp_adamixup",
    )
    gi_batch: int = field(default=4, metadata={"min": 2})  # images in the inverted update
    gi_iterations: int = field(default=300, metadata=_positive())
    gi_restarts: int = field(default=2, metadata=_positive())
    gi_local_steps: int = field(default=1, metadata=_positive())  # 1: FedSGD; E > 1: FedAvg
    # Secure aggregation shows the server the mean of N clients' updates: the inverted update is
    # that mean, each client holding gi_batch images (1: one client's own update), and a
    # SecAgg+ run's reports invert it at each N of gi_aggregated.
    gi_clients: int = field(default=1, metadata=_positive(max=64))
    gi_aggregated: tuple[int, ...] = (1, 2, 4, 8)
    # blend | per_layer | global: the mean of per-tensor cosines, one cosine over all parameters,
    # or the mean of the two (blend: at least as strong as breaching on 1, 4 and 8 images)
    gi_objective: str = "blend"
    gi_tv: float = field(default=0.5, metadata={"min": 0.0})  # weight of the total variation prior
    demix_images: int = field(default=24, metadata={"min": 4})  # private images mixed
    demix_rounds: int = field(default=3, metadata=_positive())  # mixes each image appears in
    gmi_targets: int = field(default=4, metadata=_positive())  # identities model-inverted
    gmi_gan_epochs: int = field(default=50, metadata=_positive())
    gmi_iterations: int = field(default=300, metadata=_positive())
    gmi_restarts: int = field(default=2, metadata=_positive())


@dataclass
class AHMConfig:
    """The whole configuration: one section per concern."""

    data: DataConfig = field(default_factory=DataConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    mixup: MixupConfig = field(default_factory=MixupConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)


def check_choice(name: str, value: str, allowed: typing.Iterable[str]) -> None:
    """Raise `ConfigError` unless `value` is one of `allowed`, naming the option and the choices."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{name}: unknown value {value!r}; expected one of {', '.join(allowed)}")


def _bounds(section: str, obj: Any) -> list[str]:
    """The problems of a section's numbers against the bounds in their fields' metadata."""
    problems = []
    for f in dataclasses.fields(obj):
        meta, value, name = f.metadata, getattr(obj, f.name), f"{section}.{f.name}"
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name}: must be a finite number, got {value}")
        elif "min" in meta and value < meta["min"]:
            problems.append(f"{name}: must be >= {meta['min']}, got {value}")
        elif "min_open" in meta and value <= meta["min_open"]:
            problems.append(f"{name}: must be > {meta['min_open']}, got {value}")
        elif "max" in meta and value > meta["max"]:
            problems.append(f"{name}: must be <= {meta['max']}, got {value}")
        elif "max_open" in meta and value >= meta["max_open"]:
            problems.append(f"{name}: must be < {meta['max_open']}, got {value}")
    return problems


def _consistency(cfg: AHMConfig) -> list[str]:
    """The problems of options that contradict one another."""
    problems = []
    if cfg.policy.baseline == "batch_mean" and not cfg.policy.per_sample:
        problems.append(
            "policy.baseline: batch_mean needs policy.per_sample=true (with one k per batch every "
            "sample's advantage over the others' mean sums to zero); expected moving_average"
        )
    if cfg.policy.context == "sample" and not cfg.policy.per_sample:
        problems.append(
            "policy.context: sample draws each face's k from its own PMF, so it needs "
            "policy.per_sample=true; expected batch"
        )
    if cfg.policy.loss_budget >= 0 and (cfg.policy.alpha, cfg.policy.beta) != (1.0, 1.0):
        problems.append(
            "policy.loss_budget: a budgeted policy is rewarded with the mixing entropy less the "
            "multiplier times FRNet1's loss, so policy.alpha and policy.beta do not apply; "
            "expected 1 and 1"
        )
    if "own" not in cfg.attack.judges:
        problems.append("attack.judges: must include own (the paper's scores use its features)")
    if not DEVICE.fullmatch(cfg.train.device):
        problems.append(
            f"train.device: unknown device {cfg.train.device!r}; expected auto, cpu, cuda, cuda:N, "
            "mps or meta"
        )
    if cfg.data.source != "synthetic" and not cfg.data.root:
        problems.append(f"data.root: required for data.source={cfg.data.source}")
    if not cfg.policy.k_set:
        problems.append("policy.k_set: the candidate set of k is empty")
    problems += [
        f"policy.k_set: k must be >= 2 (k images mixed), got {k}" for k in cfg.policy.k_set if k < 2
    ]
    if cfg.federation.local_dp and cfg.federation.screen:
        problems.append(
            "federation.local_dp: every update carries LocalDpMod's noise, which the screen's "
            "bounds on an update's norm and direction were not set for; expected "
            "federation.screen=false (the reply checks stay)"
        )
    if cfg.train.dp_sgd and cfg.model.norm != "group":
        problems.append(
            "train.dp_sgd: per-sample gradients need a network whose samples do not mix, and "
            "BatchNorm mixes them; expected model.norm=group"
        )
    if cfg.federation.min_clients > cfg.federation.num_clients:
        problems.append(
            f"federation.min_clients: {cfg.federation.min_clients} exceeds "
            f"federation.num_clients={cfg.federation.num_clients}"
        )
    return problems


def check_schema(cfg: AHMConfig) -> AHMConfig:
    """Raise `ConfigError` naming every option out of its bounds or inconsistent with another
    of the schema; return cfg unchanged. What the registries accept is `ahm_core.checks`'."""
    problems = [p for s in dataclasses.fields(cfg) for p in _bounds(s.name, getattr(cfg, s.name))]
    collect((), problems + _consistency(cfg))
    return cfg


T = TypeVar("T")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a plain value (from YAML, a CLI or a Flower run config) to the field's type by
    OmegaConf's rules, so hydra and the Flower run config agree: an int takes an int or a
    numeric string (never a bool or a float), a float an int, a float or a string, a bool a
    bool, an int or yes/no/on/off/true/false, a str any scalar. A tuple takes a list, a
    comma-separated string (the Flower run config has no lists) or one number (as a run saved
    before the option became a list holds it: `attack.kept_channels`)."""
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split() if v]
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: expected a list, got {value!r}")
        return tuple(_coerce(name, v, typing.get_args(hint)[0]) for v in value)
    kind = type(value)
    try:
        if hint is int and kind in (int, str):
            return int(value)
        if hint is float and kind in (int, float, str):
            return float(value)
        if hint is bool and kind in (bool, int, str):
            return _boolean(value)
        if hint is str and kind in (str, int, float, bool):
            return str(value)
    except ValueError:
        pass
    expected = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    raise ConfigError(f"{name}: expected {expected[hint]}, got {value!r}")


def _boolean(value: bool | int | str) -> bool:
    if isinstance(value, str):
        word = value.lower()
        if word in ("yes", "y", "on", "true"):
            return True
        if word in ("no", "n", "off", "false"):
            return False
        return int(value) != 0
    return bool(value)


def _build(cls: type[T], values: dict[str, Any], prefix: str, problems: list[str]) -> T:
    """`cls` from plain values, coerced; each unknown option or value that does not coerce is
    added to `problems` and the field keeps its default, so the checks after it still run."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    problems += [
        f"{prefix}{key}: unknown option; expected one of {', '.join(sorted(names))}"
        for key in sorted(set(values) - names)
    ]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if isinstance(value, dict):
                kwargs[key] = _build(hint, value, f"{prefix}{key}.", problems)
            else:
                problems.append(f"{prefix}{key}: expected a section (mapping), got {value!r}")
            continue
        try:
            kwargs[key] = _coerce(f"{prefix}{key}", value, hint)
        except ConfigError as err:
            problems.extend(err.problems)
    return cls(**kwargs)


def from_dict(
    values: dict[str, Any], check: Callable[[AHMConfig], object] = check_schema
) -> AHMConfig:
    """Build a config from nested mappings (YAML/hydra shape), coerced and checked by `check`
    (the schema's bounds; `ahm_core.checks.validate` adds the registries'); missing keys
    default. One ConfigError names every bad setting."""
    problems: list[str] = []
    cfg = _build(AHMConfig, dict(values), "", problems)
    collect([lambda: check(cfg)], problems)
    return cfg


def to_dict(cfg: AHMConfig) -> dict[str, Any]:
    """Nested plain mapping of the config (tuples become lists), the inverse of `from_dict`."""

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {
        s.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s.name)).items()}
        for s in dataclasses.fields(cfg)
    }


def apply_overrides(cfg: AHMConfig, overrides: dict[str, Any]) -> AHMConfig:
    """A copy of cfg with dotted keys replaced, e.g. {"mixup.k": 3}, as `from_dict`."""
    return from_flat({**to_flat(cfg), **overrides})


def to_flat(cfg: AHMConfig) -> dict[str, bool | int | float | str]:
    """`section.key` -> scalar, lists as "2,3,4": the shape of a Flower run config."""
    return {
        f"{section}.{key}": ",".join(map(str, value)) if isinstance(value, list) else value
        for section, values in to_dict(cfg).items()
        for key, value in values.items()
    }


def from_flat(flat: dict[str, Any]) -> AHMConfig:
    """Build a config from `section.key` entries (a Flower run config), as `from_dict`."""
    values: dict[str, dict[str, Any]] = {}
    for dotted, value in flat.items():
        section, _, key = dotted.partition(".")
        if not key:
            raise ConfigError(f"{dotted}: unknown option; expected SECTION.KEY")
        values.setdefault(section, {})[key] = value
    return from_dict(values)


# What a resumed run may change: how long it runs and how it shows progress, not what it computes.
RESUMABLE = frozenset({"train.epochs", "federation.rounds", "train.progress", "train.workers"})
# Options added since earlier checkpoints whose default computes what the code computed before
# them (a checkpoint without them resumes at that default); any other absent option refuses.
ADDED_AS_BEFORE = frozenset({"policy.context", "policy.loss_budget", "policy.multiplier_lr"})
UNTRAINED = ("attack.",)  # sections training never reads: the attacks of a finished run


def _flatten(values: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{section}.{key}": value
        for section, options in values.items()
        if isinstance(options, dict)
        for key, value in options.items()
    }


def refuse_changed_config(
    checkpoint: str | os.PathLike, saved: dict[str, Any], cfg: AHMConfig
) -> None:
    """Raise ConfigError naming each option (outside RESUMABLE and the attack section, which
    training never reads) in which `cfg` differs from the config a checkpoint was written with
    (`to_dict` shape): a resume must not mix two runs. An option of `ADDED_AS_BEFORE` that the
    checkpoint lacks is no change at its default, which is what the code did before it."""
    before, now = _flatten(saved), _flatten(to_dict(cfg))
    defaults = _flatten(to_dict(AHMConfig()))
    changed = [
        f"{key} {before.get(key, '(absent)')!r} -> {now.get(key, '(absent)')!r}"
        for key in sorted(set(before) | set(now))
        if key not in RESUMABLE
        and not key.startswith(UNTRAINED)
        and before.get(key) != now.get(key)
        and not (key in ADDED_AS_BEFORE and key not in before and now[key] == defaults[key])
    ]
    if changed:
        raise ConfigError(
            f"{checkpoint}: written with another config ({', '.join(changed)}); "
            "use a new run folder, resume=false, or the checkpoint's values"
        )
