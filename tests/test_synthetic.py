import numpy as np
import pytest
import torch
from PIL import Image

from ahm_core.data.synthetic import SynthFaces, hash_uniform, render_faces, write_image_folder


@pytest.mark.parametrize("size", [32, 57, 112])
def test_shape_range_and_determinism(size):
    ids, imgs = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 5])
    a = render_faces(ids, imgs, size=size, seed=4)
    assert a.shape == (3, 3, size, size) and a.dtype == torch.float32
    assert a.min().item() >= 0 and a.max().item() <= 1
    torch.testing.assert_close(render_faces(ids, imgs, size=size, seed=4), a, rtol=0, atol=0)
    assert (render_faces(ids, imgs, size=size, seed=5) - a).abs().mean().item() > 0.05


def test_an_image_does_not_depend_on_its_batch():
    big = render_faces(torch.arange(70) // 7, torch.arange(70) % 7, size=40, seed=0)
    alone = render_faces(torch.tensor([6]), torch.tensor([3]), size=40, seed=0)
    torch.testing.assert_close(big[6 * 7 + 3], alone[0], rtol=0, atol=0)


def test_hash_is_a_function_of_its_keys():
    a = hash_uniform(1, 2, np.array([5, 9]), 4)
    b = hash_uniform(1, 2, np.array([9]), 4)
    np.testing.assert_array_equal(a[1], b[0])
    assert a.min() >= 0 and a.max() < 1 and len(np.unique(a)) == a.size


def test_sizes_are_checked():
    with pytest.raises(ValueError, match=r"32\.\.112"):
        SynthFaces(size=128)
    with pytest.raises(ValueError, match=r"32\.\.112"):
        render_faces(torch.tensor([0]), torch.tensor([0]), size=31)
    with pytest.raises(ValueError, match=">= 1 identity"):
        SynthFaces(num_identities=0)


def test_dataset_items_are_the_8_bit_images():
    ds = SynthFaces(num_identities=3, images_per_identity=4, size=32, seed=2)
    assert len(ds) == 12
    torch.testing.assert_close(ds.labels, torch.tensor([0] * 4 + [1] * 4 + [2] * 4))
    image, label = ds[5]
    assert label == 1 and image.shape == (3, 32, 32)
    exact = render_faces(torch.tensor([1]), torch.tensor([1]), size=32, seed=2)[0]
    assert (image - exact).abs().max().item() <= 0.5 / 255 + 1e-6
    batch = ds.__getitems__([0, 5, 11])
    assert [lbl for _, lbl in batch] == [0, 1, 2]
    torch.testing.assert_close(batch[1][0], image)
    uncached = SynthFaces(num_identities=3, images_per_identity=4, size=32, seed=2, cache=False)
    torch.testing.assert_close(uncached[5][0], image)
    with pytest.raises(IndexError):
        ds.images_uint8([12])


def test_write_image_folder(tmp_path):
    ds = SynthFaces(num_identities=3, images_per_identity=2, size=32, seed=0)
    root = write_image_folder(ds, tmp_path / "faces")
    folders = sorted(p.name for p in root.iterdir())
    assert folders == ["id_00000", "id_00001", "id_00002"]
    files = sorted(p.name for p in (root / "id_00001").iterdir())
    assert files == ["000.png", "001.png"]
    pixels = np.asarray(Image.open(root / "id_00001" / "001.png"))
    np.testing.assert_array_equal(pixels, ds.images_uint8([3])[0].permute(1, 2, 0).numpy())


def test_a_real_recognition_task():
    """Identities are learnable from pixels, yet images of one person vary a lot."""
    ds = SynthFaces(num_identities=20, images_per_identity=10, size=32, seed=0)
    x = ds.images_uint8(range(len(ds))).float().flatten(1) / 255
    x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)
    y = ds.labels
    same = y[:, None] == y[None, :]
    dist = torch.cdist(x, x)
    off_diagonal = ~torch.eye(len(y), dtype=torch.bool)
    within, between = dist[same & off_diagonal].mean(), dist[~same].mean()
    assert within / between > 0.7  # pose, light, background and noise move images far
    dist.fill_diagonal_(float("inf"))
    nearest = (y[dist.argmin(1)] == y).float().mean().item()
    assert nearest < 0.5  # pixel matching alone does not solve it

    train = (torch.arange(len(y)) % 10) < 7
    torch.manual_seed(0)
    w = torch.zeros(x.shape[1], 20, requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(x[train] @ w, y[train]) + 1e-3 * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = ((x[~train] @ w).argmax(1) == y[~train]).float().mean().item()
    assert held_out > 0.4  # chance is 0.05
