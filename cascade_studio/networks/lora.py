"""LoRA on a loaded network (Stage C, or the CLIP text tower), without touching its weights.

A :class:`LoraDelta` is one low-rank update ``scale · up @ down`` for one target: a plain ``nn.Linear`` (the
attention ``out_proj``, ``kv_mapper.1``, ResBlock ``channelwise`` layers, the text tower's ``mlp.c_fc`` …) or a row
slice of an attention's packed ``in_proj_weight`` (rows ``[0, 3c)`` for the reference format's packed q/k/v, or the
q, k or v third for layouts that keep them apart). :func:`apply_loras` adds every delta of several LoRAs, each times
its weight:

* a Linear gets a forward hook adding ``F.linear(F.linear(x, down), scale · up)`` to its output;
* a packed attention (ours, or the text tower's ``nn.MultiheadAttention``) gets the same low-rank terms in
  ``in_proj_lora``, which the code projecting its queries, keys and values adds to the rows each covers
  (:func:`~.linear.add_low_rank_`: Stage C's fused image-token qkv and condition-token k/v both see them).

The stored parameters are never written, and :meth:`AppliedLoras.remove` puts the modules back on exactly the
code path they had, so the output after removal equals the output before, bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .common import MultiheadAttention
from .linear import linear

#: attentions with a packed ``in_proj_weight`` (3c, c): Stage B/C's, and torch's in the CLIP text tower
PACKED_ATTENTION = (MultiheadAttention, nn.MultiheadAttention)


@dataclass(frozen=True)
class LoraDelta:
    """``scale · up @ down`` for the module named ``module`` (a qualified name in the network). For a packed attention
    (``…attention.attn``), ``rows`` is the slice of ``in_proj_weight`` the delta covers; None for a Linear."""

    module: str
    down: torch.Tensor  # (rank, in)
    up: torch.Tensor  # (out, rank)
    scale: float
    rows: tuple[int, int] | None = None
    source: str = ""  # what the file calls it (``weights.3``, ``lora_prior_unet_…_to_q``), for messages

    @property
    def label(self) -> str:
        """The delta's name in messages: the file's name for it and the module it targets."""
        return f"{self.source} (on {self.module})" if self.source else self.module


class AppliedLoras:
    """The hooks of :func:`apply_loras`; :meth:`remove` (or leaving the ``with`` block) takes them all off."""

    def __init__(self) -> None:
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._attentions: list[nn.Module] = []

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for attn in self._attentions:
            attn.in_proj_lora = ()
        self._handles.clear()
        self._attentions.clear()

    def __enter__(self) -> AppliedLoras:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def lora_targets(network: nn.Module) -> dict[str, nn.Module]:
    """Every module a LoRA may target: the Linear layers and the packed attentions, by qualified name."""
    return {n: m for n, m in network.named_modules() if isinstance(m, (nn.Linear, *PACKED_ATTENTION))}


def check_deltas(network: nn.Module, deltas: Iterable[LoraDelta]) -> None:
    """Raise ValueError when a delta names no target of ``network`` or its shapes do not fit."""
    targets = lora_targets(network)
    for d in deltas:
        module = targets.get(d.module)
        if module is None:
            raise ValueError(f"{d.label} is not a Linear layer or attention of this network")
        if isinstance(module, PACKED_ATTENTION):
            if d.rows is None:
                raise ValueError(f"{d.label} is a packed attention: the delta needs a row range")
            out, inp = d.rows[1] - d.rows[0], module.in_proj_weight.shape[1]
            if d.rows[0] < 0 or d.rows[1] > module.in_proj_weight.shape[0]:
                raise ValueError(f"{d.label}: rows {d.rows} are outside in_proj_weight")
        else:
            if d.rows is not None:
                raise ValueError(f"{d.label} is a Linear layer: a row range applies to a packed attention only")
            out, inp = module.out_features, module.in_features
        rank = d.down.shape[0]
        if d.down.ndim != 2 or d.up.ndim != 2 or d.down.shape != (rank, inp) or d.up.shape != (out, rank):
            raise ValueError(
                f"{d.label}: LoRA shapes down {tuple(d.down.shape)} / up {tuple(d.up.shape)} do not fit a "
                f"({out} × {inp}) weight (expected down (rank, {inp}) and up ({out}, rank))"
            )


def apply_loras(network: nn.Module, loras: Sequence[tuple[Sequence[LoraDelta], float]]) -> AppliedLoras:
    """Apply each LoRA (its deltas, times its weight) to ``network``; returns the handle that removes them.

    The LoRA tensors are copied once to the device and dtype of the weights they modify."""
    targets = lora_targets(network)
    all_deltas = [d for deltas, _ in loras for d in deltas]
    check_deltas(network, all_deltas)
    linears: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    packed: dict[str, list[tuple[torch.Tensor, torch.Tensor, int]]] = {}
    for deltas, weight in loras:
        for d in deltas:
            module = targets[d.module]
            if isinstance(module, PACKED_ATTENTION):
                down, up = lora_terms(d, weight, module.in_proj_weight)
                packed.setdefault(d.module, []).append((down, up, d.rows[0]))
            else:
                linears.setdefault(d.module, []).append(lora_terms(d, weight, module.weight))

    applied = AppliedLoras()
    try:
        for name, terms in linears.items():
            applied._handles.append(targets[name].register_forward_hook(_linear_hook(terms)))
        for name, terms in packed.items():
            attn = targets[name]
            if getattr(attn, "in_proj_lora", ()):
                raise RuntimeError(f"{name} already has a LoRA applied; remove it first")
            attn.in_proj_lora = tuple(terms)
            applied._attentions.append(attn)
    except BaseException:
        applied.remove()
        raise
    return applied


def lora_terms(d: LoraDelta, weight: float, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(down, up)`` of ``d`` on ``ref``'s device and dtype with the delta's scale and the LoRA's ``weight`` folded
    into ``up`` (in float32, then rounded once to the weights' dtype)."""
    down = d.down.to(ref.device, ref.dtype).contiguous()
    up = (d.up.to(ref.device, torch.float32) * (float(d.scale) * float(weight))).to(ref.dtype).contiguous()
    return down, up


def merged_weight(weight: torch.Tensor, deltas: Iterable[tuple[LoraDelta, float]]) -> torch.Tensor:
    """``weight`` plus every delta times its LoRA weight (row slices where given): the hand-merged weight that the
    tests compare against. Returns a new tensor."""
    w = weight.detach().clone()
    for d, lora_weight in deltas:
        delta = (d.up.to(w.dtype) @ d.down.to(w.dtype)) * (d.scale * lora_weight)
        if d.rows is None:
            w += delta
        else:
            w[d.rows[0] : d.rows[1]] += delta
    return w


def _linear_hook(terms):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0]
        for down, up in terms:
            output = output + linear(linear(x, down), up)
        return output

    return hook
