"""Replaying a network's forward pass as one CUDA graph.

A Stable Cascade step launches about 1,500 small kernels (Stage C lite: 32 blocks of norms, GRN,
attention, projections). On a fast GPU at batch 1 the CPU cannot launch them as fast as the GPU runs
them, so most of a step is launch overhead. Captured once per stage (the shapes stay fixed for the
whole stage), the step becomes one graph launch; the kernels are the same ones, so the result is
bit-identical to the eager forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class GraphedStep:
    """``fn(*tensors)`` captured on first call and replayed afterwards.

    Call it with tensors of the same shapes, dtypes and device every time (one sampling stage).
    Inputs are copied into the graph's own buffers; the output is returned as a fresh tensor.
    Everything ``fn`` closes over (weights, conditioning) must stay alive and in place while the
    graph is used. Not thread-safe; the pipeline's thread owns it.
    """

    def __init__(self, fn: Callable[..., torch.Tensor]):
        self.fn = fn
        self._graph: torch.cuda.CUDAGraph | None = None
        self._inputs: tuple[torch.Tensor, ...] = ()
        self._output: torch.Tensor | None = None

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            return self._capture(args)
        for buffer, value in zip(self._inputs, args, strict=True):
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
        return first


def maybe_graphed(fn: Callable[..., torch.Tensor], device: torch.device, enabled: bool) -> Callable[..., torch.Tensor]:
    return GraphedStep(fn) if enabled and device.type == "cuda" else fn
