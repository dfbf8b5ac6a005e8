"""dlib's pretrained face descriptor as an independent evaluator (ahm_core.metrics.dlib_face).

dlib-bin is built without BLAS, so a descriptor takes ~0.12 s of one core: the tests embed few
images (ORL: 10 identities x 8 images)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ahm_core.data.synthetic import render_faces
from ahm_core.metrics.dlib_face import INSTALL, DlibDescriptor, dlib_unavailable
from ahm_core.metrics.privacy import identity_leakage

needs_dlib = pytest.mark.skipif(dlib_unavailable() is not None, reason=str(dlib_unavailable()))


@pytest.fixture(scope="module")
def descriptor() -> DlibDescriptor:
    """One loaded descriptor (the models take ~0.5 s to load)."""
    return DlibDescriptor()


@pytest.fixture(scope="module")
def synth() -> torch.Tensor:
    """[4, 3, 64, 64] synthetic faces of four identities."""
    return render_faces(torch.arange(4), torch.zeros(4, dtype=torch.long), size=64, seed=0)


@needs_dlib
def test_descriptors_shape_and_determinism(descriptor: DlibDescriptor, synth: torch.Tensor) -> None:
    images = torch.cat([synth, synth[:1]]).requires_grad_()  # the last is the first again
    out = descriptor(images)
    assert out.shape == (5, 128) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert not out.requires_grad and bool(torch.isfinite(out).all())
    assert 0 <= descriptor.last_detected <= 5
    norms = out.norm(dim=1)  # dlib's descriptors are not unit vectors: ~1.25-1.6 measured
    assert bool(((norms > 0.5) & (norms < 3.0)).all()), norms
    assert torch.equal(out[0], out[4])  # the same image twice: the same descriptor
    distances = torch.cdist(out[:4], out[:4])
    assert bool((distances[~torch.eye(4, dtype=torch.bool)] > 1e-3).all())  # different faces
    assert descriptor(images[:0]).shape == (0, 128)


@needs_dlib
@pytest.mark.parametrize("size", [32, 112])
def test_grey_and_rgb_of_one_picture(descriptor: DlibDescriptor, size: int) -> None:
    grey = render_faces(torch.arange(2), torch.ones(2, dtype=torch.long), size=size).mean(1, True)
    from_grey = descriptor(grey)
    from_rgb = descriptor(grey.expand(-1, 3, -1, -1))
    assert from_grey.shape == (2, 128) and bool(torch.isfinite(from_grey).all())
    assert torch.equal(from_grey, from_rgb)  # grey is replicated to the same RGB picture


@needs_dlib
def test_rejects_bad_shapes(descriptor: DlibDescriptor) -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        descriptor(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="1 or 3"):
        descriptor(torch.rand(1, 2, 32, 32))


@needs_dlib
def test_orl_reidentification(descriptor: DlibDescriptor, shared_data: Path) -> None:
    """Gallery/probe rank-1 on 10 ORL subjects: 3 gallery and 5 probe images each."""
    root = shared_data / "orl_faces"
    subjects, per_subject, in_gallery = range(1, 11), 8, 3
    arrays = [
        np.asarray(Image.open(root / f"s{s}" / f"{i}.pgm").convert("L"), dtype=np.float32) / 255
        for s in subjects
        for i in range(1, per_subject + 1)
    ]
    images = torch.from_numpy(np.stack(arrays))[:, None]  # [80, 1, 112, 92]
    labels = torch.tensor(subjects).repeat_interleave(per_subject)
    gallery = torch.arange(len(labels)) % per_subject < in_gallery
    detected, seconds = 0, 0.0

    def embed(batch: torch.Tensor) -> torch.Tensor:  # the descriptor, counting and timing
        nonlocal detected, seconds
        start = time.perf_counter()
        out = descriptor(batch)
        seconds += time.perf_counter() - start
        detected += descriptor.last_detected
        return out

    result = identity_leakage(
        images[~gallery], labels[~gallery], images[gallery], labels[gallery], embed
    )
    per_image = seconds / len(images)
    print(
        f"\nORL dlib rank-1 {result['rank1']:.3f} over {result['trials']} probes "
        f"(chance {result['chance']:.2f}); face detected in {detected}/{len(images)}; "
        f"{per_image * 1000:.0f} ms/image ({1 / per_image:.1f} images/s) at 112x92"
    )
    assert detected >= 0.9 * len(images)  # the HOG detector finds ~98% of ORL faces
    assert result["chance"] == pytest.approx(0.1)
    assert result["rank1"] >= 0.9


def test_unavailable_names_the_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    message = dlib_unavailable()
    assert message is not None and "\n" not in message
    assert "missing dlib" in message and INSTALL in message
    with pytest.raises(RuntimeError, match="dlib"):
        DlibDescriptor()


def test_unavailable_without_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "face_recognition_models", None)
    message = dlib_unavailable()
    assert message is not None and "\n" not in message
    assert "face_recognition_models" in message and INSTALL in message
    with pytest.raises(RuntimeError, match="face_recognition_models"):
        DlibDescriptor()


@needs_dlib
def test_available_here() -> None:
    assert dlib_unavailable() is None
