import dataclasses
import json

import pytest

from cascade_studio.core.geometry import effnet_input_size, snap_size, stage_b_latent_size, stage_c_latent_size
from cascade_studio.core.request import GenerationRequest, StageSettings


def full_request() -> GenerationRequest:
    return GenerationRequest(
        "a lighthouse, stormy sea: dusk\nsecond line ✓",
        seed=123456789012345,
        negative_prompt="blurry, text",
        width=1536,
        height=768,
        batch_size=3,
        stage_c=StageSettings(30, 5.5, 3.0),
        stage_b=StageSettings(12, 1.5, 1.25),
        variant="full",
        mode="img2img",
        source_image="/tmp/source image.png",
        strength=0.6,
        sampler="ddim",
    )


# -- defaults ----------------------------------------------------------------------------------------------


def test_defaults_follow_the_reference_notebooks():
    request = GenerationRequest("a cat", seed=7)
    assert request.stage_c == StageSettings(20, 4.0, 2.0)
    assert request.stage_b == StageSettings(10, 1.1, 1.0)
    assert (request.width, request.height, request.batch_size) == (1024, 1024, 1)
    assert (request.variant, request.mode, request.sampler, request.strength) == ("lite", "text", "ddpm", 0.8)
    assert request.negative_prompt == "" and request.source_image is None
    assert GenerationRequest.schema_version == 4
    assert (request.mask_image, request.control_image, request.outpaint, request.method) == (None, None, None, "auto")
    assert (request.control_strength, request.mask_grow, request.mask_feather) == (1.0, 0, 16)
    assert (request.context, request.context_padding) == ("image", 64)
    request.validate()


def test_request_is_frozen_and_with_returns_a_changed_copy():
    request = GenerationRequest("a cat", seed=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.seed = 8  # type: ignore[misc]
    changed = request.with_(seed=8, stage_c=StageSettings(25, 4.0, 2.0))
    assert (changed.seed, changed.stage_c.steps) == (8, 25)
    assert (request.seed, request.stage_c.steps) == (7, 20)


# -- serialisation -----------------------------------------------------------------------------------------


def test_round_trip_through_dict_and_json():
    request = full_request()
    data = request.to_dict()
    assert data["schema_version"] == 4
    assert GenerationRequest.from_dict(data) == request
    text = json.dumps(data)  # JSON-safe: plain types only
    assert GenerationRequest.from_dict(json.loads(text)) == request
    assert GenerationRequest.from_json(request.to_json()) == request


def test_round_trip_keeps_float_types():
    request = GenerationRequest("x", seed=1, stage_c=StageSettings(20, 4, 2))
    data = json.loads(request.to_json())
    assert isinstance(data["stage_c"]["cfg"], float) and isinstance(data["stage_c"]["shift"], float)
    assert isinstance(data["seed"], int) and isinstance(data["stage_c"]["steps"], int)


def test_from_dict_without_version_means_version_1_and_fills_defaults():
    request = GenerationRequest.from_dict({"prompt": "a cat", "seed": 5, "stage_c": {"steps": 30}})
    assert request == GenerationRequest("a cat", seed=5, stage_c=StageSettings(30, 4.0, 2.0))


def test_from_dict_ignores_unknown_keys():
    data = GenerationRequest("a cat", seed=5).to_dict()
    data["added_in_some_fork"] = {"anything": [1, 2]}
    data["stage_b"]["extra"] = 3
    assert GenerationRequest.from_dict(data) == GenerationRequest("a cat", seed=5)


def test_from_dict_refuses_a_newer_schema_clearly():
    data = GenerationRequest("a cat", seed=5).to_dict()
    data["schema_version"] = 5
    with pytest.raises(ValueError, match=r"schema_version 5 .*newer.*reads up to 4"):
        GenerationRequest.from_dict(data)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompt": 3}, "prompt"),
        ({"negative_prompt": None}, "negative_prompt"),
        ({"seed": "12"}, "seed"),
        ({"seed": True}, "seed"),
        ({"seed": -1}, "seed"),
        ({"width": "1024"}, "width"),
        ({"width": 200}, "width"),
        ({"height": 8192}, "height"),
        ({"height": 1000}, "height"),
        ({"batch_size": 0}, "batch_size"),
        ({"stage_c": {"steps": "20"}}, "stage_c.steps"),
        ({"stage_c": {"steps": 0}}, "stage_c.steps"),
        ({"stage_c": {"cfg": -0.5}}, "stage_c.cfg"),
        ({"stage_b": {"shift": 0}}, "stage_b.shift"),
        ({"stage_b": {"cfg": float("nan")}}, "stage_b.cfg"),
        ({"stage_b": [10, 1.1, 1.0]}, "stage_b"),
        ({"strength": 0}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"sampler": "euler"}, "sampler"),
        ({"variant": "medium"}, "variant"),
        ({"mode": "paint"}, "mode"),
        ({"mode": "inpaint", "source_image": "a.png"}, "mask_image"),
        ({"mode": "outpaint", "source_image": "a.png"}, "outpaint"),
        ({"mode": "canny"}, "control_image"),
        ({"mode": "upscale"}, "source_image"),
        ({"outpaint": [1, 2, 3]}, "outpaint"),
        ({"outpaint": [0, 0, 128, 0]}, "outpaint"),  # only in outpaint mode
        ({"outpaint": [0, 0, 0, 0]}, "outpaint"),
        ({"outpaint": [0, -1, 0, 0]}, "outpaint"),
        ({"control_strength": 2.5}, "control_strength"),
        ({"mask_grow": 1.5}, "mask_grow"),
        ({"mask_feather": -1}, "mask_feather"),
        ({"context": "crop"}, "context"),
        ({"context_padding": -4}, "context_padding"),
        ({"method": "magic"}, "method"),
        ({"method": "latent_blend"}, "method"),
        ({"mask_image": 3}, "mask_image"),
        ({"mode": "img2img"}, "source_image"),
        ({"mode": "variation", "source_image": ""}, "source_image"),
        ({"source_image": 5}, "source_image"),
        ({"schema_version": "1"}, "schema_version"),
    ],
)
def test_from_dict_errors_name_the_field(changes, field):
    data = GenerationRequest("a cat", seed=5).to_dict()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    with pytest.raises(ValueError, match=rf"(^|\W){field}\b"):
        GenerationRequest.from_dict(data)


@pytest.mark.parametrize("missing", ["prompt", "seed"])
def test_from_dict_requires_prompt_and_seed(missing):
    data = GenerationRequest("a cat", seed=5).to_dict()
    del data[missing]
    with pytest.raises(ValueError, match=missing):
        GenerationRequest.from_dict(data)


def test_from_dict_rejects_non_objects():
    with pytest.raises(ValueError):
        GenerationRequest.from_dict(["a cat", 5])
    with pytest.raises(ValueError, match="JSON"):
        GenerationRequest.from_json("{not json")


# -- validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"stage_c": StageSettings(0, 4.0, 2.0)}, "stage_c.steps"),
        ({"stage_b": StageSettings(10, -1.0, 1.0)}, "stage_b.cfg"),
        ({"stage_c": StageSettings(20, 4.0, 0.0)}, "stage_c.shift"),
        ({"strength": 0.0}, "strength"),
        ({"strength": 1.01}, "strength"),
        ({"batch_size": 0}, "batch_size"),
        ({"width": 128}, "width"),
        ({"height": 4224}, "height"),
        ({"width": 1000}, "width"),
        ({"mode": "variation"}, "source_image"),
        ({"mode": "paint"}, "mode"),
        ({"sampler": "lcm"}, "sampler"),
        ({"variant": "big"}, "variant"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**64 - 1, "batch_size": 2}, "seed"),
    ],
)
def test_validate_names_the_field(changes, field):
    request = GenerationRequest("a cat", seed=5).with_(**changes)
    with pytest.raises(ValueError, match=rf"(^|\W){field}\b"):
        request.validate()


def test_validate_accepts_the_boundaries():
    GenerationRequest("x", seed=0, width=256, height=4096, strength=1.0, stage_c=StageSettings(1, 0.0, 0.01)).validate()
    GenerationRequest("x", seed=2**64 - 1).validate()
    GenerationRequest("x", seed=1, mode="variation", source_image="in.png").validate()


def test_errors_lists_every_problem():
    request = GenerationRequest("x", seed=1, width=100, batch_size=0, sampler="nope")
    problems = request.errors()
    assert len(problems) == 3
    assert any(p.startswith("width") for p in problems)
    assert any(p.startswith("batch_size") for p in problems)
    assert any(p.startswith("sampler") for p in problems)
    with pytest.raises(ValueError) as info:
        request.validate()
    assert all(p in str(info.value) for p in problems)


def test_non_multiple_size_suggests_the_snapped_size():
    with pytest.raises(ValueError, match="nearest is 1024"):
        GenerationRequest("x", seed=1, width=1000).validate()


# -- batches -----------------------------------------------------------------------------------------------


def test_image_seeds_are_one_per_image():
    assert GenerationRequest("x", seed=41, batch_size=4).image_seeds() == [41, 42, 43, 44]
    assert GenerationRequest("x", seed=0).image_seeds() == [0]


def test_for_image_is_a_single_image_request_with_that_seed():
    batch = full_request()
    for i, seed in enumerate(batch.image_seeds()):
        single = batch.for_image(i)
        assert single.batch_size == 1
        assert single.seed == seed
        assert single.image_seeds() == [seed]
        assert single == batch.with_(batch_size=1, seed=seed)
        assert GenerationRequest.from_dict(single.to_dict()) == single
    with pytest.raises(IndexError):
        batch.for_image(3)
    with pytest.raises(IndexError):
        batch.for_image(-1)


# -- geometry ----------------------------------------------------------------------------------------------


def test_latent_sizes_match_the_spec():
    assert stage_c_latent_size(1024, 1024) == (24, 24)
    assert stage_b_latent_size(1024, 1024) == (256, 256)
    assert stage_c_latent_size(1536, 1536) == (36, 36)
    assert stage_b_latent_size(1536, 1536) == (384, 384)
    # (height, width) order, like tensor shapes
    assert stage_c_latent_size(1536, 1024) == (24, 36)
    assert stage_b_latent_size(1536, 1024) == (256, 384)


def test_multiples_of_128_give_exact_latents():
    for size in range(256, 4097, 128):
        assert stage_c_latent_size(size, size) == (size * 3 // 128,) * 2
        hb, _ = stage_b_latent_size(size, size)
        assert hb * 4 == size and hb % 16 == 0


def test_effnet_input_size_matches_the_stage_c_latent():
    assert effnet_input_size(1024, 1024) == (768, 768)  # the notebook's "768 short side for 1024"
    w, h = effnet_input_size(1536, 1024)
    assert (h // 32, w // 32) == stage_c_latent_size(1536, 1024)


def test_snap_size_keeps_valid_sizes():
    assert snap_size(1024, 1024) == (1024, 1024, None)
    assert snap_size(1536, 640) == (1536, 640, None)


def test_snap_size_rounds_to_the_nearest_multiple_with_a_note():
    assert snap_size(1000, 760) == (1024, 768, "1000×760 is not a multiple of 128 px; using 1024×768")
    assert snap_size(1000, 700)[:2] == (1024, 640)  # 700 is 60 px from 640, 68 from 768
    assert snap_size(1088, 1024)[:2] == (1152, 1024)  # halfway rounds up


def test_snap_size_clamps_to_the_supported_range():
    w, h, note = snap_size(100, 10_000)
    assert (w, h) == (256, 4096)
    assert note is not None and "using 256×4096" in note
    assert snap_size(128, 1024)[:2] == (256, 1024)
    for width, height in [(1, 1), (777, 1234), (4100, 300)]:
        w, h, _ = snap_size(width, height)
        GenerationRequest("x", seed=1, width=w, height=h).validate()


# -- version 2: the mask and ControlNet modes ------------------------------------------------------------------


def test_version_2_modes_round_trip_with_every_setting():
    requests = [
        GenerationRequest(
            "a boat",
            seed=3,
            mode="inpaint",
            source_image="/p/src.png",
            mask_image="/p/mask.png",
            strength=1.0,
            control_strength=0.8,
            mask_grow=-6,
            mask_feather=24,
            context="mask",
            context_padding=96,
            method="latent_blend",
        ),  # fmt: skip
        GenerationRequest(
            "a shore",
            seed=4,
            mode="outpaint",
            source_image="/p/src.png",
            outpaint=(256, 0, 128, 0),
            method="controlnet",
        ),  # fmt: skip
        GenerationRequest("a house", seed=5, mode="canny", control_image="/p/edges.png", control_strength=0.3),
        GenerationRequest(
            "",
            seed=6,
            mode="upscale",
            source_image="/p/small.png",
            width=2048,
            height=2048,
            stage_c=StageSettings(20, 1.0, 2.0),
        ),  # fmt: skip
    ]
    for request in requests:
        request.validate()
        data = json.loads(request.to_json())
        assert data["schema_version"] == 4
        assert GenerationRequest.from_dict(data) == request
    assert json.loads(requests[1].to_json())["outpaint"] == [256, 0, 128, 0]


def test_a_version_1_dict_reads_as_the_same_request_with_version_2_defaults():
    v1 = {
        "schema_version": 1, "prompt": "a cat", "negative_prompt": "", "width": 1024, "height": 768, "seed": 9,
        "batch_size": 2, "stage_c": {"steps": 20, "cfg": 4.0, "shift": 2.0},
        "stage_b": {"steps": 10, "cfg": 1.1, "shift": 1.0}, "variant": "lite", "mode": "img2img",
        "source_image": "/p/in.png", "strength": 0.6, "sampler": "ddpm",
    }  # fmt: skip
    request = GenerationRequest.from_dict(v1)
    assert request == GenerationRequest("a cat", seed=9, width=1024, height=768, batch_size=2, mode="img2img",
                                        source_image="/p/in.png", strength=0.6)  # fmt: skip
    assert request.method == "auto" and request.mask_image is None and request.outpaint is None
    assert request.to_dict()["schema_version"] == 4
    # a v1 dict never carried v2 settings: any such keys there are not v2's and are reset
    assert GenerationRequest.from_dict({**v1, "method": "controlnet"}).method == "auto"
