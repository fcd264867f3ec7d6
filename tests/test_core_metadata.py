import json
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from cascade_studio.core import metadata
from cascade_studio.core.metadata import (
    a1111_parameters,
    interpret_text_chunks,
    parse_a1111,
    png_text_chunks,
    read_metadata,
    read_png_text,
    save_png_atomic,
)
from cascade_studio.core.request import GenerationRequest, StageSettings

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "foreign-metadata"
CASCADE_PROMPT = (
    "evening sunset scenery blue sky nature, glass bottle with a fizzy ice cold freezing rainbow liquid in it"
)


def small_image() -> Image.Image:
    return Image.new("RGB", (8, 8), (200, 40, 10))


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_with_chunks(tmp_path: Path, before: list[bytes], after: list[bytes] = (), name="x.png") -> Path:
    """A real PNG with raw chunks spliced in right after IHDR and right before IEND."""
    path = tmp_path / name
    small_image().save(path)
    data = path.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    iend = len(data) - 12
    assert data[iend + 4 : iend + 8] == b"IEND"
    path.write_bytes(data[:ihdr_end] + b"".join(before) + data[ihdr_end:iend] + b"".join(after) + data[iend:])
    return path


# -- the A1111 text form -----------------------------------------------------------------------------------


def test_a1111_text_is_exactly_the_documented_form():
    request = GenerationRequest("a red fox in snow", seed=1, negative_prompt="blurry")
    text = a1111_parameters(request, "stage_c_lite_bf16", "0.1")
    assert text == (
        "a red fox in snow\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DDPM, CFG scale: 4, Seed: 1, Size: 1024x1024, Model: stage_c_lite_bf16, "
        "Stage B steps: 10, Stage B CFG scale: 1.1, Shift: 2, Version: cascade-studio 0.1"
    )


def test_a1111_text_without_negative_prompt_has_no_negative_line():
    text = a1111_parameters(GenerationRequest("fox", seed=9, width=1536, height=768), "m", "0.1")
    assert text.splitlines()[0] == "fox"
    assert "Negative prompt" not in text
    assert "Size: 1536x768" in text


def test_a1111_text_records_non_default_settings():
    request = GenerationRequest(
        "fox",
        seed=3,
        sampler="ddim",
        stage_c=StageSettings(25, 5.5, 3.0),
        stage_b=StageSettings(12, 1.3, 1.5),
        mode="img2img",
        source_image="in.png",
        strength=0.6,
    )
    parsed = parse_a1111(a1111_parameters(request, "stage_c_bf16", "0.2"))
    assert parsed["Sampler"] == "DDIM"
    assert (parsed["Steps"], parsed["CFG scale"], parsed["Shift"]) == ("25", "5.5", "3")
    assert (parsed["Stage B steps"], parsed["Stage B CFG scale"], parsed["Stage B shift"]) == ("12", "1.3", "1.5")
    assert (parsed["Mode"], parsed["Denoising strength"]) == ("img2img", "0.6")
    assert parsed["Version"] == "cascade-studio 0.2"


def test_a1111_text_parses_back():
    request = GenerationRequest("a red fox in snow", seed=77, negative_prompt="blurry")
    parsed = parse_a1111(a1111_parameters(request, "stage_c_lite_bf16", "0.1"))
    assert parsed == {
        "prompt": "a red fox in snow",
        "negative_prompt": "blurry",
        "Steps": "20",
        "Sampler": "DDPM",
        "CFG scale": "4",
        "Seed": "77",
        "Size": "1024x1024",
        "Model": "stage_c_lite_bf16",
        "Stage B steps": "10",
        "Stage B CFG scale": "1.1",
        "Shift": "2",
        "Version": "cascade-studio 0.1",
    }


def test_a1111_values_with_separators_are_json_quoted_and_parse_back():
    request = GenerationRequest("x", seed=1)
    model = 'odd, "model": name\nv2'
    text = a1111_parameters(request, model, "0.1")
    assert 'Model: "odd, \\"model\\": name\\nv2"' in text
    assert len(text.splitlines()) == 2  # the newline inside the value is escaped
    assert parse_a1111(text)["Model"] == model


def test_a1111_awkward_prompts_parse_back():
    prompt = "portrait, oil: 0.8 weight, (masterpiece:1.2)\nsecond line, with commas\n  indented: third"
    negative = "blurry, low quality\nwatermark: strong"
    request = GenerationRequest(prompt, seed=5, negative_prompt=negative)
    parsed = parse_a1111(a1111_parameters(request, "stage_c_lite_bf16", "0.1"))
    assert parsed["prompt"] == prompt
    assert parsed["negative_prompt"] == negative
    assert parsed["Seed"] == "5"


def test_a1111_last_line_needs_three_pairs_to_be_parameters():
    parsed = parse_a1111("a castle\nstyle: gothic, mood: dark")
    assert parsed == {"prompt": "a castle\nstyle: gothic, mood: dark", "negative_prompt": ""}
    parsed = parse_a1111("a castle\nstyle: gothic, mood: dark, era: 1200")
    assert parsed["prompt"] == "a castle"
    assert (parsed["style"], parsed["mood"], parsed["era"]) == ("gothic", "dark", "1200")


def test_a1111_parse_is_linear_on_hostile_lines():
    hostile = ("word " * 200_000) + "\n" + ("ab cd " * 200_000)
    start = time.perf_counter()
    parsed = parse_a1111(hostile)
    assert time.perf_counter() - start < 5
    assert parsed["prompt"].startswith("word word")


# -- writing and reading PNGs ------------------------------------------------------------------------------


def test_save_and_read_back_our_own_png(tmp_path):
    request = GenerationRequest("a red fox, snow: deep\nline two", seed=12345, negative_prompt="blurry, text")
    texts = png_text_chunks(request, "stage_c_lite_bf16", "0.1.0")
    assert set(texts) == {"parameters", "cascade_studio"}
    ours = json.loads(texts["cascade_studio"])
    assert ours["schema_version"] == GenerationRequest.schema_version
    assert ours["generator"] == "cascade-studio 0.1.0"
    assert ours["request"] == request.to_dict()

    path = save_png_atomic(tmp_path / "out.png", small_image(), texts)
    assert path == tmp_path / "out.png"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    assert read_png_text(path) == texts  # newlines intact

    meta = read_metadata(path)
    assert meta.source == "cascade_studio"
    assert meta.request == request
    assert meta.error is None
    assert (meta.prompt, meta.negative_prompt, meta.seed) == (request.prompt, "blurry, text", 12345)
    assert (meta.steps, meta.cfg, meta.width, meta.height) == (20, 4.0, 1024, 1024)
    assert meta.model == "stage_c_lite_bf16"
    with Image.open(path) as im:
        assert im.size == (8, 8) and im.getpixel((0, 0)) == (200, 40, 10)
    assert meta.extra["device"] is None and meta.extra["precision"] is None  # not given: not recorded


def test_the_device_and_precision_that_made_an_image_are_recorded(tmp_path):
    request = GenerationRequest("a red fox", seed=7)
    texts = png_text_chunks(request, "demo", "0.1", device="cpu", precision="bfloat16")
    assert json.loads(texts["cascade_studio"])["precision"] == "bfloat16"
    meta = read_metadata(save_png_atomic(tmp_path / "a.png", small_image(), texts))
    assert (meta.extra["device"], meta.extra["precision"]) == ("cpu", "bfloat16")
    assert meta.request == request


def test_each_image_of_a_batch_records_its_own_seed(tmp_path):
    batch = GenerationRequest("fox", seed=100, batch_size=3)
    with pytest.raises(ValueError, match="for_image"):
        png_text_chunks(batch, "m", "0.1")
    for i in range(3):
        path = save_png_atomic(tmp_path / f"{i}.png", small_image(), png_text_chunks(batch.for_image(i), "m", "0.1"))
        recalled = read_metadata(path).request
        assert recalled == batch.for_image(i)
        assert recalled.image_seeds() == [100 + i]


def test_non_latin1_text_is_written_as_itxt_and_read_back_exactly(tmp_path):
    request = GenerationRequest("桜の木, café: ✓\nзима", seed=1, negative_prompt="ぼやけ")
    texts = png_text_chunks(request, "stage_c_lite_bf16", "0.1")
    path = save_png_atomic(tmp_path / "u.png", small_image(), texts)
    with Image.open(path) as im:
        im.load()
        assert isinstance(im.text["parameters"], PngImagePlugin.iTXt)
        assert not isinstance(im.text["cascade_studio"], PngImagePlugin.iTXt)  # ASCII JSON stays tEXt
    assert read_png_text(path) == texts
    meta = read_metadata(path)
    assert meta.request == request
    parsed = parse_a1111(read_png_text(path)["parameters"])
    assert (parsed["prompt"], parsed["negative_prompt"]) == (request.prompt, "ぼやけ")


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png_atomic(tmp_path / "out.png", small_image(), {"parameters": "x"})
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    save_png_atomic(target, small_image(), {"parameters": "old"})
    before = target.read_bytes()

    def failing_replace(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(metadata.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename refused"):
        save_png_atomic(target, small_image(), {"parameters": "new"})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_save_rejects_bad_keys(tmp_path):
    with pytest.raises(ValueError):
        save_png_atomic(tmp_path / "k.png", small_image(), {"": "x"})
    with pytest.raises(ValueError):
        save_png_atomic(tmp_path / "k.png", small_image(), {"k" * 80: "x"})
    assert list(tmp_path.iterdir()) == []


def test_reads_text_after_the_image_data_and_all_chunk_kinds(tmp_path):
    itxt = b"late\x00\x00\x00\x00\x00" + "après ✓".encode()
    ztxt = b"zipped\x00\x00" + zlib.compress(b"line one\nline two")
    path = png_with_chunks(tmp_path, [chunk(b"tEXt", b"early\x00first")], [chunk(b"iTXt", itxt), chunk(b"zTXt", ztxt)])
    assert read_png_text(path) == {"early": "first", "late": "après ✓", "zipped": "line one\nline two"}


def test_utf8_written_into_text_chunks_is_recovered(tmp_path):
    path = png_with_chunks(tmp_path, [chunk(b"tEXt", "parameters\x00été\nSteps: 1, Seed: 2, CFG scale: 3".encode())])
    assert read_png_text(path)["parameters"].startswith("été\n")
    latin1 = png_with_chunks(tmp_path, [chunk(b"tEXt", "k\x00café".encode("latin-1"))], name="l.png")
    assert read_png_text(latin1) == {"k": "café"}


def test_oversized_broken_and_bogus_chunks_are_skipped(tmp_path):
    good = chunk(b"tEXt", b"good\x00yes")
    big = chunk(b"tEXt", b"big\x00" + b"a" * 5000)
    bad_crc = chunk(b"tEXt", b"crc\x00no")[:-4] + b"\x00\x00\x00\x00"
    bomb = chunk(b"zTXt", b"bomb\x00\x00" + zlib.compress(b"\x00" * (8 * 1024 * 1024)))
    broken_itxt = chunk(b"iTXt", b"itxt\x00\x01\x05junk")
    path = png_with_chunks(tmp_path, [good, big, bad_crc, bomb, broken_itxt])
    assert read_png_text(path, max_bytes=1000) == {"good": "yes"}
    assert read_png_text(path)["big"] == "a" * 5000


def test_truncated_and_foreign_files(tmp_path):
    path = png_with_chunks(tmp_path, [chunk(b"tEXt", b"a\x00b")])
    truncated = tmp_path / "t.png"
    truncated.write_bytes(path.read_bytes()[:60])
    assert read_png_text(truncated) == {"a": "b"}
    jpeg = tmp_path / "j.jpg"
    small_image().save(jpeg)
    assert read_png_text(jpeg) == {}
    assert read_metadata(jpeg).source == "unknown"
    plain = tmp_path / "plain.png"
    small_image().save(plain)
    meta = read_metadata(plain)
    assert (meta.source, meta.width, meta.height, meta.raw) == ("unknown", 8, 8, {})
    with pytest.raises(OSError):
        read_png_text(tmp_path / "missing.png")


# -- our own chunk, damaged --------------------------------------------------------------------------------


def test_corrupt_own_chunk_falls_back_to_parameters():
    request = GenerationRequest("fox", seed=4)
    texts = png_text_chunks(request, "stage_c_lite_bf16", "0.1")
    texts["cascade_studio"] = texts["cascade_studio"][:-5]
    meta = interpret_text_chunks(texts)
    assert meta.source == "cascade_studio"
    assert meta.request is None
    assert meta.error is not None
    assert (meta.prompt, meta.seed, meta.steps, meta.model) == ("fox", 4, 20, "stage_c_lite_bf16")


def test_newer_own_chunk_says_so():
    texts = png_text_chunks(GenerationRequest("fox", seed=4), "m", "0.1")
    data = json.loads(texts["cascade_studio"])
    data["schema_version"] = data["request"]["schema_version"] = 99
    texts["cascade_studio"] = json.dumps(data)
    meta = interpret_text_chunks(texts)
    assert meta.request is None
    assert "newer" in meta.error
    assert meta.prompt == "fox"


def test_invalid_own_request_is_not_recalled():
    texts = png_text_chunks(GenerationRequest("fox", seed=4), "m", "0.1")
    data = json.loads(texts["cascade_studio"])
    data["request"]["stage_c"]["steps"] = -3
    texts["cascade_studio"] = json.dumps(data)
    meta = interpret_text_chunks(texts)
    assert meta.request is None and "stage_c.steps" in meta.error


# -- other tools -------------------------------------------------------------------------------------------

EXPECTED = {
    "a1111_parameters.png": dict(
        source="a1111",
        prompt="photo of a duck",
        negative_prompt="monochrome",
        steps=15,
        sampler="UniPC",
        cfg=5.0,
        seed=235284042,
        width=512,
        height=400,
        model="realistic_realisticVisionV20_v20",
        extra={"Model hash": "c0d1994c73"},
    ),
    "comfyui_img2img.png": dict(
        source="comfyui",
        seed=280823642470253,
        steps=20,
        cfg=8.0,
        prompt="photograph of victorian woman with wings, sky clouds, meadow grass",
        negative_prompt="watermark, text",
        model="v1-5-pruned-emaonly.ckpt",
        extra={"denoise": 0.87},
    ),
    "invokeai_metadata.png": dict(
        source="invokeai",
        prompt="digital artwork, oil painting. painterly brushstrokes, holidays,",
        seed=3293022630,
        steps=35,
        cfg=8.0,
        width=1024,
        height=1024,
        model="juggernautXL",
        extra={"generation_mode": "sdxl_txt2img"},
    ),
    "comfyui_stable_cascade_text_to_image.png": dict(
        source="comfyui",
        width=1024,
        height=1024,
        seed=314307448448003,
        steps=20,
        cfg=4.0,
        prompt=CASCADE_PROMPT,
        negative_prompt="text, watermark",
        model="stable_cascade_stage_c.safetensors",
        extra={
            "stage_b_steps": 10,
            "stage_b_cfg": 1.1,
            "stage_b_model": "stable_cascade_stage_b.safetensors",
            "stable_cascade": True,
        },
    ),
    "comfyui_stable_cascade_inpaint.png": dict(
        source="comfyui",
        width=1024,
        height=768,
        seed=596288924835940,
        steps=20,
        cfg=4.0,
        prompt=CASCADE_PROMPT,
        negative_prompt="text, watermark",
        model="stable_cascade_stage_c.safetensors",
        extra={
            "controlnet": "stable_cascade_inpainting.safetensors",
            "controlnet_strength": 1.0,
            "stage_b_steps": 10,
            "stage_b_cfg": 1.1,
        },
    ),
    "comfyui_stable_cascade_image_to_image.png": dict(
        source="comfyui",
        width=768,
        height=768,
        seed=321653652654528,
        steps=20,
        cfg=4.0,
        prompt=CASCADE_PROMPT,
        negative_prompt="text, watermark",
        model="stable_cascade_stage_c.safetensors",
        extra={"denoise": 0.6, "stage_b_steps": 10, "stage_b_cfg": 1.1},
    ),
}


def check(meta, expected):
    for name, value in expected.items():
        if name == "extra":
            for key, extra_value in value.items():
                assert meta.extra.get(key) == pytest.approx(extra_value), key
        else:
            assert getattr(meta, name) == value, name
    assert meta.request is None


def test_every_fixture_is_covered():
    assert sorted(p.name for p in FIXTURES.glob("*.png")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_yields_what_its_readme_says(name):
    meta = read_metadata(FIXTURES / name)
    check(meta, EXPECTED[name])
    assert meta.raw == read_png_text(FIXTURES / name)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if n.startswith("comfyui_stable_cascade")))
def test_comfyui_workflow_alone_gives_the_same_prompts_and_settings(name):
    texts = read_png_text(FIXTURES / name)
    del texts["prompt"]
    expected = {k: v for k, v in EXPECTED[name].items() if k not in ("width", "height")}
    if name.endswith("text_to_image.png") or name.endswith("inpaint.png"):
        expected["width"], expected["height"] = EXPECTED[name]["width"], EXPECTED[name]["height"]
    check(interpret_text_chunks(texts), expected)


def test_comfyui_graph_with_a_cycle_and_links_to_nowhere_terminates():
    graph = {
        "1": {"class_type": "KSampler", "inputs": {"seed": ["5", 0], "steps": 9, "cfg": 3.0,
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "model": ["4", 0], "latent_image": ["99", 0]}},
        "2": {"class_type": "Loop", "inputs": {"conditioning": ["3", 0]}},
        "3": {"class_type": "Loop", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0]}},
        "5": {"class_type": "PrimitiveNode", "inputs": {"value": 31337}},
    }  # fmt: skip
    meta = interpret_text_chunks({"prompt": json.dumps(graph)})
    assert (meta.source, meta.prompt, meta.seed, meta.steps, meta.model) == ("comfyui", "", 31337, 9, None)


def test_fooocus_json_parameters():
    data = {
        "prompt": "a fox",
        "negative_prompt": "blurry",
        "resolution": "(1152, 896)",
        "seed": "1234567890",
        "steps": 30,
        "guidance_scale": 4.5,
        "sampler": "dpmpp_2m_sde_gpu",
        "base_model": "juggernautXL_v8",
        "metadata_scheme": "fooocus",
    }
    meta = interpret_text_chunks({"parameters": json.dumps(data), "fooocus_scheme": "fooocus"})
    assert meta.source == "fooocus"
    assert (meta.prompt, meta.negative_prompt, meta.seed, meta.steps, meta.cfg) == (
        "a fox",
        "blurry",
        1234567890,
        30,
        4.5,
    )
    assert (meta.width, meta.height, meta.model, meta.sampler) == (1152, 896, "juggernautXL_v8", "dpmpp_2m_sde_gpu")


def test_swarmui_json_parameters():
    params = {"prompt": "a fox", "negativeprompt": "", "model": "Flux/flux1-dev", "seed": 7, "steps": 25,
              "cfgscale": 1.0, "width": 512, "height": 768, "sampler": "euler"}  # fmt: skip
    meta = interpret_text_chunks({"parameters": json.dumps({"sui_image_params": params})})
    assert meta.source == "swarmui"
    assert (meta.prompt, meta.seed, meta.steps, meta.cfg, meta.width, meta.height) == ("a fox", 7, 25, 1.0, 512, 768)
    assert meta.model == "Flux/flux1-dev"


@pytest.mark.parametrize(
    "texts",
    [
        {"invokeai_metadata": "{broken"},
        {"invokeai_metadata": "[1, 2]"},
        {"prompt": "not json"},
        {"prompt": json.dumps({"1": {"inputs": "nope"}})},
        {"workflow": json.dumps({"nodes": "nope"})},
        {"parameters": '{"x": ' * 100_000},
        {"cascade_studio": "[" * 100_000},
        {"Software": "an editor"},
    ],
)
def test_malformed_metadata_never_raises(texts):
    meta = interpret_text_chunks(texts)
    assert meta.source in metadata.SOURCES
    assert meta.request is None
