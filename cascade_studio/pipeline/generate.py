"""One generation, Stage C → Stage B → Stage A, as the reference notebooks run it.

:class:`Pipeline` owns loaded networks and turns a :class:`GenerationRequest` into images. It
reports every step through a callback (with a Previewer image for Stage C steps) and checks a
cancel callable between steps; a cancelled run raises :class:`Cancelled` and returns nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import effnet_input_size, snap_size, stage_b_latent_size, stage_c_latent_size
from ..core.request import GenerationRequest
from ..networks.effnet import imagenet_normalize
from .graphs import maybe_graphed
from .models import ModelSet
from .sampling import SeededNoise, diffuse, sample


class Cancelled(Exception):
    """The caller asked to stop; nothing was produced."""


@dataclass(frozen=True)
class ProgressEvent:
    """One finished sampling step. ``preview`` is a small RGB uint8 array (H, W, 3) of the first
    image for Stage C steps when previews are due, else ``None``."""

    stage: str  # "c", "b" or "a"
    step: int  # 1-based
    total: int
    preview: np.ndarray | None = None


@dataclass(frozen=True)
class GeneratedImage:
    pixels: np.ndarray  # (H, W, 3) uint8
    request: GenerationRequest  # batch size 1 and this image's seed: regenerates exactly this image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] → (B, H, W, 3) uint8 (clamped, rounded)."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Pipeline:
    """Runs requests on a :class:`ModelSet`. Not thread-safe: one thread (the GPU worker or the
    command line) owns a pipeline and runs one request at a time."""

    def __init__(self, models: ModelSet, *, preview_every: int = 1, cuda_graphs: bool = True):
        self.models = models
        self.preview_every = preview_every
        # On CUDA, each stage's network call is captured once and replayed (pipeline/graphs.py).
        self.cuda_graphs = cuda_graphs

    @property
    def device(self) -> torch.device:
        return self.models.device

    @torch.inference_mode()
    def run(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        source_image: torch.Tensor | None = None,
    ) -> list[GeneratedImage]:
        """Generate ``request.batch_size`` images. ``source_image`` ((3, H, W) float in [0, 1]) is
        required for the variation and image-to-image modes."""
        request.validate()
        width, height, _ = snap_size(request.width, request.height)
        batch = request.batch_size
        report = on_progress or (lambda event: None)
        # Nobody to show them to (or switched off with preview_every=0): skip the Previewer.
        previews = on_progress is not None and self.preview_every > 0
        cancel = should_cancel or (lambda: False)
        m = self.models
        dtype = m.dtype

        with m.using("text_encoder") as (text_encoder,):
            (text_c, text_u), (pooled_c, pooled_u) = (
                t.chunk(2) for t in text_encoder.encode([request.prompt, request.negative_prompt])
            )
        text_c, text_u = text_c.to(dtype).expand(batch, -1, -1), text_u.to(dtype).expand(batch, -1, -1)
        pooled_c, pooled_u = pooled_c.to(dtype).expand(batch, -1, -1), pooled_u.to(dtype).expand(batch, -1, -1)
        img_c = torch.zeros(batch, 1, m.c_clip_img, device=self.device, dtype=dtype)
        if request.mode == "variation":
            with m.using("image_encoder") as (image_encoder,):
                img_c = image_encoder.encode(self._source(source_image)).to(dtype).expand(batch, -1, -1)

        seeds = request.image_seeds()
        hc, wc = stage_c_latent_size(width, height)
        noise_c = SeededNoise(seeds, (16, hc, wc), device=self.device)
        x_init = noise_c.initial()
        steps_c, t_start = request.stage_c.steps, 1.0
        if request.mode == "img2img":
            ew, eh = effnet_input_size(width, height)
            src = F.interpolate(self._source(source_image), size=(eh, ew), mode="bilinear", antialias=True)
            with m.using("effnet") as (effnet,):
                latent = effnet(imagenet_normalize(src)).expand(batch, -1, -1, -1)
            t_start = request.strength
            steps_c = max(1, int(request.stage_c.steps * request.strength))
            x_init = diffuse(latent, t_start, x_init, shift=1.0)

        latent_c = self._sample(
            "c",
            {"clip_text": text_c, "clip_text_pooled": pooled_c, "clip_img": img_c},
            {"clip_text": text_u, "clip_text_pooled": pooled_u, "clip_img": torch.zeros_like(img_c)},
            x_init,
            steps=steps_c,
            t_start=t_start,
            settings=request.stage_c,
            sampler=request.sampler,
            noise=noise_c,
            report=report,
            cancel=cancel,
            previews=previews,
        )

        hb, wb = stage_b_latent_size(width, height)
        noise_b = SeededNoise(seeds, (4, hb, wb), device=self.device)
        effnet = latent_c.to(dtype)
        latent_b = self._sample(
            "b",
            {"effnet": effnet, "clip": pooled_c},
            {"effnet": torch.zeros_like(effnet), "clip": pooled_u},
            noise_b.initial(),
            steps=request.stage_b.steps,
            t_start=1.0,
            settings=request.stage_b,
            sampler=request.sampler,
            noise=noise_b,
            report=report,
            cancel=cancel,
            previews=previews,
        )

        with m.using("stage_a") as (stage_a,):
            # One image at a time: a float32 decode of a batch at 1024² would hold several GiB of activations.
            pixels = np.concatenate([to_uint8(stage_a.decode(latent_b[i : i + 1].float())) for i in range(batch)])
        report(ProgressEvent("a", 1, 1))
        return [GeneratedImage(pixels[i], request.for_image(i)) for i in range(batch)]

    def _source(self, image: torch.Tensor | None) -> torch.Tensor:
        if image is None:
            raise ValueError("this mode needs a source image")
        return image.to(self.device, torch.float32).unsqueeze(0)

    def _sample(
        self, stage, cond, uncond, x_init, *, steps, t_start, settings, sampler, noise, report, cancel, previews
    ):
        """Run Stage C (``stage="c"``, with a Previewer image per step) or Stage B; returns the last x0."""
        roles = ("stage_c", "previewer") if stage == "c" and previews else (f"stage_{stage}",)
        with self.models.using(*roles) as networks:
            network, previewer = networks[0], (networks[1] if len(networks) > 1 else None)
            return self._steps(
                stage,
                network,
                previewer,
                cond,
                uncond,
                x_init,
                steps,
                t_start,
                settings,
                sampler,
                noise,
                report,
                cancel,
            )

    def _steps(self, stage, network, previewer, cond, uncond, x_init, steps, t_start, settings, sampler, noise,
               report, cancel):  # fmt: skip
        dtype = self.models.dtype
        # cfg 1 equals no guidance (the rescale then leaves ε unchanged): skip the unconditional half.
        guided = settings.cfg != 1
        inputs = {k: torch.cat([cond[k], uncond[k]]) for k in cond} if guided else cond

        def forward(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return network(x, r, **inputs)

        # Measured on an H200 (docs/benchmarks.md): graphs halve the time of batch-1 steps, which are launch-bound,
        # and leave Stage C at batch 4 unchanged, but made Stage B at batch 4 about 8 % slower.
        use_graphs = self.cuda_graphs and (stage == "c" or x_init.shape[0] == 1)
        graphed = maybe_graphed(forward, self.device, use_graphs)

        def predict(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return graphed(x.to(dtype), r)  # r stays float32 for the sinusoidal embedding

        x0 = None
        for step in sample(
            predict,
            x_init,
            steps=steps,
            cfg=settings.cfg if guided else None,
            shift=settings.shift,
            t_start=t_start,
            sampler=sampler,
            rescale="image",
            noise=noise,
        ):
            x0 = step.x0
            done = step.index + 1
            shown = None
            if previewer is not None and (done % self.preview_every == 0 or done == step.total):
                shown = to_uint8(previewer(x0[:1].float()))[0]
            report(ProgressEvent(stage, done, step.total, shown))
            if cancel():
                raise Cancelled()
        return x0
