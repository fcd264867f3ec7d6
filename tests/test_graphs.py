"""Keeping a stage's captured CUDA graph from one job to the next (pipeline/graphs.py): the condition tensors as graph
inputs, the cache's slots, and the key that decides when a kept graph may replay. Capture and replay themselves need
a GPU (benchmarks/gpu.py checks graphed pixels against eager ones there); what decides reuse runs anywhere."""

import copy
import gc
import weakref

import pytest
import torch

from cascade_studio.networks import kernels, linear
from cascade_studio.pipeline.generate import Pipeline
from cascade_studio.pipeline.graphs import StepCache, flatten, unflatten
from cascade_studio.pipeline.models import ModelSet


def test_flatten_keeps_every_tensor_and_the_controlnet_gaps():
    a, b, c, d = (torch.full((2,), float(i)) for i in range(4))
    inputs = {"clip_text": a, "cnet": [b, None, c, None], "clip_img": d}
    layout, tensors = flatten(inputs)
    assert len(tensors) == 4 and all(x is y for x, y in zip(tensors, (a, b, c, d)))  # in order, gaps left out
    back = unflatten(layout, tensors)
    assert list(back) == ["clip_text", "cnet", "clip_img"]
    assert back["clip_text"] is a and back["clip_img"] is d
    assert back["cnet"][0] is b and back["cnet"][2] is c and back["cnet"][1] is None and back["cnet"][3] is None
    # New tensors of the same layout (the next job's conditions copied into the graph's buffers) go back the same way.
    fresh = tuple(t + 1 for t in tensors)
    assert unflatten(layout, fresh)["cnet"][2] is fresh[2]


class Step:
    def __call__(self, x):
        return x


def test_step_cache_reuses_a_step_for_an_equal_key_and_drops_it_for_another():
    cache = StepCache()
    made = []

    def make():
        made.append(Step())
        return made[-1]

    first = cache.get("c", ("k", 1), make)
    assert cache.get("c", ("k", 1), make) is first and len(made) == 1
    other_slot = cache.get("b", ("k", 1), make)  # slots are independent
    assert other_slot is not first and len(made) == 2 and len(cache) == 2

    gone = weakref.ref(first)
    del first
    made.pop(0)
    second = cache.get("c", ("k", 2), make)  # another key: the old step is let go of before the new one is made
    gc.collect()
    assert gone() is None and second is made[-1] and len(cache) == 2
    cache.clear()
    assert len(cache) == 0


@pytest.fixture(scope="module")
def pipeline(demo_models):
    return Pipeline(ModelSet(demo_models))


def test_graph_key_changes_with_anything_a_captured_graph_depends_on(pipeline):
    stage_c = pipeline.models.get("stage_c")

    def key(size=(9, 6), batch=1, cnet=True, network=stage_c):
        x = torch.zeros(batch, 16, *size)
        inputs = {"clip_text": torch.zeros(2 * batch, 77, 32), "cnet": [torch.zeros(2 * batch, 8, 3, 3), None]}
        if not cnet:
            inputs["cnet"] = [None, None]
        layout, tensors = flatten(inputs)
        return pipeline.graph_key(network, x, layout, tensors)

    assert key() == key()  # the next job at the same size replays the graph
    assert key(size=(12, 8)) != key()
    assert key(batch=2) != key()
    assert key(cnet=False) != key()  # another ControlNet layout

    before = key()
    pipeline.compile = True
    assert key() != before
    pipeline.compile = False
    for module, flag in ((linear, "GPU_GELU_IN_PRODUCT"), (kernels, "RESIDUAL_MODULATION_FUSED")):
        setattr(module, flag, False)
        try:
            assert key() != before, flag
        finally:
            setattr(module, flag, True)
    assert key() == before

    # Weights elsewhere (a network loaded again, or moved and back): the graph would read the old addresses.
    param = next(stage_c.parameters())
    saved = param.data
    param.data = saved.clone()
    try:
        assert key() != before
    finally:
        param.data = saved
    assert key() == before
    assert key(network=copy.deepcopy(stage_c)) != before  # another network of the same shapes
