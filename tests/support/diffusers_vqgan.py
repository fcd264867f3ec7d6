"""Build diffusers' ``PaellaVQModel`` carrying the same weights as one of our ``StageA`` modules.

diffusers is a test / benchmark oracle only; the application never imports it. The module tree
is identical except for the codebook: ours (like the reference) is ``vquantizer.codebook.weight``,
diffusers' is ``vquantizer.embedding.weight``. Scale factor conventions differ too: diffusers'
``encode(x).latents`` is *not* divided by the scale factor and ``decode(h)`` does *not* multiply by
it, so compare ``ours.decode(z)`` with ``theirs.decode(z * s, force_not_quantize=True).sample`` and
``ours.encode(x)[0]`` with ``theirs.encode(x).latents / s``.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.deprecated.wuerstchen.modeling_paella_vq_model import PaellaVQModel

from cascade_studio.networks.stage_a import StageA

_RENAMES = {"vquantizer.codebook.weight": "vquantizer.embedding.weight"}


def paella_kwargs(model: StageA) -> dict:
    """PaellaVQModel constructor kwargs equivalent to ``model``'s configuration."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "up_down_scale_factor": 2,
        "levels": model.levels,
        "bottleneck_blocks": model.bottleneck_blocks,
        "embed_dim": model.c_hidden,
        "latent_channels": model.c_latent,
        "num_vq_embeddings": model.codebook_size,
        "scale_factor": model.scale_factor,
    }


def to_diffusers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our (reference) Stage A keys to diffusers' PaellaVQModel keys."""
    return {_RENAMES.get(k, k): v for k, v in state_dict.items()}


@torch.no_grad()
def to_diffusers_paella(model: StageA) -> PaellaVQModel:
    """A PaellaVQModel (same device / dtype / train-eval mode) holding exactly ``model``'s weights."""
    ref = next(model.parameters())
    theirs = PaellaVQModel(**paella_kwargs(model))
    missing, unexpected = theirs.load_state_dict(to_diffusers_state_dict(model.state_dict()), strict=True)
    assert not missing and not unexpected, (missing, unexpected)
    if ref.dtype != torch.float32 or ref.device.type != "cpu":
        # (diffusers logs a spurious warning on any dtype cast, so only cast when needed)
        theirs.to(device=ref.device, dtype=ref.dtype)
    return theirs.train(model.training)
