import dataclasses
import math
import typing

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from ahm_core.checks import validate
from ahm_core.config import (
    AHMConfig,
    ConfigError,
    _coerce,
    apply_overrides,
    from_dict,
    refuse_changed_config,
    to_dict,
)
from ahm_core.federated import parse_flower_run_config


def test_defaults_are_valid_and_round_trip():
    cfg = validate(AHMConfig())
    assert from_dict(to_dict(cfg)) == cfg


def test_values_are_coerced_from_strings_and_lists():
    cfg = apply_overrides(
        AHMConfig(),
        {"policy.k_set": "2,3,4", "train.batch_size": "32", "federation.share_head": "true"},
    )
    assert cfg.policy.k_set == (2, 3, 4)
    assert cfg.train.batch_size == 32
    assert cfg.federation.share_head is True
    assert from_dict({"policy": {"k_set": [2, 6]}}).policy.k_set == (2, 6)
    # a run saved when attack.kept_channels was one number still loads, as a one-count list
    assert from_dict({"attack": {"kept_channels": 16}}).attack.kept_channels == (16,)
    with pytest.raises(ConfigError, match=r"attack\.kept_channels: expected a list"):
        from_dict({"attack": {"kept_channels": True}})


BAD = [
    ({"masking.method": "masking_adamixup", "policy.k_set": ()}, "policy.k_set", "empty"),
    ({"masking.method": "masking_mixup", "mixup.k": 1}, "mixup.k", ">= 2"),
    ({"masking.method": "masking_adamixup", "policy.k_set": (1, 2)}, "policy.k_set", ">= 2"),
    (
        {"masking.method": "masking_mixup", "mixup.k": 8, "train.batch_size": 4},
        "mixup.k",
        "exceeds train.batch_size",
    ),
    (
        {"masking.method": "masking_adamixup", "policy.k_set": (2, 6), "train.batch_size": 5},
        "policy.k_set",
        "exceeds",
    ),
    (
        {"masking.method": "masking_mixup", "mixup.k": 2, "mixup.max_coef": 0.5},
        "mixup.max_coef",
        "(1/2, 1]",
    ),
    (
        {"masking.method": "masking_mixup", "mixup.k": 4, "mixup.max_coef": 1.5},
        "mixup.max_coef",
        "(1/4, 1]",
    ),
    (
        {"masking.method": "masking_adamixup", "policy.k_set": (2, 5), "mixup.max_coef": 0.4},
        "mixup.max_coef",
        "(1/2, 1]",
    ),
    ({"masking.method": "rot13"}, "masking.method", "unknown value 'rot13'"),
    ({"policy.context": "pixel"}, "policy.context", "unknown value 'pixel'"),
    ({"policy.reward": "entropy"}, "policy.reward", "unknown value 'entropy'"),
    ({"policy.context": "sample", "policy.per_sample": False}, "policy.context", "per_sample"),
    ({"policy.loss_budget": 0.2, "policy.beta": 0.0}, "policy.loss_budget", "alpha and"),
    ({"policy.multiplier_lr": 0.0}, "policy.multiplier_lr", "> 0"),
    ({"model.backbone": "vgg"}, "model.backbone", "unknown value 'vgg'"),
    ({"masking.keys": "random"}, "masking.keys", "unknown"),
    (
        {
            "masking.method": "ppfr_fd",
            "masking.upsample": 4,
            "data.source": "folder",
            "data.root": "x",
            "data.image_size": 111,
        },
        "data.image_size",
        "multiple of 2",
    ),
    ({"masking.method": "ppfr_fd", "masking.upsample": 3}, "masking.upsample", "one of"),
    ({"data.image_size": 20}, "data.image_size", "32, 112"),
    ({"data.image_size": 0}, "data.image_size", ">= 1"),
    ({"data.image_size": -112}, "data.image_size", ">= 1"),
    ({"train.batch_size": 0}, "train.batch_size", ">= 1"),
    ({"data.num_identities": -3}, "data.num_identities", ">= 3"),
    ({"data.images_per_identity": 1}, "data.images_per_identity", ">= 2"),
    ({"data.seed": -1}, "data.seed", ">= 0"),
    ({"train.seed": 2**40}, "train.seed", "<= 4294967295"),
    ({"masking.key_seed": -7}, "masking.key_seed", ">= 0"),
    ({"mixup.k": 1}, "mixup.k", ">= 2"),  # whatever the method: k=1 mixes nothing
    ({"train.device": "garbage"}, "train.device", "unknown device 'garbage'"),
    ({"train.device": "cuda:x"}, "train.device", "unknown device"),
    ({"model.blocks": ()}, "model.blocks", "one or more stages"),
    ({"model.blocks": (1, 0)}, "model.blocks", ">= 1 block each"),
    ({"model.blocks": (1,) * 6, "data.image_size": 32}, "data.image_size", "multiple of 64"),
    ({"model.backbone": "ir_se_50", "data.image_size": 40}, "data.image_size", "multiple of 16"),
    ({"data.max_pixels": 0}, "data.max_pixels", ">= 1"),
    ({"model.embedding_size": 0}, "model.embedding_size", ">= 1"),
    ({"masking.num_channels": 64}, "masking.num_channels", "<= 63"),
    ({"masking.eps": 0.0}, "masking.eps", "> 0.0"),
    (
        {"federation.min_clients": 9, "federation.num_clients": 4},
        "federation.min_clients",
        "exceeds",
    ),
    ({"data.source": "folder"}, "data.root", "required"),
    ({"attack.judges": ("dlib",)}, "attack.judges", "must include own"),
    ({"attack.judges": ("own", "facenet")}, "attack.judges", "expected one of own, dlib"),
    ({"attack.gallery_per_identity": 0}, "attack.gallery_per_identity", ">= 1"),
]


@pytest.mark.parametrize(("overrides", "option", "phrase"), BAD)
def test_bad_config_gives_one_clear_error(overrides, option, phrase):
    """One bad setting: its problems, each on a line naming it (an image size can break two
    rules at once)."""
    with pytest.raises(ConfigError) as err:
        validate(apply_overrides(AHMConfig(), overrides))
    message = str(err.value)
    assert phrase in message and list(err.value.problems) == message.splitlines()
    assert all(line.startswith(option) for line in err.value.problems), message


def test_mixing_checks_apply_only_to_methods_that_mix():
    # A batch of 1 is fine without MixUp, and max_coef is irrelevant there.
    cfg = apply_overrides(
        AHMConfig(), {"masking.method": "ppfr_fd", "train.batch_size": 1, "mixup.max_coef": 0.1}
    )
    assert cfg.train.batch_size == 1


@pytest.mark.parametrize(
    ("values", "phrase"),
    [
        ({"nonsense": {}}, "nonsense: unknown option"),
        ({"mixup": {"kk": 2}}, "mixup.kk: unknown option"),
        ({"mixup": 3}, "mixup: expected a section"),
        ({"mixup": {"k": "two"}}, "mixup.k: expected an integer"),
        ({"mixup": {"k": 2.5}}, "mixup.k: expected an integer"),
        ({"federation": {"share_head": "maybe"}}, "federation.share_head: expected true or false"),
    ],
)
def test_malformed_values_are_named(values, phrase):
    with pytest.raises(ConfigError, match=phrase.replace(".", r"\.")):
        from_dict(values)


def test_override_needs_section_and_key():
    with pytest.raises(ConfigError, match=r"expected SECTION\.KEY"):
        apply_overrides(AHMConfig(), {"k": 2})


def _options(kind: type) -> list[str]:
    """Every `section.key` of the schema whose type is `kind`."""
    sections = typing.get_type_hints(AHMConfig)
    return [
        f"{name}.{key}"
        for name, section in sections.items()
        for key, hint in typing.get_type_hints(section).items()
        if hint is kind
    ]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf"])
@pytest.mark.parametrize("option", _options(float))
def test_every_float_option_rejects_nan_and_inf(option, value):
    with pytest.raises(ConfigError) as err:
        apply_overrides(AHMConfig(), {option: value})
    assert str(err.value).startswith(f"{option}: must be a finite number")


@dataclasses.dataclass
class _Typed:
    i: int = 0
    f: float = 0.0
    b: bool = False
    s: str = ""


VALUES = [0, 1, 2, -3, 1.0, 2.5, math.inf, True, False, "3", " 4 ", "1_000", "2.0", "1e3", "abc"]
VALUES += ["", "nan", "inf", "true", "False", "yes", "off", "Y", "0", "7", None, [1], {"a": 1}]


@pytest.mark.parametrize("value", VALUES, ids=repr)
@pytest.mark.parametrize("hint", [int, float, bool, str])
def test_values_convert_exactly_as_hydra_converts_them(hint, value):
    """A value of the Flower run config converts as the same override does through hydra."""
    name = {int: "i", float: "f", bool: "b", str: "s"}[hint]
    try:
        expected = getattr(OmegaConf.merge(OmegaConf.structured(_Typed), {name: value}), name)
    except ValidationError:
        expected = ConfigError
    try:
        got = _coerce(name, value, hint)
    except ConfigError:
        got = ConfigError
    assert got == expected or (got != got and expected != expected)  # nan == nan
    assert type(got) is type(expected)


@pytest.mark.parametrize(
    ("option", "value", "phrase"),
    [
        ("train.batch_size", True, "expected an integer, got True"),
        ("train.batch_size", math.inf, "expected an integer, got inf"),
        ("train.batch_size", 1e30, "expected an integer"),
        ("train.batch_size", 64.0, "expected an integer, got 64.0"),
        ("train.flip", "maybe", "expected true or false"),
        ("train.momentum", math.nan, "must be a finite number, got nan"),
        ("federation.max_update_norm", "nan", "must be a finite number"),
        ("policy.k_set", "2,x", "expected an integer, got 'x'"),
        ("train.nonsense", 1, "unknown option"),
    ],
)
def test_flower_run_config_gives_one_clear_error(option, value, phrase):
    with pytest.raises(ConfigError) as err:
        parse_flower_run_config({option: value})
    assert str(err.value).startswith(option) and phrase in str(err.value)


def test_a_resume_names_every_option_that_changed():
    saved = to_dict(AHMConfig())
    now = apply_overrides(AHMConfig(), {"masking.key_seed": 7, "train.lr": 0.5})
    with pytest.raises(ConfigError) as err:
        refuse_changed_config("run/checkpoint.pt", saved, now)
    assert str(err.value).startswith("run/checkpoint.pt: written with another config (")
    assert "masking.key_seed 0 -> 7, train.lr 0.1 -> 0.5)" in str(err.value)
    longer = apply_overrides(AHMConfig(), {"train.epochs": 9, "train.progress": False})
    refuse_changed_config("run/checkpoint.pt", saved, longer)  # how long and how shown: allowed
    attacked = apply_overrides(AHMConfig(), {"attack.victims": 8, "attack.judges": ("own",)})
    refuse_changed_config("run/checkpoint.pt", saved, attacked)  # training never reads attack.*
    del saved["attack"]["judges"]  # nor an attack option a newer schema added
    refuse_changed_config("run/checkpoint.pt", saved, AHMConfig())
    for key in ("context", "loss_budget", "multiplier_lr"):  # added with the old behaviour
        del saved["policy"][key]
    refuse_changed_config("run/checkpoint.pt", saved, AHMConfig())
    per_face = apply_overrides(AHMConfig(), {"policy.context": "sample"})
    with pytest.raises(ConfigError, match=r"policy\.context '\(absent\)' -> 'sample'"):
        refuse_changed_config("run/checkpoint.pt", saved, per_face)
    del saved["data"]["max_pixels"]  # a checkpoint of an older schema
    with pytest.raises(ConfigError, match=r"data\.max_pixels '\(absent\)' -> 25000000"):
        refuse_changed_config("run/checkpoint.pt", saved, AHMConfig())


def test_every_bad_setting_is_named_at_once():
    """Unknown options, values that do not coerce, bounds, contradictions and registry names:
    one ConfigError with a line for each, whatever their order."""
    values = {
        "train": {"lr": "abc", "nope": 1, "batch_size": 0},
        "mixup": {"k": 1},
        "masking": {"method": "rot13"},
        "policy": {"context": "sample", "per_sample": False},
    }
    with pytest.raises(ConfigError) as err:
        from_dict(values, validate)
    assert sorted(p.split(":")[0] for p in err.value.problems) == [
        "masking.method",
        "mixup.k",
        "policy.context",
        "train.batch_size",
        "train.lr",
        "train.nope",
    ]
    assert str(err.value) == "\n".join(err.value.problems)
