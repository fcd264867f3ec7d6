"""Stage A (Paella VQGAN): shapes, parity with diffusers' PaellaVQModel, quantizer, checkpoint keys."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cascade_studio.networks.stage_a import StageA
from cascade_studio.pipeline.demo import randomize_

TINY = {"levels": 2, "bottleneck_blocks": 1, "c_hidden": 64, "c_latent": 4, "codebook_size": 64}
SCALE = 0.43


def _tiny(seed: int = 0) -> StageA:
    return randomize_(StageA(**TINY), seed)


def _images(b: int = 2, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _latents(b: int = 2, size: int = 16, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, 4, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_close(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape
    diff = (ours - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert diff <= 1e-5 * scale, f"max abs diff {diff:.3g} (reference scale {scale:.3g})"
    return diff


@torch.no_grad()
def test_tiny_shapes_roundtrip():
    model = _tiny()
    x = _images()
    z, latent, indices, loss = model.encode(x)
    assert z.shape == (2, 4, 16, 16)
    assert latent is None and indices is None and loss is None
    y = model.decode(z)
    assert y.shape == (2, 3, 64, 64)
    assert torch.isfinite(y).all()
    assert model.scale_factor == SCALE
    y2, loss2 = model(x)
    assert loss2 is None
    torch.testing.assert_close(y2, y, rtol=0, atol=0)


@torch.no_grad()
def test_decode_matches_diffusers():
    from tests.support.diffusers_vqgan import to_diffusers_paella

    model = _tiny(seed=3)
    theirs = to_diffusers_paella(model).eval()
    assert theirs.config.scale_factor == SCALE
    z = _latents()
    ref = theirs.decode(z * SCALE, force_not_quantize=True).sample
    _assert_close(model.decode(z), ref)


@torch.no_grad()
def test_encode_matches_diffusers():
    from tests.support.diffusers_vqgan import to_diffusers_paella

    model = _tiny(seed=4)
    theirs = to_diffusers_paella(model).eval()
    x = _images() * 2 - 1
    ref = theirs.encode(x).latents / SCALE
    _assert_close(model.encode(x)[0], ref)


@torch.no_grad()
def test_quantize_snaps_to_nearest_codebook_entry():
    from tests.support.diffusers_vqgan import to_diffusers_paella

    model = _tiny(seed=5)
    x = _images(seed=6)
    plain = model.encode(x)[0]
    # randomize_ leaves the BatchNorm output small compared with the codebook (every latent would
    # snap to one entry); spread the codebook over the latents' actual distribution instead
    h = (plain * SCALE).permute(0, 2, 3, 1).reshape(-1, 4)
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(7))
    model.vquantizer.codebook.weight.copy_(noise * h.std(0) + h.mean(0))
    q, latent, indices, loss = model.encode(x, quantize=True)
    assert loss is None
    assert indices.shape == (2, 16, 16) and indices.dtype == torch.long
    torch.testing.assert_close(latent, plain, rtol=0, atol=0)

    # brute-force nearest neighbour in float64
    codebook = model.vquantizer.codebook.weight
    flat = (latent * SCALE).permute(0, 2, 3, 1).reshape(-1, 4).double()
    dist = (flat[:, None, :] - codebook.double()[None, :, :]).pow(2).sum(-1)
    expected = dist.argmin(dim=1).view(2, 16, 16)
    assert torch.equal(indices, expected)
    assert indices.unique().numel() > 16

    # the quantized latents are exactly the (scaled) codebook rows, and differ from the raw latents
    rows = codebook[indices].permute(0, 3, 1, 2)
    torch.testing.assert_close(q * SCALE, rows, rtol=0, atol=1e-7)
    assert (q - plain).abs().max() > 1e-3

    # diffusers' own quantizer (torch.cdist) agrees on the decoded result
    theirs = to_diffusers_paella(model).eval()
    ref = theirs.decode(theirs.encode(x).latents, force_not_quantize=False).sample
    _assert_close(model.decode(q), ref)


@torch.no_grad()
@pytest.mark.parametrize("shape", [(1, 4, 16, 16), (2, 4, 13, 21), (1, 4, 1, 7)])
@pytest.mark.parametrize("tile_pixels", [1, 40, 300])
def test_strip_decode_equals_plain_decode(shape, tile_pixels):
    # Strips of one row, odd heights, strips ending exactly at the bottom, batch 2: all the plain decode.
    model = randomize_(StageA(levels=2, bottleneck_blocks=3, c_hidden=32, codebook_size=16), 5)
    z = torch.randn(*shape, generator=torch.Generator().manual_seed(6))
    plain = model.decode(z)
    strips = model.decode(z, tile_pixels=tile_pixels)
    assert strips.shape == plain.shape
    _assert_close(strips, plain)


class _LargestOutput(TorchDispatchMode):
    """Records the element count of the largest tensor any aten op produces, and how many new tensors of at least
    ``big`` elements were made (outputs that are views of an input, or an op's in-place result, are not new)."""

    largest = 0

    def __init__(self, big: int = 0):
        super().__init__()
        self.big, self.made_big = big, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if self.big and t.numel() >= self.big and t.untyped_storage().data_ptr() not in inputs:
                    self.made_big += 1
        return out


@torch.no_grad()
def test_strip_decode_bounds_memory_to_strips():
    # The plain decode materialises the MLP's 4x wider hidden map (H*W*4C at level 0, twice that at level 1); in
    # strips the largest tensor is a full feature map of the upsampled level, 2*H*W*C elements.
    c, size = 32, 32
    model = randomize_(StageA(levels=2, bottleneck_blocks=2, c_hidden=c, codebook_size=16), 7)
    z = torch.randn(1, 4, size, size)
    level_0 = 2 * size * size * c  # the up-sampled level's map: (2H, 2W, C/2)
    plain, strips = _LargestOutput(), _LargestOutput(big=level_0)
    with plain:
        model.decode(z)
    with strips:
        model.decode(z, tile_pixels=128)
    assert plain.largest >= 8 * size * size * c
    assert strips.largest <= level_0
    # one map of that size is made (by the up-sampling), and the residual blocks then work on it in place
    assert strips.made_big == 1


def test_strip_decode_rejects_a_nonpositive_tile():
    with pytest.raises(ValueError, match="tile_pixels"):
        _tiny().decode(torch.zeros(1, 4, 4, 4), tile_pixels=0)


@torch.no_grad()
def test_strip_decode_runs_in_the_latents_dtype():
    # float32 weights, bfloat16 latents (the GPU path): computed in bfloat16, close to the float32 decode.
    model = randomize_(StageA(levels=2, bottleneck_blocks=2, c_hidden=32, codebook_size=16), 8)
    z = torch.randn(1, 4, 12, 12, generator=torch.Generator().manual_seed(9))
    plain = model.decode(z)
    low = model.decode(z.bfloat16(), tile_pixels=48)
    assert low.dtype == torch.bfloat16
    assert (low.float() - plain).abs().max() <= 0.05 * plain.abs().max()
