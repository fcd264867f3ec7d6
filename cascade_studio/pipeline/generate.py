"""One generation, Stage C → Stage B → Stage A, as the reference notebooks run it.

:class:`Pipeline` owns loaded networks and turns a :class:`GenerationRequest` into images. It
reports every step through a callback (with a Previewer image for Stage C steps) and checks a
cancel callable between steps; a cancelled run raises :class:`Cancelled` and returns nothing.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.geometry import effnet_input_size, snap_size, stage_b_latent_size, stage_c_latent_size
from ..core.inpaint import InputError, prepare_mask_job, repaint_area
from ..core.lora_info import STAGE_C_VARIANTS
from ..core.request import MASK_MODES, STRENGTH_MODES, GenerationRequest, LoraUse, split_lora_tags
from ..networks import kernels, linear
from ..networks.effnet import imagenet_normalize
from ..networks.lora import apply_loras
from . import heap
from .control import (
    CONTROLNET_ROLES,
    MODE_CONTROLNET,
    SR_SCALE,
    canny_edges,
    controlnet_misfit,
    inpaint_control,
    latent_mask,
    resize_image,
)
from .device import cpu_has_native_bf16
from .graphs import GraphedStep, StepCache, flatten, unflatten, weights_signature
from .lora import LoraCache, LoraError, LoraFile, find_lora, token_overrides
from .models import MissingWeights, ModelSet
from .sampling import SeededNoise, diffuse, sample


class Cancelled(Exception):
    """The caller asked to stop; nothing was produced."""


@dataclass(frozen=True)
class ProgressEvent:
    """One finished sampling step. ``preview`` is a small RGB uint8 array (H, W, 3) of the first
    image for Stage C steps when previews are due, else ``None``. An event with step 0 carries a
    ``note`` instead: the stage is about to start and says why its first step may take long (a
    torch.compile compilation)."""

    stage: str  # "c", "b" or "a"
    step: int  # 1-based; 0 for a note
    total: int
    preview: np.ndarray | None = None
    note: str | None = None


@dataclass(frozen=True)
class GeneratedImage:
    """``request`` has batch size 1, this image's seed and the method actually used (never "auto" for the
    ControlNet modes): it regenerates exactly this image. For inpaint the pixels have the source image's size,
    for outpaint the extended canvas's, composited so that pixels outside mask + band are the source's."""

    pixels: np.ndarray  # (H, W, 3) uint8
    request: GenerationRequest


_MODE_WORDS = {
    "inpaint": "inpainting",
    "outpaint": "outpainting",
    "canny": "canny-guided generation",
    "upscale": "2× super-resolution",
}


@dataclass(frozen=True)
class Plan:
    """How a request will run. ``method`` is None for text/variation/img2img, else "controlnet" or
    "latent_blend"; ``note`` is a sentence for the UI ("inpainting by latent blending (…)"), empty for plain
    modes; ``controlnet`` is the ModelSet role of the ControlNet used, if any."""

    method: str | None
    note: str = ""
    controlnet: str | None = None


#: Pixels per strip of the strip-wise Stage A decode (networks/stage_a.py), per device type. On the CPU, strips small
#: enough that the MLP's hidden activations (4096 × 1536 float32, 24 MiB) stay below glibc's mmap threshold are reused
#: from the heap instead of being faulted in afresh for every layer; on a GPU a 1024² image is one strip and 2048²
#: four, so big images decode in a bounded amount of memory.
STAGE_A_TILE_PIXELS = {"cpu": 4096, "cuda": 1 << 18}


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] → (B, H, W, 3) uint8 (clamped, rounded)."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _stage_c_named(widths: frozenset[int]) -> str:
    """ "2048 wide (Stage C full)" for a set of attention widths."""
    variant = STAGE_C_VARIANTS.get(next(iter(widths))) if len(widths) == 1 else None
    return f"{' / '.join(map(str, sorted(widths)))} wide" + (f" (Stage C {variant})" if variant else "")


class Pipeline:
    """Runs requests on a :class:`ModelSet`. Not thread-safe: one thread (the GPU worker or the
    command line) owns a pipeline and runs one request at a time."""

    def __init__(self, models: ModelSet, *, preview_every: int = 1, cuda_graphs: bool = True, compile: bool = False):
        self.models = models
        self.preview_every = preview_every
        # On CUDA, each stage's network call is captured once and replayed (pipeline/graphs.py); the graphs are kept
        # for the next job of the same size. At batch 1 a step is launch-bound and graphs halve its time; at batch 4
        # (an H100, docs/benchmarks.md) graphed forwards took 0.96x (Stage C) and 0.89x (Stage B) the eager time.
        self.cuda_graphs = cuda_graphs
        self.graphs = StepCache()
        # torch.compile for Stage C and Stage B: the first image at each size (and LoRA set) waits for the
        # compilation, later ones run fused kernels (docs/benchmarks.md).
        self.compile = compile
        self._compiled_for: set[tuple] = set()  # (stage, network, input shape, guided, LoRAs) compiled so far
        self.lora_cache = LoraCache()
        self._cpu_previewer: tuple | None = None  # (the loaded Previewer, weakly; its fast copy)

    @property
    def device(self) -> torch.device:
        return self.models.device

    def loras(self, request: GenerationRequest) -> list[tuple[LoraFile, LoraUse]]:
        """The request's LoRA files (its ``loras`` then its prompt tags) with their uses (weights), read and checked
        once (:class:`LoraCache`); raises :class:`LoraError` naming a missing or unfit file. A file made for a Stage C
        of another width is refused here, from the Stage C file's header, before any network is loaded."""
        loras = [(self.lora_cache.get(find_lora(use.name, self.models.folder)), use) for use in request.all_loras()]
        widths = self.models.stage_c_widths
        for lora, _ in loras:
            made = lora.stage_c_widths
            if made and widths and not made <= widths:
                raise LoraError(
                    f"LoRA {lora.path}: made for a Stage C {_stage_c_named(made)}, but this job's Stage C "
                    f"({self.models.path('stage_c').name}) is {_stage_c_named(widths)}; choose the matching model "
                    "(the Model box, or --variant) or another LoRA"
                )
        return loras

    def plan(self, request: GenerationRequest) -> Plan:
        """Resolve how ``request`` runs, reading only file headers. Inpaint/outpaint with method "auto" use the
        inpainting ControlNet when it is present and fits the Stage C (the full 3.6B one, for the released
        files), else latent blending. Raises :class:`MissingWeights` when a ControlNet the request needs is
        missing, :class:`InputError` (a ValueError) when it does not fit the Stage C."""
        role = MODE_CONTROLNET.get(request.mode)
        if role is None:
            return Plan(None)
        what = _MODE_WORDS[request.mode]
        file, _, label = CONTROLNET_ROLES[role]
        masked = request.mode in MASK_MODES
        if masked and request.method == "latent_blend":
            return Plan("latent_blend", f"{what} by latent blending (chosen in the request)")
        m = self.models
        path = m.path(role)
        misfit = controlnet_misfit(m._path("stage_c"), path) if path is not None else None
        if path is None or misfit is not None:
            if masked and request.method == "auto":
                why = f"no {label} in the weights folder" if path is None else f"the {label} does not fit this Stage C"
                return Plan("latent_blend", f"{what} by latent blending ({why})")
            if path is None:
                raise MissingWeights(
                    f"{what} needs the {label}: {file} is missing in the weights folder {m.folder}. Download it with "
                    "`cascade-studio download --variant controlnets` (it works with the full Stage C)."
                )
            raise InputError(
                f"{what} needs the {label}, which does not fit the {m.variant} Stage C ({misfit}); the released "
                "ControlNets fit only the full (3.6B) Stage C"
                + (": choose the full variant, or latent blending." if masked else ": choose the full variant.")
            )
        return Plan("controlnet", f"{what} through the {label}", role)

    def run(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        source_image: torch.Tensor | None = None,
        mask_image: np.ndarray | None = None,
        control_image: torch.Tensor | None = None,
    ) -> list[GeneratedImage]:
        """Generate ``request.batch_size`` images. ``source_image`` ((3, H, W) float in [0, 1]) is
        required for the variation, image-to-image, inpaint, outpaint and upscale modes; ``mask_image``
        ((H, W) uint8, 255 = repaint, the source's size) for inpaint (optional for outpaint);
        ``control_image`` ((3, H, W) float in [0, 1]) for canny. See :meth:`plan` for the method used."""
        # On the CPU, big activations are reused from the heap instead of page-faulted in afresh (pipeline/heap.py).
        with heap.kept_heap() if self.device.type == "cpu" else contextlib.nullcontext():
            return self._run(
                request,
                on_progress=on_progress,
                should_cancel=should_cancel,
                source_image=source_image,
                mask_image=mask_image,
                control_image=control_image,
            )

    def _between_stages(self) -> None:
        """On the CPU, hand the finished stage's free heap back (its blocks are kept during the stage, see
        pipeline/heap.py), so the next stage's peak is not stacked on them: 1024² peak RSS 2510–2550 → 2190 MiB
        together with Stage A's in-place strips."""
        if self.device.type == "cpu":
            heap.hand_back()

    @torch.inference_mode()
    def _run(
        self,
        request: GenerationRequest,
        *,
        on_progress: Callable[[ProgressEvent], None] | None,
        should_cancel: Callable[[], bool] | None,
        source_image: torch.Tensor | None,
        mask_image: np.ndarray | None,
        control_image: torch.Tensor | None,
    ) -> list[GeneratedImage]:
        request.validate()
        plan = self.plan(request)
        job = None
        if request.mode in MASK_MODES:
            canvas = to_uint8(self._source(source_image))[0]  # exact for images read from 8-bit files
            mask = None if mask_image is None else np.asarray(mask_image, dtype=np.uint8)
            job = prepare_mask_job(request, canvas, mask)
            width, height = job.size
        else:
            width, height, _ = snap_size(request.width, request.height)
        batch = request.batch_size
        report = on_progress or (lambda event: None)
        # Nobody to show them to (or switched off with preview_every=0): skip the Previewer.
        previews = on_progress is not None and self.preview_every > 0
        cancel = should_cancel or (lambda: False)
        m = self.models
        dtype = m.dtype
        # <lora:name:weight> tags are instructions, not text for CLIP; the files are read (and checked) up front.
        prompt, _ = split_lora_tags(request.prompt)
        loras = self.loras(request)

        with m.using("text_encoder") as (text_encoder,):
            # A reference LoRA's learned tokens and a kohya-layout LoRA's text-encoder part: for this encoding only
            # (the encoder's weights are not written). Both stages are conditioned on it, as in ComfyUI.
            tokens = token_overrides([f for f, _ in loras], text_encoder)
            with text_encoder.applying([(f.text_deltas(text_encoder), use.text) for f, use in loras]):
                (text_c, text_u), (pooled_c, pooled_u) = (
                    t.chunk(2) for t in text_encoder.encode([prompt, request.negative_prompt], tokens)
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
        ew, eh = effnet_input_size(width, height)
        control = blend = keep = latent = None
        if request.mode in STRENGTH_MODES:
            if job is not None:
                region = torch.from_numpy(np.ascontiguousarray(job.region_pixels)).permute(2, 0, 1)
                src = region.to(self.device, torch.float32).div(255).unsqueeze(0)
            else:
                src = self._source(source_image)
            src = resize_image(src, ew, eh)
            with m.using("effnet") as (effnet,):
                latent = effnet(imagenet_normalize(src)).expand(batch, -1, -1, -1)
            t_start = request.strength
            steps_c = max(1, int(request.stage_c.steps * request.strength))
            x_init = diffuse(latent, t_start, x_init, shift=1.0)
        if job is not None:
            repaint = torch.from_numpy(repaint_area(job.region_mask)).float()[None, None]
            if plan.method == "controlnet":
                control = inpaint_control(src, F.interpolate(repaint, size=(eh, ew), mode="nearest").to(self.device))
            else:
                keep = 1 - latent_mask(repaint, (hc, wc)).to(self.device)
                blend = self._latent_blend(latent, keep, noise_c.initial().float(), t_start, steps_c,
                                           request.stage_c.shift)  # fmt: skip
        elif request.mode == "canny":
            if control_image is None:
                raise InputError("canny mode needs a control image")
            control = canny_edges(resize_image(self._source(control_image), ew, eh)).to(self.device)
        elif request.mode == "upscale":
            low = resize_image(self._source(source_image), width // SR_SCALE, height // SR_SCALE)
            with m.using("effnet") as (effnet,):
                control = F.interpolate(effnet(imagenet_normalize(low)), scale_factor=SR_SCALE, mode="nearest")

        cond = {"clip_text": text_c, "clip_text_pooled": pooled_c, "clip_img": img_c}
        uncond = {"clip_text": text_u, "clip_text_pooled": pooled_u, "clip_img": torch.zeros_like(img_c)}
        if plan.controlnet is not None:
            with m.using(plan.controlnet) as (controlnet,):
                features = controlnet(control.to(dtype))
            # The reference gives both branches the same features, times cnet_multiplier.
            cnet = [
                None if f is None else (f * request.control_strength).expand(batch, -1, -1, -1).contiguous()
                for f in features
            ]
            cond["cnet"] = uncond["cnet"] = cnet

        latent_c = self._sample(
            "c",
            cond,
            uncond,
            x_init,
            steps=steps_c,
            t_start=t_start,
            settings=request.stage_c,
            sampler=request.sampler,
            noise=noise_c,
            report=report,
            cancel=cancel,
            previews=previews,
            blend=blend,
            loras=loras,
        )
        if keep is not None:  # the kept cells are the source's own latent in the result, too
            latent_c = latent_c * (1 - keep) + latent.float() * keep

        self._between_stages()
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

        self._between_stages()
        with m.using("stage_a") as (stage_a,):
            # One image at a time, in strips: a plain float32 decode at 1024² holds several GiB of activations.
            tile = STAGE_A_TILE_PIXELS.get(self.device.type, STAGE_A_TILE_PIXELS["cpu"])
            # Stage A decodes in the pipeline's precision, as the reference does under bf16 autocast: bfloat16
            # halves its time on a GPU and on a CPU with native bf16 (1024²: 7.5 s instead of 14.5 s on two Zen 4
            # cores), at most about one 8-bit level from float32. The float32 weights are cast per decode.
            pixels = np.concatenate(
                [
                    to_uint8(stage_a.decode(latent_b[i : i + 1].to(dtype), tile_pixels=tile).float())
                    for i in range(batch)
                ]
            )
        report(ProgressEvent("a", 1, 1))
        if job is not None:
            pixels = [job.paste(pixels[i], request.mask_feather) for i in range(batch)]
        done = request.with_(method=plan.method) if plan.method is not None else request
        return [GeneratedImage(pixels[i], done.for_image(i)) for i in range(batch)]

    @staticmethod
    def _latent_blend(latent, keep, noise, t_start, steps, shift):
        """The step hook of latent-blending inpainting: after step i the kept cells of x become the source latent
        re-noised (with the starting noise) to the time x has reached, on the sampling schedule."""
        times = torch.linspace(t_start, 0, steps + 1)
        source = latent.float()

        def blend(i: int, x: torch.Tensor) -> torch.Tensor:
            renoised = diffuse(source, float(times[i + 1]), noise, shift=shift)
            return x * (1 - keep) + renoised * keep

        return blend

    def _source(self, image: torch.Tensor | None) -> torch.Tensor:
        if image is None:
            raise InputError("this mode needs a source image")
        return image.to(self.device, torch.float32).unsqueeze(0)

    def _sample(
        self,
        stage,
        cond,
        uncond,
        x_init,
        *,
        steps,
        t_start,
        settings,
        sampler,
        noise,
        report,
        cancel,
        previews,
        blend=None,
        loras=(),
    ):
        """Run Stage C (``stage="c"``, with a Previewer image per step) or Stage B; returns the last x0."""
        roles = ("stage_c", "previewer") if stage == "c" and previews else (f"stage_{stage}",)
        with self.models.using(*roles) as networks:
            network, previewer = networks[0], (networks[1] if len(networks) > 1 else None)
            # LoRAs ride on hooks for this job only: the loaded weights are never changed, and taking the hooks
            # off puts Stage C back on its plain path (the next job without LoRA gives the no-LoRA pixels).
            applied = apply_loras(network, [(f.deltas(network), use.weight) for f, use in loras]) if loras else None
            if self.compile:
                key = (
                    stage,
                    id(network),
                    tuple(x_init.shape),
                    settings.cfg != 1,
                    tuple((f.path, use.weight) for f, use in loras),
                )
                if key not in self._compiled_for:
                    self._compiled_for.add(key)
                    note = (
                        f"compiling Stage {stage.upper()} for this size (the first image at a size, batch or LoRA set)"
                    )
                    report(ProgressEvent(stage, 0, steps, note=note))
            try:
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
                    blend,
                    # A LoRA's hooks are captured into the graph: such a graph is for this job only.
                    keep_graph=applied is None,
                )
            finally:
                if applied is not None:
                    applied.remove()

    def _steps(self, stage, network, previewer, cond, uncond, x_init, steps, t_start, settings, sampler, noise,
               report, cancel, blend=None, keep_graph=True):  # fmt: skip
        dtype = self.models.dtype
        # cfg 1 equals no guidance (the rescale then leaves ε unchanged): skip the unconditional half.
        guided = settings.cfg != 1
        inputs = {k: _pair(cond[k], uncond[k]) for k in cond} if guided else cond

        call = compiled(network) if self.compile else network
        # The condition tensors are passed as graph inputs (not closed over), so that a graph captured for one job
        # can replay for the next one at the same size.
        layout, tensors = flatten(inputs)

        def forward(x: torch.Tensor, r: torch.Tensor, *conditions: torch.Tensor) -> torch.Tensor:
            return call(x, r, **unflatten(layout, conditions))

        graphed = forward
        if self.cuda_graphs and self.device.type == "cuda":
            if keep_graph and self.models.memory == "resident":  # weights stay put: the graph can serve later jobs
                key = self.graph_key(network, x_init, layout, tensors)
                graphed = self.graphs.get(stage, key, lambda: GraphedStep(forward))
            else:
                graphed = GraphedStep(forward)

        def predict(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return graphed(x.to(dtype), r, *tensors)  # r stays float32 for the sinusoidal embedding

        if sampler == "ddpm":
            noise.prefetch(steps)  # drawn up front: one copy to a GPU instead of one per step
        x0 = None
        # Every step passes the same condition tensors (`inputs`): their projections are computed once.
        with network.reusing_condition():
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
                blend=blend,
            ):
                x0 = step.x0
                done = step.index + 1
                shown = None
                if previewer is not None and (done % self.preview_every == 0 or done == step.total):
                    shown = self._preview(previewer, x0[:1])
                report(ProgressEvent(stage, done, step.total, shown))
                if cancel():
                    raise Cancelled()
        return x0

    def graph_key(self, network: torch.nn.Module, x_init: torch.Tensor, layout: tuple, tensors: tuple) -> tuple:
        """What a stage's captured step depends on besides the values of its inputs: the network and where its
        weights are, the inputs' layout, shapes and dtypes, compilation, and the kernel choices that are switches.
        A kept graph replays for a job whose key is equal (:class:`graphs.StepCache`)."""
        return (
            id(network),
            weights_signature(network),
            layout,
            tuple((tuple(t.shape), t.dtype) for t in (x_init, *tensors)),
            self.compile,
            linear.GPU_GELU_IN_PRODUCT,
            kernels.RESIDUAL_MODULATION_FUSED,
        )

    def _preview(self, previewer: torch.nn.Module, x0: torch.Tensor) -> np.ndarray:
        """The Previewer's image of ``x0`` (1, 16, h, w) as (H, W, 3) uint8.

        On the CPU it runs channels-last, and in bf16 where the CPU multiplies bf16 natively whatever the job's
        precision (a preview never feeds the image): at 1024² one preview took 166 ms in float32 against a 1.8 s
        Stage C step, 72 ms so (two Zen 4 cores). The loaded Previewer stays as it is; the copy is kept while the
        same one is loaded. Elsewhere it runs as loaded, in float32."""
        if self.device.type != "cpu":
            return to_uint8(previewer(x0.float()))[0]
        if self._cpu_previewer is None or self._cpu_previewer[0]() is not previewer:
            dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
            fast = copy.deepcopy(previewer).to(dtype=dtype, memory_format=torch.channels_last)
            self._cpu_previewer = (weakref.ref(previewer), fast)
        fast = self._cpu_previewer[1]
        dtype = next(fast.parameters()).dtype
        return to_uint8(fast(x0.to(dtype).contiguous(memory_format=torch.channels_last)).float())[0]


def compiled(network: torch.nn.Module):
    """``network``'s forward through ``torch.compile`` (static shapes: one compilation per input size), kept on the
    module so that it lives as long as the loaded network and is compiled once."""
    fn = network.__dict__.get("_compiled_forward")
    if fn is None:
        fn = network.__dict__["_compiled_forward"] = torch.compile(network.forward, dynamic=False)
    return fn


def _pair(cond, uncond):
    """The doubled batch of one condition: tensors concatenated, ControlNet feature lists element by element."""
    if isinstance(cond, list):
        return [None if c is None else torch.cat([c, u]) for c, u in zip(cond, uncond, strict=True)]
    return torch.cat([cond, uncond])
