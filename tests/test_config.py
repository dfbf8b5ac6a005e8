import pytest

from ahm_core.config import (
    AHMConfig,
    ConfigError,
    apply_overrides,
    from_dict,
    to_dict,
    validate,
)


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
    ({"data.num_identities": -3}, "data.num_identities", ">= 1"),
    ({"model.embedding_size": 0}, "model.embedding_size", ">= 1"),
    ({"masking.num_channels": 64}, "masking.num_channels", "<= 63"),
    ({"masking.eps": 0.0}, "masking.eps", "> 0.0"),
    (
        {"federation.min_clients": 9, "federation.num_clients": 4},
        "federation.min_clients",
        "exceeds",
    ),
    ({"data.source": "folder"}, "data.root", "required"),
]


@pytest.mark.parametrize(("overrides", "option", "phrase"), BAD)
def test_bad_config_gives_one_clear_error(overrides, option, phrase):
    with pytest.raises(ConfigError) as err:
        apply_overrides(AHMConfig(), overrides)
    message = str(err.value)
    assert message.startswith(option) and phrase in message
    assert "\n" not in message


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
        ({"mixup": {"k": "two"}}, "mixup.k: expected int"),
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
