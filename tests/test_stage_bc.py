"""Stage B and Stage C: shapes, parity with diffusers' StableCascadeUNet, ControlNet injection."""

import pytest
import torch

from cascade_studio.networks.common import ResBlock
from cascade_studio.networks.stage_b import StageB
from cascade_studio.networks.stage_c import StageC
from cascade_studio.pipeline.demo import randomize_
from tests.support.configs import bench_config
from tests.support.diffusers_unet import to_diffusers

TINY = bench_config("tiny")


def tiny_c(seed=1):
    return randomize_(StageC(**TINY["stage_c"]), seed)


def tiny_b(seed=2):
    return randomize_(StageB(**TINY["stage_b"]), seed)


def c_inputs(batch=2, size=(6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = TINY["stage_c"]
    return (
        torch.randn(batch, 16, *size, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, 77, cfg["c_clip_text"], generator=g),
        torch.randn(batch, 1, cfg["c_clip_text_pooled"], generator=g),
        torch.randn(batch, 1, cfg["c_clip_img"], generator=g),
    )


def assert_close_to_scale(ours, reference, tol=1e-5):
    scale = max(1.0, reference.abs().max().item())
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max().item() <= tol * scale


@torch.no_grad()
@pytest.mark.parametrize("size", [(6, 6), (9, 12)])
def test_stage_c_matches_diffusers(size):
    ours = tiny_c()
    oracle = to_diffusers(ours, TINY["stage_c"], "c")
    x, r, text, pooled, img = c_inputs(size=size)
    out = ours(x, r, text, pooled, img)
    ref = oracle(x, r, clip_text_pooled=pooled, clip_text=text, clip_img=img).sample
    assert out.shape == x.shape
    assert_close_to_scale(out, ref)


@torch.no_grad()
@pytest.mark.parametrize("size", [(32, 32), (36, 44)])
def test_stage_b_matches_diffusers(size):
    """(36, 44) is not divisible by 16 in latent space: the up path resizes to the skip size."""
    ours = tiny_b()
    oracle = to_diffusers(ours, TINY["stage_b"], "b")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, *size, generator=g)
    r = torch.rand(2, generator=g)
    effnet = torch.randn(2, 16, 6, 6, generator=g)
    clip = torch.randn(2, 1, TINY["stage_b"]["c_clip"], generator=g)
    out = ours(x, r, effnet, clip)
    ref = oracle(x, r, clip_text_pooled=clip, effnet=effnet).sample
    assert_close_to_scale(out, ref)


@torch.no_grad()
def test_stage_c_pooled_text_may_be_2d():
    net = tiny_c()
    x, r, text, pooled, img = c_inputs()
    torch.testing.assert_close(net(x, r, text, pooled, img), net(x, r, text, pooled[:, 0], img[:, 0]))


@torch.no_grad()
def test_sca_and_crp_default_to_zero_but_are_used():
    net = tiny_c()
    x, r, text, pooled, img = c_inputs()
    base = net(x, r, text, pooled, img)
    torch.testing.assert_close(base, net(x, r, text, pooled, img, sca=torch.zeros(2), crp=torch.zeros(2)))
    assert not torch.allclose(base, net(x, r, text, pooled, img, sca=torch.full((2,), 0.5)))


@torch.no_grad()
def test_stage_c_controlnet_features_are_added_before_the_listed_resblocks():
    """A feature at position k of the cnet list reaches the input of the k-th ResBlock executed."""
    net = tiny_c()
    x, r, text, pooled, img = c_inputs()
    order, inputs = [], {}

    def hook(module, args):
        order.append(module)
        inputs.setdefault(id(module), []).append(args[0].clone())

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, ResBlock)]
    base = net(x, r, text, pooled, img)
    plain_inputs = [inputs[id(m)][0] for m in order]
    assert len(order) == 4  # one ResBlock per level, down and up

    feature = torch.randn(2, 128, 3, 3)
    for k in range(len(order)):
        order.clear()
        inputs.clear()
        cnet = [None] * len(plain_inputs)
        cnet[k] = feature
        out = net(x, r, text, pooled, img, cnet=cnet)
        assert not torch.allclose(out, base)
        resized = torch.nn.functional.interpolate(feature, size=(6, 6), mode="bilinear", align_corners=True)
        for j, module in enumerate(order):
            if j < k:
                torch.testing.assert_close(inputs[id(module)][0], plain_inputs[j])
            elif j == k:
                expected = plain_inputs[j] + resized
                torch.testing.assert_close(inputs[id(module)][0], expected)
    for h in handles:
        h.remove()


@torch.no_grad()
def test_dropout_is_inactive_in_eval():
    net = tiny_c()
    args = c_inputs()
    torch.testing.assert_close(net(*args), net(*args), rtol=0, atol=0)


def test_both_ways_of_projecting_attention_tokens_agree():
    """The GPU joins image and condition tokens before projecting keys and values, the CPU projects the image
    tokens' q, k and v together and joins k and v after: the same attention inputs either way, and the same as
    the packed projection written out."""
    from cascade_studio.networks.common import MultiheadAttention

    gen = torch.Generator().manual_seed(3)
    c = 24
    attn = MultiheadAttention(c, 2)
    with torch.no_grad():
        attn.in_proj_weight.copy_(torch.randn(3 * c, c, generator=gen))
        attn.in_proj_bias.copy_(torch.randn(3 * c, generator=gen))
    w, bias = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
    x, cond = torch.randn(2, 10, c, generator=gen), torch.randn(2, 4, c, generator=gen)
    with torch.inference_mode():
        joined = attn.qkv(x, cond, True, joined=True)
        packed = attn.qkv(x, cond, True, joined=False)
        reused = attn.qkv(x, None, True, cond_kv=attn.project_condition(cond))
    kv_tokens = torch.cat([x, cond], dim=1)
    expected = (
        x @ w[:c].T + bias[:c],
        kv_tokens @ w[c : 2 * c].T + bias[c : 2 * c],
        kv_tokens @ w[2 * c :].T + bias[2 * c :],
    )
    for a, b, r, want in zip(joined, packed, reused, expected):
        assert a.shape == b.shape == r.shape == want.shape
        for got in (a, b, r):
            assert torch.allclose(got, want, atol=1e-5)


def _tiny_stage(stage: str):
    """A tiny Stage C or Stage B, its inputs by name and a call taking them."""
    g = torch.Generator().manual_seed(5)
    if stage == "c":
        x, r, text, pooled, img = c_inputs()
        inputs = {"x": x, "r": r, "text": text, "pooled": pooled, "img": img}
        return tiny_c(), inputs, lambda m, i: m(i["x"], i["r"], i["text"], i["pooled"], i["img"])
    cfg = TINY["stage_b"]
    inputs = {
        "x": torch.randn(2, 4, 32, 32, generator=g),
        "r": torch.rand(2, generator=g),
        "effnet": torch.randn(2, cfg["c_effnet"], 6, 6, generator=g),
        "clip": torch.randn(2, 1, cfg["c_clip"], generator=g),
    }
    return tiny_b(), inputs, lambda m, i: m(i["x"], i["r"], i["effnet"], i["clip"])


@pytest.mark.parametrize("stage", ["c", "b"])
def test_reusing_the_condition_gives_the_same_output_and_projects_it_once(stage):
    """Within ``reusing_condition`` the condition's embedding and keys/values are computed once for the same
    condition tensors (the sampler's steps), the outputs are exactly those of plain forward passes, and a new
    condition is projected afresh."""
    from cascade_studio.networks.common import AttnBlock

    model, inputs, call = _tiny_stage(stage)
    attn_blocks = [m for m in model.modules() if isinstance(m, AttnBlock)]
    assert attn_blocks
    calls = []
    for block in attn_blocks:
        block.kv_mapper.register_forward_hook(lambda *_: calls.append(1))
    mapped = []  # Stage B: the effnet mapper's runs (the mapped Stage C latent is reused too)
    if stage == "b":
        model.effnet_mapper.register_forward_hook(lambda *_: mapped.append(1))
    xs = [torch.randn_like(inputs["x"]) for _ in range(3)]
    with torch.no_grad():
        plain = [call(model, {**inputs, "x": x}) for x in xs]
        assert len(calls) >= 3 * len(attn_blocks)  # Stage B's up path repeats its blocks
        calls.clear()
        with model.reusing_condition():
            reused = [call(model, {**inputs, "x": x}) for x in xs]
            assert len(calls) == len(attn_blocks)  # once per block for three steps
            assert len(mapped) == (4 if stage == "b" else 0)  # three plain passes, then once
            other = {k: (v + 1 if k not in ("x", "r") else v) for k, v in inputs.items()}
            changed = call(model, {**other, "x": xs[0]})
            assert len(calls) == 2 * len(attn_blocks)
            assert len(mapped) == (5 if stage == "b" else 0)
        assert model.condition_memo is None and all(b.condition_memo is None for b in attn_blocks)
        expected = call(model, {**other, "x": xs[0]})
    for a, b in zip(plain, reused):
        assert torch.equal(a, b)
    assert torch.equal(changed, expected)
