"""Replaying a network's forward pass as one CUDA graph.

A Stable Cascade step launches about 1,500 small kernels (Stage C lite: 32 blocks of norms, GRN,
attention, projections). On a fast GPU at batch 1 the CPU cannot launch them as fast as the GPU runs
them, so most of a step is launch overhead. Captured once per stage (the shapes stay fixed for the
whole stage), the step becomes one graph launch; the kernels are the same ones, so the result is
bit-identical to the eager forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Step = Callable[..., torch.Tensor]


class GraphedStep:
    """``fn(*tensors)`` captured on first call and replayed afterwards.

    Call it with tensors of the same shapes, dtypes and device every time (one sampling stage).
    Inputs are copied into the graph's own buffers; the output is returned as a fresh tensor.
    Everything ``fn`` closes over (weights, conditioning) must stay alive and in place while the
    graph is used. Not thread-safe; the pipeline's thread owns it.
    """

    def __init__(self, fn: Step):
        self.fn: Step | None = fn
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._output: torch.Tensor | None = None

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            return self._capture(args)
        for buffer, value in zip(self._inputs, args, strict=True):
            if buffer.shape != value.shape:  # copy_ would broadcast a smaller tensor silently
                raise ValueError(f"graph input of shape {tuple(value.shape)}, captured as {tuple(buffer.shape)}")
            buffer.copy_(value)
        self._graph.replay()
        return self._output.clone()

    def _capture(self, args: tuple[torch.Tensor, ...]) -> torch.Tensor:
        self._inputs = tuple(a.clone() for a in args)
        # Warm up on a side stream (lazy initialisation, kernel choice), as CUDA graph capture requires;
        # this eager run also gives the first step its result.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            first = self.fn(*self._inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._output = self.fn(*self._inputs)
        self._graph = graph
        # Replays need only the graph and its buffers: letting go of fn (which holds the network) keeps a graph kept
        # across jobs (StepCache) from holding a network that the model set has since let go of.
        self.fn = None
        return first


def flatten(inputs: dict[str, Any]) -> tuple[tuple, tuple[torch.Tensor, ...]]:
    """A network's keyword inputs (tensors, or lists of tensors and None: ControlNet features) as their layout and a
    flat tuple of the tensors, so that all of them can be graph inputs; :func:`unflatten` reverses it."""
    layout, tensors = [], []
    for name, value in inputs.items():
        if isinstance(value, list):
            layout.append((name, tuple(v is not None for v in value)))
            tensors.extend(v for v in value if v is not None)
        else:
            layout.append((name, None))
            tensors.append(value)
    return tuple(layout), tuple(tensors)


def unflatten(layout: tuple, tensors: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    values, it = {}, iter(tensors)
    for name, present in layout:
        values[name] = next(it) if present is None else [next(it) if p else None for p in present]
    return values


def weights_signature(module: torch.nn.Module) -> tuple:
    """Where and how large every parameter and buffer of ``module`` is: a captured graph reads them at those
    addresses, so it stays valid exactly while this is unchanged."""
    return tuple((t.data_ptr(), tuple(t.shape), t.dtype) for t in (*module.parameters(), *module.buffers()))


class StepCache:
    """Captured steps kept from one job to the next, one per slot (a sampling stage): capturing costs about a
    forward pass of CPU time plus the graph's instantiation, per stage and job (a tenth of a second for Stage B at
    batch 4 on an H100), and the next job at the same size replays the same graph. A step is reused only when its
    key (the network, where its weights are, input shapes, and whatever else changes the captured kernels) equals
    the one it was captured with; otherwise the slot's old graph is dropped first (freeing its memory) and a new one
    captured. Each kept graph holds its own memory for the activations of one forward pass."""

    def __init__(self) -> None:
        self._slots: dict[str, tuple[tuple, Step]] = {}

    def get(self, slot: str, key: tuple, make: Callable[[], Step]) -> Step:
        kept = self._slots.get(slot)
        if kept is not None and kept[0] == key:
            return kept[1]
        self._slots.pop(slot, None)
        step = make()
        self._slots[slot] = (key, step)
        return step

    def clear(self) -> None:
        self._slots.clear()

    def __len__(self) -> int:
        return len(self._slots)
