import math

import pytest
import torch
import torch.nn.functional as F

from ahm_core.config import ModelConfig
from ahm_core.models import ArcFace, MixUpArcFace, build_backbone, build_head
from ahm_core.models.heads import SIN_EPS, label_entropy


def small_cfg(**kw):
    return ModelConfig(**{"backbone": "ir_se_small", "blocks": (1, 1), "width": 8, **kw})


def heads(num_classes=10, dim=16, seed=0):
    """An ArcFace and a MixUpArcFace sharing one weight."""
    torch.manual_seed(seed)
    arc = ArcFace(num_classes, dim)
    mix = MixUpArcFace(num_classes, dim)
    mix.load_state_dict(arc.state_dict())
    return arc, mix


def arcface_reference(cos, labels, coefs, s=64.0, m=0.5):
    """Algorithm 1 by hand with arccos (valid while theta + m < pi), then the weighted CE."""
    logits = cos.clone()
    for j in range(labels.shape[1]):
        target = cos.gather(1, labels[:, j : j + 1])
        phi = torch.cos(torch.arccos(target) + m)
        logits = logits.scatter_add(1, labels[:, j : j + 1], coefs[:, j : j + 1] * (phi - target))
    logits = logits * s
    loss = sum(
        coefs[:, j] * F.cross_entropy(logits, labels[:, j], reduction="none")
        for j in range(labels.shape[1])
    )
    return logits, loss


@pytest.mark.parametrize("size", [32, 56])
@pytest.mark.parametrize("in_channels", [1, 3, 63, 64])
def test_small_shapes(size, in_channels):
    net = build_backbone(small_cfg(blocks=(1, 1, 1), embedding_size=24), in_channels, size)
    out = net(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 24) and torch.isfinite(out).all()


def test_ir_se_50_shape_and_parameter_count():
    cfg = ModelConfig(backbone="ir_se_50", blocks=(1,), width=3)  # blocks/width are ignored
    rgb = build_backbone(cfg, 3, 112)
    n_params = sum(p.numel() for p in rgb.parameters())
    # face.evoLVe's IR-SE-50: 43.8M parameters.
    assert 43_700_000 < n_params < 43_900_000
    assert len(rgb.body) == 3 + 4 + 14 + 3
    torch.manual_seed(0)
    net = build_backbone(cfg, 63, 112).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 63, 112, 112))
    assert out.shape == (2, 512) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("backbone", "blocks", "size"),
    [("ir_se_small", (1, 1, 1), 36), ("ir_se_small", (1,) * 6, 32), ("ir_se_50", (1,), 100)],
)
def test_bad_size_is_refused(backbone, blocks, size):
    with pytest.raises(ValueError, match=r"data\.image_size.*model\.blocks"):
        build_backbone(ModelConfig(backbone=backbone, blocks=blocks, width=8), 3, size)


def test_empty_blocks_and_unknown_backbone_are_refused():
    with pytest.raises(ValueError, match=r"model\.blocks"):
        build_backbone(small_cfg(blocks=()), 3, 32)
    with pytest.raises(ValueError, match=r"model\.backbone"):
        build_backbone(ModelConfig(backbone="resnet"), 3, 32)


def test_initialisation():
    net = build_backbone(small_cfg(), 3, 32)
    bn = net.input_layer[1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and not bn.bias.any()
    conv = net.input_layer[0].weight  # kaiming normal, fan_out = 8 * 3 * 3
    assert abs(conv.std().item() - math.sqrt(2 / 72)) < 0.05


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    net = build_backbone(small_cfg(blocks=(1, 2)), 63, 32).eval()
    x = torch.randn(3, 63, 32, 32)
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_one_component_equals_arcface_exactly():
    arc, mix = heads()
    emb = torch.randn(8, 16)
    labels = torch.randint(0, 10, (8,))
    emb_a, emb_m = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    loss_a = arc(emb_a, labels)
    loss_m = mix(emb_m, labels[:, None], torch.ones(8, 1))
    assert loss_a.shape == (8,)
    assert torch.equal(loss_a, loss_m)
    assert torch.equal(arc.logits(emb, labels), mix.logits(emb, labels[:, None], torch.ones(8, 1)))
    loss_a.sum().backward()
    loss_m.sum().backward()
    assert torch.equal(emb_a.grad, emb_m.grad)
    assert torch.equal(arc.weight.grad, mix.weight.grad)


def test_arcface_matches_reference():
    arc, _ = heads()
    emb, labels = torch.randn(8, 16), torch.randint(0, 10, (8,))
    cos = F.normalize(emb) @ F.normalize(arc.weight).T
    logits, loss = arcface_reference(cos, labels[:, None], torch.ones(8, 1))
    torch.testing.assert_close(arc.logits(emb, labels), logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(arc(emb, labels), loss, rtol=1e-4, atol=1e-4)
    # The margin lowers the target logit only: the loss exceeds plain softmax CE.
    plain = F.cross_entropy(64 * cos, labels, reduction="none")
    assert (arc(emb, labels) > plain).all()


def test_two_components_hand_formula():
    _, mix = heads()
    emb = torch.randn(6, 16)
    labels = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [1, 4]])
    coefs = torch.full((6, 2), 0.5)
    cos = F.normalize(emb) @ F.normalize(mix.weight).T
    logits, loss = arcface_reference(cos, labels, coefs)
    torch.testing.assert_close(mix.logits(emb, labels, coefs), logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mix(emb, labels, coefs), loss, rtol=1e-4, atol=1e-4)
    # Each component's margin is half of ArcFace's: only the labelled classes move.
    moved = mix.logits(emb, labels, coefs) != 64 * cos
    assert moved.sum() == 12 and moved.gather(1, labels).all()


def test_same_label_twice_is_one_component():
    _, mix = heads()
    emb, labels = torch.randn(8, 16), torch.randint(0, 10, (8,))
    twice = mix(emb, torch.stack([labels, labels], 1), torch.tensor([[0.3, 0.7]]).expand(8, 2))
    once = mix(emb, labels[:, None], torch.ones(8, 1))
    torch.testing.assert_close(twice, once)


def test_absent_component_is_ignored():
    _, mix = heads()
    emb, labels = torch.randn(8, 16), torch.randint(0, 10, (8, 3))
    coefs = torch.tensor([[0.6, 0.4, 0.0]]).expand(8, 3)
    torch.testing.assert_close(mix(emb, labels, coefs), mix(emb, labels[:, :2], coefs[:, :2]))


def test_shape_errors():
    arc, mix = heads()
    emb = torch.randn(4, 16)
    with pytest.raises(ValueError, match="labels and coefs"):
        mix(emb, torch.zeros(4, 2, dtype=torch.long), torch.ones(4, 3))
    with pytest.raises(ValueError, match="labels"):
        arc(emb, torch.zeros(4, 1, dtype=torch.long))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_finite_gradients_at_cos_plus_minus_one(sign):
    head = ArcFace(4, 8)
    with torch.no_grad():
        head.weight.copy_(torch.eye(4, 8))
    emb = (sign * 2.0 * torch.eye(4, 8)).requires_grad_()
    labels = torch.arange(4)
    cos = head.cosine(emb).gather(1, labels[:, None])
    assert torch.equal(cos, torch.full((4, 1), sign))
    # At cos = 1, sin is floored at sqrt(SIN_EPS); at cos = -1, theta + m > pi takes
    # arcface_torch's fallback cos - sin(pi - m) * m.
    phi = (
        math.cos(0.5) - math.sqrt(SIN_EPS) * math.sin(0.5) if sign > 0 else -1 - 0.5 * math.sin(0.5)
    )
    expected = 64 * phi
    target = head.logits(emb, labels).gather(1, labels[:, None])
    torch.testing.assert_close(target, torch.full((4, 1), expected))
    head(emb, labels).sum().backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(head.weight.grad).all()
    assert emb.grad.abs().sum() > 0


def test_bf16_autocast_computes_margin_in_float32():
    torch.manual_seed(0)
    net = build_backbone(small_cfg(), 3, 32)
    head = build_head(small_cfg(), 5)
    x, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4, 2))
    coefs = torch.tensor([[0.55, 0.45]]).expand(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = net(x)
        loss = head(emb, labels, coefs)
    assert emb.dtype == torch.bfloat16 and loss.dtype == torch.float32
    torch.testing.assert_close(loss, head(emb.float(), labels, coefs))
    loss.sum().backward()
    assert torch.isfinite(head.weight.grad).all()


def test_build_head_uses_config():
    cfg = small_cfg(embedding_size=32, scale=30.0, margin=0.3)
    head = build_head(cfg, 7)
    assert isinstance(head, MixUpArcFace) and head.weight.shape == (7, 32)
    assert (head.scale, head.margin) == (30.0, 0.3)
    assert abs(head.weight.std().item() - 0.01) < 0.002
    ArcFace(7, 32).load_state_dict(head.state_dict())


def test_tiny_network_overfits():
    torch.manual_seed(0)
    cfg = small_cfg(embedding_size=32, dropout=0.0)
    net, head = build_backbone(cfg, 3, 32), ArcFace(4, 32)
    x, labels = torch.randn(16, 3, 32, 32), torch.arange(4).repeat_interleave(4)
    params = [*net.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    losses = []
    for _ in range(50):
        loss = head(net(x), labels).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    net.eval()
    with torch.no_grad():
        assert torch.equal(head.cosine(net(x)).argmax(dim=1), labels)


def test_label_entropy_merges_components_of_one_identity_and_ignores_absent_ones():
    labels = torch.tensor([[0, 1, 0], [3, 3, 7], [5, 6, 9]])
    coefs = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 0.5], [0.2, 0.3, 0.5]])
    expected = [math.log(2), math.log(2), -sum(c * math.log(c) for c in (0.2, 0.3, 0.5))]
    torch.testing.assert_close(label_entropy(labels, coefs), torch.tensor(expected))


def test_the_kl_reward_is_the_kl_divergence_of_the_recogniser_from_the_mixed_label():
    torch.manual_seed(0)
    head = MixUpArcFace(5, 8, scale=4.0, margin=0.5)
    embeddings = torch.randn(3, 8)
    labels, coefs = torch.tensor([[0, 1], [2, 2], [3, 4]]), torch.tensor([[0.6, 0.4]] * 3)
    _, free, kl = head.losses(embeddings, labels, coefs)
    p = torch.softmax(head.cosine(embeddings) * 4.0, dim=1)
    q = torch.zeros(3, 5).scatter_add(1, labels, coefs)
    by_hand = (q * (q.clamp_min(1e-30).log() - p.log())).sum(dim=1)
    torch.testing.assert_close(kl, by_hand)
    assert bool((kl >= 0).all()) and bool((kl[[0, 2]] < free[[0, 2]]).all())
    torch.testing.assert_close(kl[1], free[1])  # one identity: no floor to take off
