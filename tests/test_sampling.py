"""GDF sampling (spec §9–10). Expected values are computed independently here, in float64 numpy,
from the formulas in the spec; the module under test runs in float32."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from cascade_studio.pipeline.sampling import (
    SeededNoise,
    alpha_sigma,
    diffuse,
    img2img_start,
    log_snr,
    noise_cond,
    sample,
)

S = 0.008
LIMIT = np.log(0.9999 / 1e-4)  # ≈ 9.2102


# ---------------------------------------------------------------- independent float64 reference


def np_log_snr(t, shift=1.0):
    t = np.asarray(t, dtype=np.float64)
    var = np.cos((S + t) / (1 + S) * np.pi / 2) ** 2 / np.cos(S / (1 + S) * np.pi / 2) ** 2
    var = np.clip(var, 1e-4, 0.9999)
    value = np.log(var / (1 - var)) - 2 * np.log(shift)
    return np.clip(value, -LIMIT, LIMIT)


def np_sigmoid(v):
    return 1 / (1 + np.exp(-v))


def np_ab(L):
    return np.sqrt(np_sigmoid(L)), np.sqrt(np_sigmoid(-L))


def np_r(L):
    var = np.clip(np_sigmoid(L), 0, 1)
    return np.arccos(np.sqrt(var * np.cos(S / (1 + S) * np.pi / 2) ** 2)) / (np.pi / 2) * (1 + S) - S


def np_guide(ec, eu, cfg, rho, per_image):
    g = eu + cfg * (ec - eu)
    if per_image:
        axes = tuple(range(1, ec.ndim))
        sc = ec.std(axis=axes, ddof=1, keepdims=True)
        sg = g.std(axis=axes, ddof=1, keepdims=True)
    else:
        sc, sg = ec.std(ddof=1), g.std(ddof=1)
    return rho * g * sc / (sg + 1e-9) + (1 - rho) * g


def np_sample(eps_fn, x, *, steps, cfg, shift, t_start, sampler, rho, per_image, zs):
    """Reference loop: returns [(x, x0, eps)] per step."""
    grid = np.linspace(t_start, 0, steps + 1)
    L = np_log_snr(grid, shift)
    a, b = np_ab(L)
    out = []
    for i in range(steps):
        r = np_r(L[i])
        ec, eu = eps_fn(x, r)
        eps = ec if cfg is None else np_guide(ec, eu, cfg, rho, per_image)
        x0 = (x - b[i] * eps) / a[i]
        if sampler == "ddpm":
            sigma = np.sqrt(b[i + 1] ** 2 / b[i] ** 2) * np.sqrt(1 - a[i] ** 2 / a[i + 1] ** 2)
            x = a[i + 1] * x0 + np.sqrt(b[i + 1] ** 2 - sigma**2) * eps + sigma * zs[i]
        else:
            x = a[i + 1] * x0 + b[i + 1] * eps
        out.append((x, x0, eps))
    return out


# toy ε model, linear in x: conditional 0.6·x + 0.1 + 0.2·r, unconditional 0.3·x − 0.2 + c with a fixed
# per-position pattern c (so std(ε_c)/std(g) depends on the image's scale and the rescale scopes differ)
def pattern(shape):
    return 0.1 * (np.arange(int(np.prod(shape))) % 7).reshape(shape)


def np_eps(x, r):
    return 0.6 * x + 0.1 + 0.2 * r, 0.3 * x - 0.2 + pattern(x.shape[1:])


def torch_predict(calls=None):
    def predict(x, r):
        if calls is not None:
            calls.append((x.clone(), r.clone()))
        half = x.shape[0] // 2
        rr = r.view(-1, *[1] * (x.dim() - 1))
        cond = 0.6 * x[:half] + 0.1 + 0.2 * rr[:half]
        c = torch.from_numpy(pattern(tuple(x.shape[1:]))).float()
        return torch.cat([cond, 0.3 * x[half:] - 0.2 + c])

    return predict


def fixed_noise(zs):
    return lambda i: torch.from_numpy(zs[i]).float()


def assert_close(actual: torch.Tensor, expected, rtol=2e-5, atol=2e-5):
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- schedule, scaler, r, diffuse


def test_log_snr_limits_and_values():
    t = torch.tensor([1.0, 0.9, 0.5, 0.3, 0.1, 0.0])
    assert_close(log_snr(t), np_log_snr(t.numpy().astype(np.float64)), atol=1e-4)
    assert log_snr(1.0).item() == pytest.approx(-9.2102, abs=1e-3)
    assert log_snr(0.0).item() == pytest.approx(9.2102, abs=1e-3)
    # near t = 0 the variance exceeds 0.9999 and is clamped
    assert log_snr(0.001).item() == pytest.approx(LIMIT, abs=1e-3)
    # t outside [0, 1] is clamped like the reference
    assert log_snr(1.5).item() == log_snr(1.0).item()


def test_log_snr_shift_subtracts_and_clamps_to_shift_one_limits():
    t = torch.tensor([0.9, 0.5, 0.2])
    assert_close(log_snr(t, 2.0), np_log_snr(t.numpy().astype(np.float64)) - 2 * np.log(2), atol=1e-4)
    assert log_snr(1.0, 2.0).item() == pytest.approx(-LIMIT, abs=1e-3)  # still −9.21, clamped
    assert log_snr(0.0, 2.0).item() == pytest.approx(LIMIT - 2 * np.log(2), abs=1e-3)  # 9.21 − 1.386
    # a shift below 1 raises logSNR, clamped at +9.21
    assert log_snr(0.0, 0.5).item() == pytest.approx(LIMIT, abs=1e-3)
    with pytest.raises(ValueError, match="shift"):
        log_snr(0.5, 0.0)


def test_alpha_sigma_vp():
    L = torch.tensor([-9.2, -1.0, 0.0, 2.5, 9.2])
    a, b = alpha_sigma(L)
    ea, eb = np_ab(L.numpy().astype(np.float64))
    assert_close(a, ea, rtol=1e-6)
    assert_close(b, eb, rtol=1e-6)


def test_noise_cond_inverts_unshifted_schedule():
    t = torch.tensor([0.2, 0.5, 0.8, 0.95])
    assert_close(noise_cond(log_snr(t)), t.numpy(), atol=1e-4)  # shift 1: r == t
    r2 = noise_cond(log_snr(0.5, 2.0)).item()
    assert r2 == pytest.approx(0.71, abs=0.01)  # the spec's example
    assert r2 == pytest.approx(float(np_r(np_log_snr(0.5, 2.0))), abs=1e-5)
    # at the clamped end var = 1e-4 exactly, so r(t=1) is slightly below 1, with or without shift
    assert noise_cond(log_snr(1.0, 2.0)).item() == pytest.approx(float(np_r(-LIMIT)), abs=1e-5)
    assert noise_cond(log_snr(1.0, 2.0)).item() == noise_cond(log_snr(1.0)).item()


def test_diffuse():
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    for t, shift in [(0.8, 1.0), (0.3, 2.0)]:
        a, b = np_ab(np_log_snr(t, shift))
        out = diffuse(torch.from_numpy(x0).float(), t, torch.from_numpy(eps).float(), shift=shift)
        assert out.dtype == torch.float32
        assert_close(out, a * x0 + b * eps, atol=1e-5)
    # per-image times
    ts = np.array([0.2, 0.9])
    a, b = np_ab(np_log_snr(ts))
    out = diffuse(torch.from_numpy(x0).float(), torch.tensor(ts), torch.from_numpy(eps).float())
    assert_close(out, a[:, None, None, None] * x0 + b[:, None, None, None] * eps, atol=1e-5)


# ---------------------------------------------------------------- steps against hand-computed values


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_steps_match_reference_loop(sampler):
    rng = np.random.default_rng(1)
    x_init = rng.standard_normal((1, 2, 3, 3))
    zs = [rng.standard_normal((1, 2, 3, 3)) for _ in range(3)]
    kw = dict(steps=3, cfg=3.0, shift=2.0, t_start=0.8, sampler=sampler)
    expected = np_sample(np_eps, x_init, rho=0.7, per_image=True, zs=zs, **kw)
    got = list(sample(torch_predict(), torch.from_numpy(x_init).float(), noise=fixed_noise(zs), **kw))
    assert [s.index for s in got] == [0, 1, 2] and all(s.total == 3 for s in got)
    for step, (x, x0, eps) in zip(got, expected):
        assert_close(step.eps, eps, rtol=1e-4, atol=1e-4)
        assert_close(step.x0, x0, rtol=1e-4, atol=1e-4)
        assert_close(step.x, x, rtol=1e-4, atol=1e-4)
    if sampler == "ddpm":  # the injected noise matters for DDPM …
        other = [z + 1 for z in zs]
        moved = list(sample(torch_predict(), torch.from_numpy(x_init).float(), noise=fixed_noise(other), **kw))
        assert not torch.allclose(moved[0].x, got[0].x)


def test_ddpm_first_step_by_hand_from_pure_noise():
    """One DDPM step from t = 1, written out scalar by scalar (no cfg, ε = 0.5·x)."""
    x_init = np.array([[[[0.7, -1.2]]]])
    z = np.array([[[[0.3, 0.4]]]])
    step = next(
        sample(
            lambda x, r: 0.5 * x,
            torch.from_numpy(x_init).float(),
            steps=4,
            cfg=None,
            shift=1.0,
            noise=fixed_noise([z]),
        )
    )
    a0, b0 = np_ab(np_log_snr(1.0))
    a1, b1 = np_ab(np_log_snr(0.75))
    eps = 0.5 * x_init
    x0 = (x_init - b0 * eps) / a0
    sigma = (b1 / b0) * np.sqrt(1 - a0**2 / a1**2)
    assert_close(step.x0, x0, rtol=1e-4)
    assert_close(step.x, a1 * x0 + np.sqrt(b1**2 - sigma**2) * eps + sigma * z, rtol=1e-4, atol=1e-5)


def test_ddim_draws_no_noise():
    def no_noise(i):
        raise AssertionError("DDIM must not draw noise")

    steps = list(sample(lambda x, r: 0.5 * x, torch.ones(1, 1, 2, 2), steps=3, cfg=None, shift=1.0, sampler="ddim",
                        noise=no_noise))  # fmt: skip
    assert len(steps) == 3


# ---------------------------------------------------------------- guidance and rescale


def _two_scale_batch():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 4, 4))
    x[0] *= 0.1  # very different scales, so per-image and batch std differ
    x[1] *= 3.0
    return x


@pytest.mark.parametrize("rho", [0.7, 0.05])
@pytest.mark.parametrize("rescale", ["image", "batch"])
def test_cfg_rescale_scopes(rescale, rho):
    x = _two_scale_batch()
    zs = [np.zeros_like(x)]
    kw = dict(steps=1, cfg=4.0, shift=1.0, t_start=0.6, sampler="ddpm")
    expected = np_sample(np_eps, x, rho=rho, per_image=rescale == "image", zs=zs, **kw)
    step = next(
        sample(torch_predict(), torch.from_numpy(x).float(), rescale=rescale, cfg_rho=rho, noise=fixed_noise(zs), **kw)
    )
    assert_close(step.eps, expected[0][2], rtol=1e-5, atol=1e-5)


def test_rescale_scopes_differ_at_batch_two_and_agree_at_batch_one():
    x = torch.from_numpy(_two_scale_batch()).float()
    kw = dict(steps=1, cfg=4.0, shift=1.0, t_start=0.6, sampler="ddim")
    image = next(sample(torch_predict(), x, rescale="image", **kw)).eps
    batch = next(sample(torch_predict(), x, rescale="batch", **kw)).eps
    assert not torch.allclose(image, batch, rtol=1e-2)
    image1 = next(sample(torch_predict(), x[1:], rescale="image", **kw)).eps
    batch1 = next(sample(torch_predict(), x[1:], rescale="batch", **kw)).eps
    assert torch.equal(image1, batch1)


def test_cfg_rho_zero_is_plain_guidance():
    x = _two_scale_batch()
    step = next(sample(torch_predict(), torch.from_numpy(x).float(), steps=1, cfg=4.0, shift=1.0, t_start=0.6,
                       sampler="ddim", cfg_rho=0.0))  # fmt: skip
    r = np_r(np_log_snr(0.6))
    ec, eu = np_eps(x, r)
    assert_close(step.eps, eu + 4.0 * (ec - eu), rtol=1e-5, atol=1e-5)


def test_predict_batches_and_r():
    x = torch.zeros(2, 1, 2, 2)
    calls = []
    list(sample(torch_predict(calls), x, steps=2, cfg=2.0, shift=2.0, t_start=1.0, sampler="ddim"))
    grid_r = np_r(np_log_snr(np.array([1.0, 0.5]), 2.0))
    for (xin, r), expected_r in zip(calls, grid_r):
        assert xin.shape == (4, 1, 2, 2) and r.shape == (4,)
        assert torch.equal(xin[:2], xin[2:])
        assert_close(r, np.full(4, expected_r), atol=1e-5)

    plain = []

    def unguided(x, r):
        plain.append((x.shape, r.shape))
        return 0.5 * x

    list(sample(unguided, x, steps=2, cfg=None, shift=1.0, sampler="ddim"))
    assert plain == [((2, 1, 2, 2), (2,))] * 2


def test_predict_wrong_shape_is_reported():
    with pytest.raises(ValueError, match="predict returned shape"):
        next(sample(lambda x, r: x[: x.shape[0] // 2], torch.zeros(1, 1, 2, 2), steps=1, cfg=2.0, shift=1.0))


# ---------------------------------------------------------------- generator protocol, dtype


def test_yields_every_step_and_cancel_stops_predict():
    calls = []

    def predict(x, r):
        calls.append(1)
        return 0.5 * x

    gen = sample(predict, torch.zeros(1, 1, 2, 2), steps=10, cfg=None, shift=1.0, sampler="ddim")
    first_three = list(itertools.islice(gen, 3))
    gen.close()
    assert [s.index for s in first_three] == [0, 1, 2] and len(calls) == 3
    assert len(list(sample(predict, torch.zeros(1, 1, 2, 2), steps=7, cfg=None, shift=1.0, sampler="ddim"))) == 7


def test_float32_math_for_low_precision_inputs():
    seen = []

    def predict(x, r):
        seen.append(x.dtype)
        return (0.5 * x).to(torch.bfloat16)

    steps = list(sample(predict, torch.ones(1, 1, 2, 2, dtype=torch.bfloat16), steps=2, cfg=None, shift=1.0,
                        noise=lambda i: torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16)))  # fmt: skip
    assert seen == [torch.float32] * 2
    assert all(t.dtype == torch.float32 for s in steps for t in (s.x, s.x0, s.eps))


def test_runs_under_inference_mode_without_enabling_grad():
    def predict(x, r):
        assert not torch.is_grad_enabled()
        return 0.5 * x

    with torch.inference_mode():
        out = list(sample(predict, torch.ones(1, 1, 2, 2), steps=2, cfg=None, shift=1.0, sampler="ddim"))
    assert out[-1].x0.is_inference()


# ---------------------------------------------------------------- seeded noise, reproducibility


def test_seeded_noise_uses_one_cpu_generator_per_image_in_order():
    shape = (2, 5, 5)
    noise = SeededNoise([11, 22], shape)
    init, z0, z1 = noise.initial(), noise.step(0), noise.step(1)
    assert init.shape == (2, *shape) and init.dtype == torch.float32
    for k, seed in enumerate([11, 22]):
        g = torch.Generator().manual_seed(seed)
        assert torch.equal(init[k], torch.randn(shape, generator=g))
        assert torch.equal(z0[k], torch.randn(shape, generator=g))
        assert torch.equal(z1[k], torch.randn(shape, generator=g))
    assert torch.equal(noise.initial(), init)  # cached
    with pytest.raises(ValueError, match="step 5"):
        noise.step(5)
    # step(0) without initial() still skips the starting noise: same stream
    late = SeededNoise([22], shape)
    assert torch.equal(late.step(0)[0], z0[1])
    assert SeededNoise(7, shape, dtype=torch.float64).initial().dtype == torch.float64
    with pytest.raises(ValueError, match="seeds"):
        SeededNoise([], shape)


def _run(seeds, rescale, shape=(4, 8, 8), steps=4):
    def predict(x, r):  # deterministic and per image: each output element depends on its own image only
        half = x.shape[0] // 2
        rr = r.view(-1, 1, 1, 1)
        cond = 0.8 * x[:half] + 0.3 * x[:half].flip(-1) + 0.1 * rr[:half]
        uncond = 0.4 * x[half:] - 0.05 * rr[half:]
        return torch.cat([cond, uncond])

    noise = SeededNoise(seeds, shape)
    return list(sample(predict, noise.initial(), steps=steps, cfg=4.0, shift=2.0, rescale=rescale, noise=noise))


def test_same_seeds_reproduce_exactly():
    a, b = _run([5, 6], "image"), _run([5, 6], "image")
    assert all(torch.equal(sa.x0, sb.x0) and torch.equal(sa.x, sb.x) for sa, sb in zip(a, b))
    c = _run([5, 7], "image")
    assert torch.equal(a[-1].x0[0], c[-1].x0[0]) and not torch.equal(a[-1].x0[1], c[-1].x0[1])


def test_batch_invariance_with_per_image_rescale():
    two, one = _run([11, 22], "image"), _run([22], "image")
    for s2, s1 in zip(two, one):
        assert torch.equal(s2.x0[1:], s1.x0)
        assert torch.equal(s2.x[1:], s1.x)
    # the reference's batch-wide rescale couples the images
    two_b, one_b = _run([11, 22], "batch"), _run([22], "batch")
    assert not torch.allclose(two_b[-1].x0[1:], one_b[-1].x0)
    assert torch.equal(one_b[-1].x0, one[-1].x0)  # at batch 1 the scopes agree


# ---------------------------------------------------------------- img2img and argument errors


def test_img2img_start():
    rng = np.random.default_rng(3)
    x0, eps = rng.standard_normal((1, 3, 4, 4)), rng.standard_normal((1, 3, 4, 4))
    start = img2img_start(torch.from_numpy(x0).float(), 0.8, 20, torch.from_numpy(eps).float())
    assert start.t_start == 0.8 and start.steps == 16
    assert img2img_start(torch.zeros(1, 1, 1, 1), 0.79, 20, torch.zeros(1, 1, 1, 1)).steps == 15  # truncates
    a, b = np_ab(np_log_snr(0.8, 1.0))  # shift 1 for the noising, whatever the sampling shift
    assert_close(start.x_init, a * x0 + b * eps, atol=1e-5)
    a2, b2 = np_ab(np_log_snr(0.8, 2.0))
    assert not np.allclose(start.x_init.numpy(), a2 * x0 + b2 * eps, atol=1e-3)
    assert img2img_start(torch.zeros(1, 1, 1, 1), 0.01, 20, torch.zeros(1, 1, 1, 1)).steps == 1
    assert img2img_start(torch.zeros(1, 1, 1, 1), 1.0, 20, torch.zeros(1, 1, 1, 1)).steps == 20
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="strength"):
            img2img_start(torch.zeros(1, 1, 1, 1), bad, 20, torch.zeros(1, 1, 1, 1))
    with pytest.raises(ValueError, match="steps"):
        img2img_start(torch.zeros(1, 1, 1, 1), 0.5, 0, torch.zeros(1, 1, 1, 1))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"t_start": 0.0}, "t_start"),
        ({"t_start": 1.01}, "t_start"),
        ({"sampler": "euler"}, "sampler"),
        ({"rescale": "global"}, "rescale"),
        ({"cfg_rho": -0.1}, "cfg_rho"),
        ({"cfg": float("nan")}, "cfg"),
        ({"shift": 0.0}, "shift"),
        ({"noise": 3}, "noise"),
    ],
)
def test_argument_errors_are_raised_at_call_time(kwargs, name):
    args = {"steps": 2, "cfg": 4.0, "shift": 1.0, **kwargs}

    def predict(x, r):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match=name):
        sample(predict, torch.zeros(1, 1, 2, 2), **args)  # no iteration needed


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_skipping_the_unconditional_branch_equals_guidance_one(sampler):
    # The pipeline runs cfg 1 as cfg=None (conditional half only); the full guided path at cfg 1 must agree.
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 4, 4))).float()
    zs = np.random.default_rng(4).standard_normal((6, 2, 3, 4, 4))
    predict = torch_predict()

    def conditional_only(x, r):
        return predict(torch.cat([x, x]), torch.cat([r, r]))[: x.shape[0]]

    guided = list(sample(predict, x, steps=5, cfg=1.0, shift=2.0, sampler=sampler, noise=fixed_noise(zs)))
    skipped = list(sample(conditional_only, x, steps=5, cfg=None, shift=2.0, sampler=sampler, noise=fixed_noise(zs)))
    assert len(guided) == len(skipped) == 5
    for a, b in zip(guided, skipped):
        torch.testing.assert_close(a.x, b.x, rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(a.x0, b.x0, rtol=1e-4, atol=2e-5)


def test_prefetched_noise_equals_noise_drawn_step_by_step():
    # The pipeline prefetches a GPU stage's noise in one copy: the numbers and their order must not change.
    shape = (2, 3, 3)
    plain, early = SeededNoise([11, 22], shape), SeededNoise([11, 22], shape)
    early.prefetch(4)
    assert torch.equal(early.initial(), plain.initial())
    for i in range(4):
        assert torch.equal(early.step(i), plain.step(i))
    with pytest.raises(ValueError, match="beyond the 4 prefetched"):
        early.step(4)
    with pytest.raises(ValueError, match="prefetch once"):
        early.prefetch(2)
