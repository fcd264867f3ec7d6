"""Stage A, the "Paella" VQGAN mapping images to and from 4-channel latents (``modules/stage_a.py``).

Parameter names match the official ``stage_a.safetensors`` exactly (the codebook lives at
``vquantizer.codebook.weight``). The module is inference-oriented: the quantizer is only used by
``encode(x, quantize=True)``, and training-only values (the VQ / commitment loss) are not computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .linear import linear, linear_add_


class StageAResBlock(nn.Module):
    """Stage A's residual block: channel LayerNorm *before* a replication-padded depthwise conv.

    ``x += depthwise(LN(x) * (1 + g0) + g1) * g2`` then ``x += mlp(LN(x) * (1 + g3) + g4) * g5``,
    where the six ``g`` are the learnable scalars ``gammas`` and the LayerNorms have no affine
    parameters (eps 1e-6). This differs from the Stage B/C ResBlock, which normalises after its conv.
    """

    def __init__(self, c: int, c_hidden: int):
        super().__init__()
        self.eps = 1e-6
        self.depthwise = nn.Sequential(
            nn.ReplicationPad2d(1),
            nn.Conv2d(c, c, kernel_size=3, groups=c),
        )
        self.channelwise = nn.Sequential(
            nn.Linear(c, c_hidden),
            nn.GELU(),
            nn.Linear(c_hidden, c),
        )
        self.gammas = nn.Parameter(torch.zeros(6))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def _norm_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        """Channel LayerNorm of an NCHW tensor, returned as a channels-last (B, H, W, C) view."""
        h = x.permute(0, 2, 3, 1)
        return F.layer_norm(h, h.shape[-1:], eps=self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.gammas
        h = self._norm_nhwc(x) * (1 + g[0]) + g[1]
        x = x + self.depthwise(h.permute(0, 3, 1, 2)) * g[2]
        h = self._norm_nhwc(x) * (1 + g[3]) + g[4]
        return x + self.channelwise(h).permute(0, 3, 1, 2) * g[5]

    def folded(self) -> tuple[torch.Tensor, ...]:
        """The block's parameters with the six scalars folded in (for :meth:`forward_strips`): LayerNorm weights and
        biases ``1 + g0, g1`` and ``1 + g3, g4``, the depthwise conv scaled by ``g2``, the MLP's output layer by
        ``g5``."""
        g = self.gammas
        conv, first, last = self.depthwise[1], self.channelwise[0], self.channelwise[2]
        ones = torch.ones(conv.in_channels, dtype=g.dtype, device=g.device)
        return (
            ones * (1 + g[0]), ones * g[1], conv.weight * g[2], conv.bias * g[2],
            ones * (1 + g[3]), ones * g[4], first.weight, first.bias, last.weight * g[5], last.bias * g[5],
        )  # fmt: skip

    def forward_strips(self, x: torch.Tensor, rows: int, folded: tuple[torch.Tensor, ...]) -> None:
        """``forward`` on one channels-last image ``x`` (H, W, C), in place, ``rows`` rows at a time.

        Exact up to float rounding: the depthwise 3×3 conv reads one halo row above and below each strip (the
        replication pad applies only at the image's own edges) and everything else acts on single pixels. The row
        above a strip has been overwritten by the strip before, so a copy of it as it was is kept; the row below
        is still the input. Each strip's temporaries are strip-sized; the residual adds go straight into ``x``, the
        second one inside the MLP's last matrix product.
        """
        w0, b0, conv_w, conv_b, w3, b3, w_in, b_in, w_out, b_out = folded
        height, channels = x.shape[0], x.shape[2]
        above: torch.Tensor | None = None  # the input row above this strip, as it was
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            h = F.layer_norm(x[r0 : min(height, r1 + 1)], (channels,), w0, b0, self.eps)
            # rows r0 - 1 … r1, the replication pad's own rows at the image's top and bottom
            top = h[:1] if above is None else F.layer_norm(above, (channels,), w0, b0, self.eps)[None]
            h = torch.cat([top, h] + [h[-1:]] * (r1 == height))
            h = torch.cat([h[:, :1], h, h[:, -1:]], dim=1)  # … and columns
            # As a channels-last NCHW view, so that the convolution reads and writes channels-last (NCHW input,
            # pad and output, then a strided residual add took 5x as long at 384 channels on the CPU).
            d = F.conv2d(h[None].permute(0, 3, 1, 2), conv_w, conv_b, groups=channels)[0].permute(1, 2, 0)
            above = x[r1 - 1].clone()
            y = x[r0:r1]
            y += d
            hidden = linear(F.layer_norm(y, (channels,), w3, b3, self.eps), w_in, b_in, gelu=True)
            linear_add_(hidden, w_out, b_out, y)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup (torchtools' ``VectorQuantize`` parameter layout).

    Only the forward lookup is implemented: the returned vectors are exact codebook rows, with no
    straight-through gradient and no EMA codebook updates (both are training-only).
    """

    def __init__(self, embedding_size: int, k: int):
        super().__init__()
        # Passing the weight skips Embedding's normal_ init, which on the meta device imports sympy (~1 s).
        self.codebook = nn.Embedding(k, embedding_size, _weight=torch.empty(k, embedding_size))
        nn.init.uniform_(self.codebook.weight, -1.0 / k, 1.0 / k)

    def indices(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook row for each row of ``flat`` (N, C), by squared L2 distance."""
        codebook = self.codebook.weight
        dist = torch.addmm(
            codebook.pow(2).sum(dim=1) + flat.pow(2).sum(dim=1, keepdim=True),
            flat,
            codebook.t(),
            alpha=-2.0,
        )
        return dist.argmin(dim=1)

    def forward(self, x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantise ``x`` along ``dim``; returns (quantised tensor shaped like ``x``, indices).

        ``indices`` has the shape of ``x`` without ``dim`` (e.g. (B, H, W) for NCHW input, dim=1).
        """
        x = x.movedim(dim, -1)
        with torch.no_grad():
            idx = self.indices(x.reshape(-1, x.shape[-1]))
        q = self.codebook(idx).view(x.shape).movedim(-1, dim)
        return q, idx.view(x.shape[:-1])


class StageA(nn.Module):
    """Stage A VQGAN. ``encode`` maps (B, 3, H, W) images to (B, c_latent, H/4, W/4) latents
    divided by ``scale_factor``; ``decode`` multiplies by it and maps latents back to images
    (unclamped; callers clamp to [0, 1])."""

    def __init__(
        self,
        levels: int = 2,
        bottleneck_blocks: int = 12,
        c_hidden: int = 384,
        c_latent: int = 4,
        codebook_size: int = 8192,
        scale_factor: float = 0.43,
    ):
        super().__init__()
        self.levels = levels
        self.bottleneck_blocks = bottleneck_blocks
        self.c_hidden = c_hidden
        self.c_latent = c_latent
        self.codebook_size = codebook_size
        self.scale_factor = scale_factor
        c_levels = [c_hidden // (2**i) for i in reversed(range(levels))]

        self.in_block = nn.Sequential(
            nn.PixelUnshuffle(2),
            nn.Conv2d(3 * 4, c_levels[0], kernel_size=1),
        )
        down: list[nn.Module] = []
        for i, c in enumerate(c_levels):
            if i > 0:
                down.append(nn.Conv2d(c_levels[i - 1], c, kernel_size=4, stride=2, padding=1))
            down.append(StageAResBlock(c, c * 4))
        down.append(
            nn.Sequential(
                nn.Conv2d(c_levels[-1], c_latent, kernel_size=1, bias=False),
                nn.BatchNorm2d(c_latent),
            )
        )
        self.down_blocks = nn.Sequential(*down)

        self.vquantizer = VectorQuantizer(c_latent, k=codebook_size)

        up: list[nn.Module] = [nn.Sequential(nn.Conv2d(c_latent, c_levels[-1], kernel_size=1))]
        for i in range(levels):
            c = c_levels[levels - 1 - i]
            for _ in range(bottleneck_blocks if i == 0 else 1):
                up.append(StageAResBlock(c, c * 4))
            if i < levels - 1:
                up.append(nn.ConvTranspose2d(c, c_levels[levels - 2 - i], kernel_size=4, stride=2, padding=1))
        self.up_blocks = nn.Sequential(*up)
        self.out_block = nn.Sequential(
            nn.Conv2d(c_levels[0], 3 * 4, kernel_size=1),
            nn.PixelShuffle(2),
        )

    def encode(
        self, x: torch.Tensor, quantize: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, None]:
        """Encode images; returns the reference's 4-tuple ``(z, latent, indices, loss)``.

        * ``quantize=False`` (inference, and Stage B training targets): ``(h / scale, None, None, None)``
          where ``h`` is the BatchNorm output.
        * ``quantize=True``: ``(codebook[indices] / scale, h / scale, indices, None)`` with indices of
          shape (B, H/4, W/4). The reference returns ``vq_loss + 0.25 * commit_loss`` as the last item;
          that loss is training-only and is not computed here (always ``None``).
        """
        h = self.down_blocks(self.in_block(x))
        if quantize:
            q, indices = self.vquantizer(h, dim=1)
            return q / self.scale_factor, h / self.scale_factor, indices, None
        return h / self.scale_factor, None, None, None

    def decode(self, x: torch.Tensor, *, tile_pixels: int | None = None) -> torch.Tensor:
        """Decode latents (as produced by Stage B / ``encode``) into unclamped images.

        ``tile_pixels`` decodes in horizontal strips of about that many pixels per layer (see
        :meth:`_decode_in_strips`): the same result, with peak memory bounded by two full-size feature maps.
        """
        if tile_pixels is not None:
            if tile_pixels < 1:
                raise ValueError(f"tile_pixels must be positive (got {tile_pixels})")
            return torch.stack([self._decode_in_strips(z, tile_pixels) for z in x])
        x = self.up_blocks(x * self.scale_factor)
        return self.out_block(x)

    def _decode_in_strips(self, z: torch.Tensor, tile_pixels: int) -> torch.Tensor:
        """One latent (C, H, W) decoded layer by layer, each layer over row strips of about ``tile_pixels`` pixels,
        in channels-last (H, W, C) layout so that every strip is one contiguous block of memory.

        Unlike overlapping image tiles this needs no seam blending and no wide halo (the receptive field of the
        whole decoder is ~14 latent pixels): each layer's strip reads at most one extra row either side of its
        input, so the output equals the plain decode up to float rounding. Residual blocks update their one
        full-size map in place; the MLP's 4× wider hidden activations exist only per strip.
        """
        dtype = z.dtype  # computed in the latent's dtype (bfloat16 on a GPU), whatever the weights are stored in

        def cast(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(t.to(dtype) for t in tensors)

        first = self.up_blocks[0][0]
        x = linear(z.permute(1, 2, 0) * self.scale_factor, *cast(first.weight[:, :, 0, 0], first.bias))
        for layer in list(self.up_blocks)[1:]:
            rows = max(1, tile_pixels // x.shape[1])
            if isinstance(layer, StageAResBlock):
                layer.forward_strips(x, rows, cast(*layer.folded()))
            elif isinstance(layer, nn.ConvTranspose2d):
                x = _conv_transpose_strips(layer, x, rows, *cast(layer.weight, layer.bias))
            else:
                raise TypeError(f"no strip-wise decode for {type(layer).__name__}")
        last = self.out_block[0]
        pixels = linear(x, *cast(last.weight[:, :, 0, 0], last.bias))  # (H, W, 12); PixelShuffle(2) below
        height, width = pixels.shape[:2]
        return pixels.view(height, width, 3, 2, 2).permute(2, 0, 3, 1, 4).reshape(3, 2 * height, 2 * width)

    def forward(self, x: torch.Tensor, quantize: bool = False) -> tuple[torch.Tensor, None]:
        """Reconstruct ``x``; returns (images, loss) with the training-only loss always ``None``."""
        z = self.encode(x, quantize)[0]
        return self.decode(z), None


def _conv_transpose_strips(
    layer: nn.ConvTranspose2d, x: torch.Tensor, rows: int, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``layer`` (Stage A's 4×4 / stride 2 / padding 1 up-sampling) on one channels-last image (H, W, C), ``rows``
    input rows at a time; returns (2H, 2W, C_out).

    Output rows 2·r0 … 2·r1 − 1 depend on input rows r0 − 1 … r1, so each strip is computed with one halo row
    either side and the output rows the halo contributes to only partially are cut off.
    """
    if (layer.kernel_size, layer.stride, layer.padding, layer.output_padding) != ((4, 4), (2, 2), (1, 1), (0, 0)):
        raise ValueError("strip-wise ConvTranspose2d expects kernel 4, stride 2, padding 1")
    height, width = x.shape[:2]
    out = x.new_empty(2 * height, 2 * width, layer.out_channels)
    # Channels-last input, weight and so output: the NCHW route cost 1.5x as long on the CPU, plus a strided copy.
    weight = weight.contiguous(memory_format=torch.channels_last)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        a0, a1 = max(0, r0 - 1), min(height, r1 + 1)
        y = F.conv_transpose2d(x[a0:a1][None].permute(0, 3, 1, 2), weight, bias, stride=2, padding=1)
        y = y[0].permute(1, 2, 0)
        out[2 * r0 : 2 * r1] = y[2 * (r0 - a0) : 2 * (r1 - a0)]
    return out
