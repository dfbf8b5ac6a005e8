"""Block DCT of bilinearly upsampled grayscale images (docs/design.md D1) and its inverse.

`bdct(x, u)` equals: bilinear upsample by `u` (align_corners=False) -> orthonormal 8x8 DCT-II of
each block, stride 8 -> 64 channels, channel c = basis (c // 8, c % 8). Because upsampling and the
block DCT are linear and every 8x8 output block depends only on a (s+2)x(s+2) window of the input
(s = 8 // u, with border clamping = replicate padding), the whole transform is one strided
convolution with 64 separable kernels. It runs as a batched product of each image's windows with
the [64, (s+2)^2] kernel matrix (`window_map`), measured 1.9x faster than conv2d on CPU at
112x112; `bdct_explicit` keeps the literal recipe as the test oracle.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCK = 8
UPSAMPLE_FACTORS = (1, 2, 4, 8)
CPU_CHUNK = 16  # images per chunk on CPU: their windows stay in cache
AffineFn = Callable[[Tensor, Tensor, slice], Tensor]


def dct_matrix(n: int = BLOCK, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal DCT-II matrix D with D[k, i] = a_k cos(pi (2i + 1) k / 2n)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


def check_upsample(upsample: int) -> int:
    """The input stride 8 // upsample; raises for a factor the fused operator cannot take."""
    if upsample not in UPSAMPLE_FACTORS:
        raise ValueError(f"upsample must be one of {UPSAMPLE_FACTORS}, got {upsample}")
    return BLOCK // upsample


def _upsample_taps(upsample: int) -> Tensor:
    """[8, s+2] weights of one block's 8 upsampled samples on the s+2 inputs from offset -1."""
    stride = check_upsample(upsample)
    taps = torch.zeros(BLOCK, stride + 2, dtype=torch.float64)
    for j in range(BLOCK):
        src = (j + 0.5) / upsample - 0.5  # torch's source index for align_corners=False
        i0 = math.floor(src)
        lam = src - i0
        taps[j, i0 + 1] += 1.0 - lam
        taps[j, i0 + 2] += lam
    return taps


@functools.lru_cache(maxsize=32)
def fused_kernel(
    upsample: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Tensor:
    """The [64, 1, s+2, s+2] convolution kernel that computes bdct on a replicate-padded image."""
    a = dct_matrix() @ _upsample_taps(upsample)  # 1-D: 8 frequencies from s+2 input pixels
    kernel = torch.einsum("ai,bj->abij", a, a).reshape(BLOCK * BLOCK, 1, a.shape[1], a.shape[1])
    return kernel.to(device=device, dtype=dtype)


def check_images(x: Tensor, name: str = "images", channels: int | None = 1) -> None:
    """Raise one clear error unless x is a floating tensor [N, channels, H, W], finite when on
    the CPU (on an accelerator that check is a device-to-host read that would stall training)."""
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a tensor [N, C, H, W], got shape {shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channel(s), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf values")


def bdct_patches(x: Tensor, upsample: int = 8, out: Tensor | None = None) -> Tensor:
    """[N, (s+2)^2, L] input windows of `fused_kernel`, one per output block (L = H*u/8 * W*u/8).

    Gathered from a strided view of the padded image (the layout of F.unfold, about twice as fast
    on CPU); written into `out` when given, which may be a slice of a larger buffer.
    """
    stride = check_upsample(upsample)
    size = stride + 2
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    view = padded.unfold(2, size, stride).unfold(3, size, stride)  # [N, 1, h, w, size, size]
    n, _, h, w = view.shape[:4]
    windows = view.permute(0, 1, 4, 5, 2, 3)[:, 0]  # [N, size, size, h, w]
    if out is None:
        return windows.reshape(n, size * size, h * w)
    out.view(n, size, size, h, w).copy_(windows)
    return out


def window_map(x: Tensor, upsample: int, channels: int, affine: AffineFn) -> Tensor:
    """Apply a per-image affine map to each image's windows: the engine of `bdct` and PPFR-FD.

    `affine(windows, means, part)` gets the windows [m, T, L] of the chunk `part` of images with
    their mean pixel `means` [m] removed, and returns [m, channels, T + 1] (last column: bias).
    On CPU, chunks keep their windows in cache while the output is written; the bias rides on a
    row of ones, so the output is written in a single pass.
    """
    stride = check_upsample(upsample)
    _check_divisible(x.shape[-2:], stride)
    n, dtype = x.shape[0], x.dtype
    work_dtype = torch.promote_types(dtype, torch.float32)
    h, w, taps = x.shape[-2] // stride, x.shape[-1] // stride, (stride + 2) ** 2
    out = torch.empty(n, channels, h * w, dtype=dtype, device=x.device)
    chunk = max(1, n if x.is_cuda else min(n, CPU_CHUNK))
    rows = torch.empty(chunk, taps + 1, h * w, dtype=work_dtype, device=x.device)
    rows[:, taps] = 1.0
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        work = x[part].to(work_dtype)
        means = work.mean(dim=(1, 2, 3))
        chunk_rows = rows[: len(work)]
        bdct_patches(work - means.view(-1, 1, 1, 1), upsample, chunk_rows[:, :taps])
        weight = affine(chunk_rows[:, :taps], means, part)
        torch.bmm(weight.to(dtype), chunk_rows.to(dtype), out=out[part])
    return out.view(n, channels, h, w)


def bdct(x: Tensor, upsample: int = 8) -> Tensor:
    """Block DCT of the upsampled image: [N, 1, H, W] -> [N, 64, H*u/8, W*u/8] (fused operator)."""
    check_images(x)
    kernel = fused_kernel(upsample, x.device, torch.promote_types(x.dtype, torch.float32))
    kernel = kernel.flatten(1)  # [64, T]

    def affine(windows: Tensor, means: Tensor, part: slice) -> Tensor:
        # The removed mean comes back through each kernel's response to a constant image.
        bias = means[:, None, None] * kernel.sum(dim=1)[None, :, None]
        return torch.cat([kernel.expand(len(means), -1, -1), bias], dim=2)

    return window_map(x, upsample, BLOCK * BLOCK, affine)


def bdct_explicit(x: Tensor, upsample: int = 8) -> Tensor:
    """The literal recipe (upsample, cut 8x8 blocks, 2-D DCT each): the oracle for `bdct`."""
    check_images(x)
    stride = check_upsample(upsample)
    _check_divisible(x.shape[-2:], stride)
    n, _, h, w = x.shape
    up = F.interpolate(x, scale_factor=upsample, mode="bilinear", align_corners=False)
    bh, bw = h * upsample // BLOCK, w * upsample // BLOCK
    blocks = up.reshape(n, bh, BLOCK, bw, BLOCK).permute(0, 1, 3, 2, 4)
    d = dct_matrix(dtype=x.dtype).to(x.device)
    coeffs = d @ blocks @ d.T  # [n, bh, bw, 8, 8]
    return coeffs.permute(0, 3, 4, 1, 2).reshape(n, BLOCK * BLOCK, bh, bw)


def ibdct(coeffs: Tensor, upsample: int = 8) -> Tensor:
    """Inverse of `bdct`: [N, 64, h, w] -> [N, 1, h*8/u, w*8/u].

    Inverse block DCT gives the upsampled image exactly; bilinear upsampling is injective, so its
    least-squares left inverse (pseudo-inverse, per axis) recovers the original image. For
    coefficients not produced by `bdct` (masked or mixed ones) it is the least-squares fit.
    """
    check_images(coeffs, "coefficients", channels=BLOCK * BLOCK)
    stride = check_upsample(upsample)
    n, _, bh, bw = coeffs.shape
    work = coeffs.float() if coeffs.dtype not in (torch.float32, torch.float64) else coeffs
    d = dct_matrix(dtype=work.dtype).to(work.device)
    blocks = work.reshape(n, BLOCK, BLOCK, bh, bw).permute(0, 3, 4, 1, 2)
    up = (d.T @ blocks @ d).permute(0, 1, 3, 2, 4).reshape(n, 1, bh * BLOCK, bw * BLOCK)
    rows = _upsample_pinv(bh * stride, upsample, work.device, work.dtype)
    cols = _upsample_pinv(bw * stride, upsample, work.device, work.dtype)
    return (rows @ up @ cols.T).to(coeffs.dtype)


@functools.lru_cache(maxsize=32)
def _upsample_pinv(size: int, upsample: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[size, size*u] left inverse of 1-D bilinear upsampling (align_corners=False)."""
    eye = torch.eye(size, dtype=torch.float64)[:, None, :]  # each basis vector as a 1-D signal
    up = F.interpolate(eye, scale_factor=upsample, mode="linear", align_corners=False)
    matrix = up[:, 0, :].T  # [size*u, size]
    return torch.linalg.pinv(matrix).to(device=device, dtype=dtype)


def _check_divisible(hw: torch.Size, stride: int) -> None:
    if hw[0] % stride or hw[1] % stride:
        raise ValueError(
            f"image size {tuple(hw)} must be divisible by 8/upsample = {stride} for the block DCT"
        )


def minmax(images: Tensor) -> Tensor:
    """Scale each image to [0, 1] (a constant image becomes 0)."""
    flat = images.flatten(1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).view_as(images)


def render_channels(masked: Tensor, channels: Tensor, upsample: int) -> Tensor:
    """Naive decoding of a subset of block-DCT channels: each into its slot in order, the rest
    (DC included) 0, inverse block DCT, then each image min-max scaled to [0, 1]."""
    n, _, h, w = masked.shape
    coeffs = masked.new_zeros(n, BLOCK * BLOCK, h, w)
    coeffs[:, channels.to(masked.device)] = masked
    return minmax(ibdct(coeffs, upsample))
