"""The session model behind the prompt panel, and the typed settings it persists through."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import QSettings

from cascade_studio.core.geometry import snap_size
from cascade_studio.core.request import GenerationRequest, LoraUse, StageSettings
from cascade_studio.state.session import CUSTOM, SIZE_PRESETS, SessionModel
from cascade_studio.state.settings import Settings


@pytest.fixture
def settings(tmp_path):
    store = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    return Settings(store, models_dir_default=tmp_path / "models", output_dir_default=tmp_path / "out")


def _reopen(settings: Settings, tmp_path) -> Settings:
    settings.sync()
    store = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    return Settings(store, models_dir_default=tmp_path / "models", output_dir_default=tmp_path / "out")


# -- sizes ---------------------------------------------------------------------------------------------


def test_presets_are_valid_sizes_near_one_megapixel_with_their_aspect_ratio():
    assert SIZE_PRESETS["1:1"] == (1024, 1024)
    assert {"1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"} <= set(SIZE_PRESETS)
    for name, (w, h) in SIZE_PRESETS.items():
        assert w % 128 == 0 and h % 128 == 0, name
        assert 0.8e6 <= w * h <= 1.25e6, name
        a, b = (int(v) for v in name.split(":"))
        assert abs((w / h) / (a / b) - 1) < 0.09, name
        assert GenerationRequest("x", seed=1, width=w, height=h).errors() == []


def test_choosing_a_preset_sets_the_size_and_a_size_selects_its_preset(qtbot):
    session = SessionModel()
    with qtbot.waitSignal(session.width_changed) as width:
        session.size_preset = "16:9"
    assert (session.width, session.height) == SIZE_PRESETS["16:9"] and width.args == [SIZE_PRESETS["16:9"][0]]
    session.set_size(*SIZE_PRESETS["3:4"])
    assert session.size_preset == "3:4"
    session.set_size(1280, 1280)
    assert session.size_preset == CUSTOM and (session.width, session.height) == (1280, 1280)
    session.swap_size()
    session.set_size(896, 1152)
    session.swap_size()
    assert (session.width, session.height, session.size_preset) == (1152, 896, "4:3")
    with pytest.raises(ValueError, match="size_preset"):
        session.size_preset = "5:4"


def test_a_custom_size_is_snapped_and_the_note_says_why(qtbot):
    session = SessionModel()
    with qtbot.waitSignal(session.size_note_changed) as note:
        session.set_size(1000, 700)
    assert (session.width, session.height) == (1024, 640)
    assert note.args == [snap_size(1000, 700)[2]] and "multiple of 128" in session.size_note
    session.width = 8192
    assert session.width == 4096 and "outside" in session.size_note
    session.set_size(768, 768)
    assert session.size_note == ""
    assert session.request().width == 768


# -- seeds and requests ---------------------------------------------------------------------------------


def _session(**values) -> SessionModel:
    session = SessionModel()
    session.prompt = "a lighthouse"
    for name, value in values.items():
        setattr(session, name, value)
    return session


def test_count_makes_that_many_jobs_each_a_valid_request_of_the_panel_values():
    session = _session(count=3, batch_size=2, steps_c=7, cfg_c=5.5, steps_b=4, cfg_b=1.3, shift=1.5,
                       variant="full", sampler="ddim", negative="blurry")  # fmt: skip
    session.set_size(1152, 896)
    jobs = session.requests()
    assert len(jobs) == 3
    for job in jobs:
        assert job.errors() == []
        assert (job.prompt, job.negative_prompt, job.width, job.height) == ("a lighthouse", "blurry", 1152, 896)
        assert job.batch_size == 2 and job.stage_c == StageSettings(7, 5.5, 1.5) and job.stage_b.steps == 4
        assert (job.stage_b.cfg, job.variant, job.sampler, job.mode, job.source_image) == (1.3, "full", "ddim",
                                                                                             "text", None)  # fmt: skip


def test_random_seeds_differ_per_job_and_the_seed_field_shows_the_first():
    session = _session(count=4, seed_policy="random", seed=5)
    jobs = session.requests()
    seeds = [job.seed for job in jobs]
    assert len(set(seeds)) == 4 and all(0 <= s < 2**31 for s in seeds)
    assert session.seed == seeds[0]
    assert [job.seed for job in session.requests()] != seeds


def test_fixed_seed_repeats_the_same_press():
    session = _session(count=3, batch_size=2, seed_policy="fixed", seed=100)
    first = [job.seed for job in session.requests()]
    assert first == [100, 102, 104]  # every image of every job has its own seed
    assert [job.seed for job in session.requests()] == first and session.seed == 100


def test_increment_continues_after_the_last_image_of_the_press(qtbot):
    session = _session(count=2, batch_size=3, seed_policy="increment", seed=10)
    with qtbot.waitSignal(session.seed_changed) as changed:
        assert [job.seed for job in session.requests()] == [10, 13]
    assert changed.args == [16] and session.seed == 16
    assert [job.seed for job in session.requests()] == [16, 19]
    assert session.seed == 22


def test_image_modes_need_a_source_and_carry_it_while_text_mode_drops_it(tmp_path):
    session = _session(mode="img2img", strength=0.6)
    with pytest.raises(ValueError, match="source_image is required"):
        session.requests()
    session.source_image = str(tmp_path / "in.png")
    (job,) = session.requests()
    assert (job.mode, job.source_image, job.strength) == ("img2img", str(tmp_path / "in.png"), 0.6)
    session.mode = "variation"
    assert session.requests()[0].source_image == str(tmp_path / "in.png")
    session.mode = "text"
    assert session.requests()[0].source_image is None


def test_using_a_source_image_switches_text_mode_to_image_to_image():
    session = _session()
    session.use_source_image("/pictures/a.png")
    assert (session.mode, session.source_image) == ("img2img", "/pictures/a.png")
    session.mode = "variation"
    session.use_source_image("/pictures/b.png")
    assert (session.mode, session.source_image) == ("variation", "/pictures/b.png")


def test_fields_check_their_values():
    session = SessionModel()
    for name, value in (("seed_policy", "sometimes"), ("variant", "huge"), ("mode", "sketch"), ("steps_c", 2.5)):
        with pytest.raises(ValueError, match=name):
            setattr(session, name, value)
    session.batch_size = 1000
    assert session.batch_size == 16  # clamped to what the panel offers
    session.seed = 2**64 + 5
    assert session.seed == 2**64 - 1


def test_apply_request_recalls_every_field(qtbot):
    request = GenerationRequest(
        prompt="a red fox",
        negative_prompt="text",
        seed=2**40 + 3,
        width=1536,
        height=640,
        batch_size=3,
        stage_c=StageSettings(31, 6.5, 3.0),
        stage_b=StageSettings(12, 1.7, 1.5),
        variant="full",
        mode="variation",
        source_image="/pictures/fox.png",
        strength=0.35,
        sampler="ddim",
        loras=(("demo-style", 0.8), ("/loras/film.safetensors", -0.25)),
    )
    assert set(request.to_dict()) - {"schema_version"} == {
        "prompt", "negative_prompt", "seed", "width", "height", "batch_size", "stage_c", "stage_b", "variant",
        "mode", "source_image", "strength", "sampler", "mask_image", "control_image", "control_strength",
        "mask_grow", "mask_feather", "context", "context_padding", "outpaint", "method",
        "loras",
    }, "a new request field needs recalling here too"  # fmt: skip
    session = _session(seed_policy="random", count=2)
    with qtbot.waitSignal(session.prompt_changed):
        session.apply_request(request)
    # LoRAs come back into the panel's LoRA list; the prompt (and any <lora:…> tags in it) stays as it was
    assert session.prompt == "a red fox" and session.loras == request.loras
    assert session.request() == request
    tagged = request.with_(prompt="a red fox <lora:ink:0.5>", loras=(("C:\\loras\\x.safetensors", 0.5),))
    session.apply_request(tagged)
    assert session.prompt == "a red fox <lora:ink:0.5>" and session.loras == (LoraUse("C:\\loras\\x.safetensors", 0.5),)
    assert session.request() == tagged
    session.apply_request(request)
    assert session.seed_policy == "fixed" and session.size_preset == "21:9"
    assert [job.seed for job in session.requests()] == [request.seed, request.seed + 3]
    # every masked-mode field, in each of the new modes
    masked = request.with_(loras=(), mode="outpaint", mask_image="/masks/m.png", control_strength=1.4, mask_grow=-6,
                           mask_feather=24, context="mask", context_padding=96, outpaint=(128, 0, 256, 64),
                           method="latent_blend", strength=0.9)  # fmt: skip
    session.apply_request(masked)
    assert session.request() == masked and session.outpaint == (128, 0, 256, 64)
    inpaint = masked.with_(mode="inpaint", outpaint=None, method="controlnet", strength=0.7)
    session.apply_request(inpaint)
    assert session.request() == inpaint and session.outpaint is None
    canny = request.with_(
        loras=(), mode="canny", source_image=None, control_image="/edges/house.png", control_strength=0.6
    )
    session.apply_request(canny)
    assert session.request() == canny and session.chosen_image == "/edges/house.png"
    upscale = request.with_(loras=(), mode="upscale", stage_c=StageSettings(20, 1.0, 2.0), width=2048, height=1024)
    session.apply_request(upscale)
    assert session.request() == upscale


def test_outpaint_extents_exist_only_in_outpaint_mode_and_masked_modes_start_at_full_strength():
    session = _session(strength=0.5, method="latent_blend")
    assert session.method == "latent_blend" and session.outpaint is None
    session.mode = "inpaint"
    assert session.strength == 1.0 and session.outpaint is None
    session.mode = "outpaint"
    assert session.outpaint is not None and any(session.outpaint) and session.strength == 1.0
    session.outpaint = (0, 128, 0, 128)
    assert session.request().outpaint == (0, 128, 0, 128)
    session.mode = "img2img"
    assert session.outpaint is None and session.request().outpaint is None and session.method == "auto"
    with pytest.raises(ValueError, match="outpaint"):
        session.outpaint = (1, 2, 3)


# -- history --------------------------------------------------------------------------------------------


def test_history_steps_back_and_forward_and_restores_what_was_typed(settings):
    session = SessionModel(settings)
    assert not session.history_previous() and not session.can_go_previous
    for prompt in ("one", "two", "three"):
        session.prompt = prompt
        session.negative = f"not {prompt}"
        session.requests()
    session.prompt, session.negative = "draft", ""
    assert session.history_previous() and (session.prompt, session.negative) == ("three", "not three")
    assert session.history_previous() and session.prompt == "two"
    assert session.history_previous() and session.prompt == "one"
    assert not session.history_previous() and session.prompt == "one"
    assert session.history_next() and session.prompt == "two"
    assert session.history_next() and session.history_next() and (session.prompt, session.negative) == ("draft", "")
    assert not session.can_go_next and not session.history_next()


def test_history_skips_the_prompt_just_generated_and_keeps_one_copy_of_each(settings):
    session = SessionModel(settings)
    for prompt in ("one", "two", "one"):
        session.prompt = prompt
        session.requests()
    assert [e["prompt"] for e in session.history] == ["two", "one"]
    assert session.history_previous() and session.prompt == "two"  # "one" is already in the box


def test_history_survives_a_restart_through_the_settings(settings, tmp_path):
    session = SessionModel(settings)
    session.prompt, session.negative = "a castle at dawn", "fog"
    session.requests()
    again = SessionModel(_reopen(settings, tmp_path))
    assert again.history == [{"prompt": "a castle at dawn", "negative": "fog"}]
    assert again.history_previous() and (again.prompt, again.negative) == ("a castle at dawn", "fog")


def test_state_round_trips_and_ignores_values_that_no_longer_fit():
    session = _session(seed_policy="increment", seed=77, count=5, steps_c=12, mode="img2img", strength=0.4,
                       source_image="/x.png", variant="full")  # fmt: skip
    session.loras = (("ink", 0.6), ("/loras/film.safetensors", -1))
    session.set_size(1408, 768)
    state = json.loads(json.dumps(session.state()))  # as Settings.session_state stores it: tuples become lists
    again = SessionModel()
    again.restore_state(state)
    assert again.state() == session.state() and again.size_preset == "16:9"
    assert again.loras == (LoraUse("ink", 0.6), LoraUse("/loras/film.safetensors", -1.0))
    broken = dict(state, mode="sketch", steps_c="many", width="wide", loras=[["ink"]])
    third = SessionModel()
    third.restore_state(broken)
    assert (third.mode, third.steps_c, third.width, third.variant) == ("text", 20, 1024, "full")
    assert third.loras == ()
    older = SessionModel()  # a state saved before the LoRA list was kept
    older.restore_state({k: v for k, v in state.items() if k != "loras"})
    assert older.loras == () and older.variant == "full"


# -- settings -------------------------------------------------------------------------------------------


def test_settings_defaults(settings, tmp_path):
    assert settings.models_dir == str(tmp_path / "models") and settings.output_dir == str(tmp_path / "out")
    assert (settings.device, settings.dtype, settings.memory, settings.preview_every) == ("auto", "auto", "auto", 1)
    assert settings.compile is False
    assert settings.prompt_history == [] and settings.session_state == {}
    assert settings.window_geometry.isEmpty()


def test_settings_signal_changes_and_survive_a_reopen(settings, tmp_path, qtbot):
    changes = {
        "models_dir": str(tmp_path / "weights"),
        "output_dir": str(tmp_path / "images"),
        "device": "cuda:1",
        "dtype": "bf16",
        "memory": "sequential",
        "preview_every": 0,
        "compile": True,
        "thumbnail_size": 256,
    }
    for name, value in changes.items():
        with qtbot.waitSignal(getattr(settings, f"{name}_changed")) as signal:
            setattr(settings, name, value)
        assert signal.args == [value]
        with qtbot.assertNotEmitted(getattr(settings, f"{name}_changed")):
            setattr(settings, name, value)  # no change, no signal
    settings.prompt_history = [{"prompt": "only one", "negative": ""}]
    again = _reopen(settings, tmp_path)
    assert {name: getattr(again, name) for name in changes} == changes
    assert again.prompt_history == [{"prompt": "only one", "negative": ""}]


def test_settings_refuse_fp16_and_read_garbage_as_defaults(settings, tmp_path):
    with pytest.raises(ValueError, match="fp16"):
        settings.dtype = "fp16"
    store = settings.store
    for key, value in (("worker/device", "gpu0"), ("worker/dtype", "fp16"), ("worker/memory", "lots"),
                       ("worker/preview_every", "often"), ("worker/compile", "sometimes"),
                       ("gallery/thumbnail_size", "9999"),
                       ("session/prompt_history", "{not json"), ("session/state", "[1, 2]")):  # fmt: skip
        store.setValue(key, value)
    again = _reopen(settings, tmp_path)
    assert (again.device, again.dtype, again.memory, again.preview_every) == ("auto", "auto", "auto", 1)
    assert again.compile is False
    assert again.thumbnail_size == 512 and again.prompt_history == [] and again.session_state == {}
