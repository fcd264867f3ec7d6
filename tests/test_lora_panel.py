"""The prompt panel's LoRA list: the Add menu over <models dir>/lora/, rows bound to `SessionModel.loras`,
missing files flagged, and the list kept across restarts."""

from __future__ import annotations

import json

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QApplication

from cascade_studio.core.paths import LORA_FOLDER, find_lora_file, list_loras, lora_candidates
from cascade_studio.core.request import MAX_LORA_WEIGHT, GenerationRequest, LoraUse
from cascade_studio.state.session import SessionModel
from cascade_studio.ui.prompt_panel import PromptPanel
from tests.test_window import FakeService, _open, _settings


def _lora(models, name: str):
    folder = models / LORA_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    path.write_bytes(b"{}")  # listing only needs the file; the engine reads it at Generate
    return path


@pytest.fixture
def models(tmp_path):
    models = tmp_path / "models"
    _lora(models, "film-grain")
    _lora(models, "ink")
    (models / LORA_FOLDER / "notes.txt").write_text("not a LoRA")
    return models


@pytest.fixture
def panel(qtbot, models):
    panel = PromptPanel(SessionModel())
    panel.set_models_dir(models)
    qtbot.addWidget(panel)
    panel.resize(360, 900)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def _open_menu(panel) -> dict[str, object]:
    """Pop the Add menu up (as a click does, without its modal loop) and return its actions by text."""
    lora = panel.lora_list
    lora.menu.popup(lora.add_button.mapToGlobal(QPoint(0, lora.add_button.height())))
    actions = {a.text(): a for a in lora.menu.actions() if not a.isSeparator()}
    lora.menu.hide()
    return actions


def _rows(panel) -> list[tuple[str, float]]:
    return [(row.label.text(), row.weight_spin.value()) for row in panel.lora_list.rows]


def test_the_torch_free_lister_finds_safetensors_files_and_looks_names_up_as_the_engine_does(models, tmp_path):
    assert list_loras(models) == ["film-grain", "ink"] and list_loras(tmp_path / "nowhere") == []
    assert find_lora_file("ink", models) == models / "lora" / "ink.safetensors"
    assert find_lora_file("ink.safetensors", models) == models / "lora" / "ink.safetensors"
    assert find_lora_file(str(models / "lora" / "ink.safetensors"), tmp_path) == models / "lora" / "ink.safetensors"
    assert find_lora_file("ghost", models) is None
    assert lora_candidates("ghost", models) == [models / "lora" / "ghost.safetensors"]
    dotted = _lora(models, "style.v2")  # a stem with a dot is still a name, not a file name with a suffix
    assert "style.v2" in list_loras(models) and find_lora_file("style.v2", models) == dotted


def test_add_menu_lists_the_lora_folder_and_adds_a_row_bound_to_the_session(panel, models):
    session, lora = panel.session, panel.lora_list
    assert lora.rows == [] and lora.add_button.isVisibleTo(panel)  # empty: only the Add button
    actions = _open_menu(panel)
    assert [t for t in actions if t in ("film-grain", "ink", "notes")] == ["film-grain", "ink"]
    assert "Open LoRA folder" in actions
    actions["ink"].trigger()
    assert session.loras == (LoraUse("ink", 1.0),)
    assert _rows(panel) == [("ink", 1.0)] and lora.rows[0].isVisibleTo(panel) and not lora.rows[0].missing
    assert session.request().loras == (LoraUse("ink", 1.0),)
    assert session.request().validate().all_loras() == [LoraUse("ink", 1.0)]
    again = _open_menu(panel)  # a listed LoRA is shown ticked and is not added twice
    assert again["ink"].isChecked() and not again["ink"].isEnabled()
    again["film-grain"].trigger()
    assert session.loras == (LoraUse("ink", 1.0), LoraUse("film-grain", 1.0))
    _lora(models, "added-later")  # a file put there while the app runs shows up when the menu opens
    assert "added-later" in _open_menu(panel)


def test_changing_a_weight_updates_the_session_and_the_request(panel, qtbot):
    session = panel.session
    session.loras = (("ink", 1.0), ("film-grain", 0.5))
    spin = panel.lora_list.rows[1].weight_spin
    assert (spin.minimum(), spin.maximum(), spin.singleStep()) == (-MAX_LORA_WEIGHT, MAX_LORA_WEIGHT, 0.05)
    spin.stepDown()
    assert session.loras == (LoraUse("ink", 1.0), LoraUse("film-grain", 0.45))
    spin.setFocus()
    qtbot.waitUntil(lambda: QApplication.focusWidget() is spin.lineEdit() or spin.hasFocus())
    spin.selectAll()
    qtbot.keyClicks(spin, "-1.25")
    assert session.loras[1] == LoraUse("film-grain", 0.45)  # typing is committed on Return, not per keystroke
    qtbot.keyClick(spin, Qt.Key.Key_Return)
    assert session.loras == (LoraUse("ink", 1.0), LoraUse("film-grain", -1.25))
    assert session.request().loras == (LoraUse("ink", 1.0), LoraUse("film-grain", -1.25))
    assert panel.lora_list.rows[1].weight_spin is spin  # a weight change keeps the row (and the focus)


def test_remove_takes_the_lora_out_of_the_session(panel, qtbot):
    session = panel.session
    session.loras = (("ink", 1.0), ("film-grain", 0.5), ("ghost", 2.0))
    qtbot.mouseClick(panel.lora_list.rows[1].remove_button, Qt.MouseButton.LeftButton)
    assert session.loras == (LoraUse("ink", 1.0), LoraUse("ghost", 2.0)) and _rows(panel) == [
        ("ink", 1.0),
        ("ghost", 2.0),
    ]
    panel.lora_list.rows[0].remove_button.click()
    panel.lora_list.rows[0].remove_button.click()
    assert session.loras == () and panel.lora_list.rows == [] and session.request().loras == ()


def test_the_rows_follow_the_model_setting_and_recall(panel):
    session = panel.session
    session.loras = (("ink", 0.8), ("film-grain", -0.3))
    assert _rows(panel) == [("ink", 0.8), ("film-grain", -0.3)]
    first = panel.lora_list.rows[0]
    session.loras = (("ink", 0.6), ("film-grain", -0.3))
    assert panel.lora_list.rows[0] is first and first.weight_spin.value() == 0.6
    request = GenerationRequest("a harbour at night", seed=5, loras=(("film-grain", 0.7),))
    session.apply_request(request)
    assert _rows(panel) == [("film-grain", 0.7)] and session.prompt == "a harbour at night"
    assert session.request() == request.with_(seed=5)
    session.loras = ()
    assert panel.lora_list.rows == []


def test_a_lora_whose_file_is_missing_is_flagged_until_it_appears(panel, models):
    session, lora = panel.session, panel.lora_list
    session.loras = (("ink", 1.0), ("ghost", 0.5))
    ink, ghost = lora.rows
    assert not ink.missing and not ink.icon.isVisibleTo(panel)
    assert ghost.missing and ghost.icon.isVisibleTo(panel)
    assert (
        "not found in" in ghost.label.toolTip() and str(models / "lora" / "ghost.safetensors") in ghost.label.toolTip()
    )
    assert "not found" in ghost.accessibleName() and "ff6b6b" in ghost.label.styleSheet()
    assert lora.rows_missing() == ["ghost"]
    _lora(models, "ghost")
    _open_menu(panel)  # opening the menu looks again
    assert not ghost.missing and not ghost.icon.isVisibleTo(panel) and lora.rows_missing() == []
    panel.set_models_dir(models.parent / "elsewhere")  # another models folder holds neither
    assert lora.rows_missing() == ["ink", "ghost"]


def test_an_empty_folder_says_where_lora_files_go(panel, tmp_path):
    panel.set_models_dir(tmp_path / "empty-models")
    actions = _open_menu(panel)
    empty = next(a for text, a in actions.items() if text.startswith("No LoRA files in"))
    assert str(tmp_path / "empty-models" / "lora") in empty.text() and not empty.isEnabled()
    assert "Open LoRA folder" in actions and actions["Open LoRA folder"].isEnabled()


def test_prompt_tags_stay_in_the_prompt_and_are_mentioned_under_the_list(panel):
    session, lora = panel.session, panel.lora_list
    session.prompt = "a castle <lora:ink:0.6>"
    assert session.loras == () and lora.rows == []
    assert lora.tags_hint.isVisibleTo(panel) and "ink 0.6" in lora.tags_hint.text()
    session.loras = (("film-grain", 0.5),)
    assert session.request().validate().all_loras() == [LoraUse("film-grain", 0.5), LoraUse("ink", 0.6)]
    session.prompt = "a castle"
    assert not lora.tags_hint.isVisibleTo(panel)
    session.prompt = "a castle <lora:ink:strong>"  # not a form we read: said so, not silently encoded as text
    assert lora.unread_hint.isVisibleTo(panel) and not lora.tags_hint.isVisibleTo(panel)
    assert lora.unread_hint.text() == "Not read, stays in the prompt as text: <lora:ink:strong>"
    session.prompt = "a castle <lora:ink:0.6> <lora:ink:strong>"
    assert lora.tags_hint.text() == "From prompt tags: ink 0.6" and lora.unread_hint.isVisibleTo(panel)
    session.prompt = "a castle <lora:ink:0.6>"
    assert not lora.unread_hint.isVisibleTo(panel)


def test_keyboard_and_accessibility(panel):
    panel.session.loras = (("ink", 1.0),)
    row, lora = panel.lora_list.rows[0], panel.lora_list
    assert panel.lora_label.buddy() is lora.add_button
    for widget in (row.weight_spin, row.remove_button, lora.add_button):
        assert widget.toolTip() and widget.accessibleName(), widget
        assert widget.focusPolicy() & Qt.FocusPolicy.TabFocus, widget
    assert "ink" in row.weight_spin.accessibleName() and "ink" in row.remove_button.accessibleName()


def test_the_list_survives_a_restart_and_old_state_without_it_still_loads(qtbot, tmp_path, models):
    FakeService.made.clear()
    settings = _settings(tmp_path)
    settings.models_dir = str(models)
    first = _open(qtbot, settings)
    assert first.prompt_panel.lora_list.models_dir == models
    _open_menu(first.prompt_panel)["ink"].trigger()
    first.prompt_panel.lora_list.rows[0].weight_spin.setValue(0.65)
    first.session.loras = (*first.session.loras, ("ghost", -0.5))
    first.close()
    stored = json.loads(_settings(tmp_path).store.value("session/state"))
    assert stored["loras"] == [["ink", 0.65], ["ghost", -0.5]]

    second = _open(qtbot, _settings(tmp_path))
    assert second.session.loras == (LoraUse("ink", 0.65), LoraUse("ghost", -0.5))
    assert _rows(second.prompt_panel) == [("ink", 0.65), ("ghost", -0.5)]
    assert second.prompt_panel.lora_list.rows_missing() == ["ghost"]
    second.close()

    old = SessionModel()  # a state saved before the list existed
    old.restore_state({k: v for k, v in SessionModel().state().items() if k != "loras"} | {"prompt": "kept"})
    assert old.loras == () and old.prompt == "kept"
    broken = SessionModel()
    broken.restore_state({"loras": "ink", "prompt": "still kept"})
    assert broken.loras == () and broken.prompt == "still kept"


def _lora_with_metadata(models, name: str, metadata: dict[str, str]):
    import numpy as np
    from safetensors.numpy import save_file

    folder = models / LORA_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({"weights.0.lora_down": np.zeros((1, 4), np.float32)}, str(path), metadata=metadata)
    return path


KOHYA_METADATA = {
    "modelspec.trigger_phrase": "ohwx man, red scarf",
    "ss_output_name": "ohwx-v2",
    "ss_tag_frequency": json.dumps(
        {"10_ohwx": {"ohwx man": 20, "outdoors": 5, "Red Scarf": 3}, "5_reg": {"outdoors": 4, "portrait": 9}}
    ),
    "train_tokens": json.dumps([["[fernando]", "^dog</w>"], ["^snail", None]]),
}


def test_lora_info_reads_trigger_words_tags_and_title_from_the_header(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from cascade_studio.core.lora_info import read_lora_info

    info = read_lora_info(_lora_with_metadata(tmp_path, "ohwx", KOHYA_METADATA))
    assert info.title == "ohwx-v2"
    assert info.trigger_words == ("ohwx man", "red scarf", "[fernando]")  # "^snail" is a regex, not a new token
    assert info.tags == ("ohwx man", "outdoors", "portrait", "Red Scarf")  # counts summed over folders (9, 9: by name)
    assert info.words == ("ohwx man", "red scarf", "[fernando]", "outdoors", "portrait")

    assert info.changes == ("Stage C",)
    plain = _lora_with_metadata(tmp_path, "plain", {})
    assert read_lora_info(plain).words == () and read_lora_info(plain).title is None
    both = tmp_path / "both.safetensors"
    te, unet = "lora_prior_te_text_model_encoder_layers_0_mlp_fc1", "lora_prior_unet_clf_1"
    save_file(
        {f"{te}.lora_down.weight": np.zeros((1, 4), np.float32), f"{unet}.alpha": np.ones((), np.float32)}, str(both)
    )
    assert read_lora_info(both).changes == ("Stage C", "text encoder")
    peft = tmp_path / "peft.safetensors"
    save_file(
        {"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": np.zeros((1, 4), np.float32)}, str(peft)
    )
    assert read_lora_info(peft).changes == ("text encoder",)
    simpletuner = _lora_with_metadata(tmp_path, "st", {"trained_words": "zxq cat, a painting by zxq"})
    assert read_lora_info(simpletuner).trigger_words == ("zxq cat", "a painting by zxq")
    bundled = tmp_path / "bundled.safetensors"
    save_file({"bundle_emb.<zxq>.clip_g": np.zeros((2, 4), np.float32)}, str(bundled))
    assert read_lora_info(bundled).trigger_words == ("<zxq>",) and read_lora_info(bundled).changes == (
        "learned tokens",
    )
    plain.with_suffix(".json").write_text(json.dumps({"train_tokens": [["<sks>", None]]}))
    assert read_lora_info(plain).trigger_words == ("<sks>",)  # named in the sidecar, as the engine reads them
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        read_lora_info(garbage)


def test_a_rows_words_menu_adds_trigger_words_and_tags_to_the_prompt(panel, models, qtbot):
    path = _lora_with_metadata(models, "ohwx", KOHYA_METADATA)
    session = panel.lora_list.session
    session.prompt = "a portrait of OHWX MAN"
    session.loras = (("ohwx", 1.0), ("ink", 0.5))
    row, ink = panel.lora_list.rows
    qtbot.waitUntil(lambda: row.words_button.isVisible(), timeout=5_000)  # read on the thread pool
    assert "Trigger words: ohwx man, red scarf, [fernando]" in row.label.toolTip()
    assert "Changes: Stage C" in row.label.toolTip()
    assert "ohwx-v2" in row.label.toolTip() and str(path) in row.label.toolTip()
    assert not ink.words_button.isVisible()  # ink's file is not a safetensors file: it says why instead
    qtbot.waitUntil(lambda: "Could not read its header" in ink.label.toolTip(), timeout=5_000)

    actions = {a.text(): a for a in row.words_menu.actions() if not a.isSeparator() and a.text()}
    assert list(actions) == ["All trigger words", "ohwx man", "red scarf", "[fernando]", "outdoors", "portrait"]
    actions["All trigger words"].trigger()  # "ohwx man" is already there, in another case
    assert session.prompt == "a portrait of OHWX MAN, red scarf, [fernando]"
    actions["portrait"].trigger()  # a whole word already in the prompt
    actions["outdoors"].trigger()
    actions["outdoors"].trigger()
    assert session.prompt == "a portrait of OHWX MAN, red scarf, [fernando], outdoors"

    _lora_with_metadata(models, "ohwx", {"modelspec.trigger_phrase": "zxq style"})  # retrained in place
    panel.lora_list.refresh_found()
    qtbot.waitUntil(lambda: "Trigger words: zxq style" in panel.lora_list.rows[0].label.toolTip(), timeout=5_000)


def _lora_with_tensors(models, name: str, shapes: dict[str, tuple[int, ...]]):
    import numpy as np
    from safetensors.numpy import save_file

    folder = models / LORA_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({k: np.zeros(shape, np.float32) for k, shape in shapes.items()}, str(path))
    return path


def test_check_layout_tells_stable_cascade_loras_from_others_and_which_stage_c_they_fit():
    from cascade_studio.core.lora_info import check_layout

    full_reference = {"weights.0.lora_down": [4, 2048], "weights.0.lora_up": [2048, 4]}
    assert check_layout(full_reference) == (None, {2048})
    onetrainer = {
        "lora_prior_unet_down_blocks_1_5_attention_attn_to_q.lora_down.weight": [8, 1536],
        "lora_prior_unet_down_blocks_1_5_attention_attn_to_q.lora_up.weight": [1536, 8],
        "lora_prior_te_text_model_encoder_layers_3_mlp_fc1.lora_down.weight": [8, 1280],
        "lora_prior_unet_clip_txt_mapper.alpha": [],
        "bundle_emb.<zxq>.clip_g": [2, 1280],
    }
    assert check_layout(onetrainer) == (None, {1536})
    simpletuner = {"prior.up_blocks.0.3.attention.to_out.0.lora_A.weight": [16, 2048]}
    assert check_layout(simpletuner) == (None, {2048})
    assert check_layout({"text_encoder.text_model.encoder.layers.0.mlp.fc1.lora_A.weight": [4, 1280]}) == (None, set())
    sdxl = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": [4, 640], "lora_te1_x.lora_down.weight": [4, 768]}
    assert "unknown key layout (e.g. lora_te1_x.lora_down.weight)" in check_layout(sdxl)[0]
    sdxl_unet = {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": [4, 640]}
    assert "not for Stable Cascade: it names lora_unet_input_blocks_4_1_proj_in" in check_layout(sdxl_unet)[0]
    sd15_diffusers = {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": [4, 320]}
    assert "not for Stable Cascade" in check_layout(sd15_diffusers)[0]
    loha = {"lora_prior_unet_down_blocks_0_0_channelwise_0.hada_w1_a": [4, 4]}
    assert "LyCORIS" in check_layout(loha)[0]


def test_a_row_is_flagged_when_its_lora_does_not_fit_the_model_box(panel, models, qtbot):
    _lora_with_tensors(models, "full-style", {"weights.0.lora_down": (4, 2048), "weights.0.lora_up": (2048, 4)})
    _lora_with_tensors(models, "sdxl-thing", {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 640)})
    session = panel.session
    session.variant = "lite"
    session.loras = (("full-style", 1.0), ("sdxl-thing", 1.0), ("ink", 1.0))
    full, sdxl, ink = panel.lora_list.rows
    qtbot.waitUntil(lambda: full.warning is not None and sdxl.warning is not None, timeout=5_000)
    assert "Made for Stage C full (2048 wide), but the Model box is set to lite" in full.label.toolTip()
    assert full.icon.isVisibleTo(panel) and "ff6b6b" in full.label.styleSheet()
    assert "Not usable: not for Stable Cascade" in sdxl.label.toolTip() and sdxl.icon.isVisibleTo(panel)
    qtbot.waitUntil(lambda: ink.warning is not None, timeout=5_000)  # not a safetensors file: flagged too
    assert "Could not read its header" in ink.label.toolTip() and ink.icon.isVisibleTo(panel)
    session.variant = "full"
    assert full.warning is None and not full.icon.isVisibleTo(panel) and "Made for Stage C full" in full.label.toolTip()
    assert sdxl.warning is not None  # no model fits it


def test_the_add_menu_says_which_files_would_stop_generate(panel, models, qtbot):
    _lora_with_tensors(models, "full-style", {"weights.0.lora_down": (4, 2048), "weights.0.lora_up": (2048, 4)})
    _lora_with_tensors(models, "lite-style", {"weights.0.lora_down": (4, 1536), "weights.0.lora_up": (1536, 4)})
    _lora_with_tensors(models, "sdxl-thing", {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 640)})
    panel.session.variant = "lite"
    lora = panel.lora_list
    _open_menu(panel)  # the headers are read on the thread pool; the open menu's entries change when they are in

    def texts():
        return [a.text() for a in lora.menu.actions() if not a.isSeparator()]

    qtbot.waitUntil(lambda: "sdxl-thing  — not usable" in texts(), timeout=5_000)
    qtbot.waitUntil(lambda: "full-style  — for Full" in texts(), timeout=5_000)
    assert "lite-style" in texts() and "ink  — not usable" in texts()  # ink is not a safetensors file
    marked = next(a for a in lora.menu.actions() if a.text() == "full-style  — for Full")
    assert "Made for Stage C full; the Model box is set to lite" in marked.toolTip()
    marked.trigger()
    assert panel.session.loras == (LoraUse("full-style", 1.0),)  # still addable: the Model box may change
    panel.session.variant = "full"
    actions = _open_menu(panel)  # read before: marked as the menu is built
    assert "full-style" in actions and "sdxl-thing  — not usable" in actions


def test_dropping_lora_files_on_the_panel_adds_them(panel, models, tmp_path):
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    elsewhere = tmp_path / "downloads" / "new-style.safetensors"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"{}")
    mime = QMimeData()
    mime.setUrls(
        [QUrl.fromLocalFile(str(models / LORA_FOLDER / "ink.safetensors")), QUrl.fromLocalFile(str(elsewhere))]
    )
    drop = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)  # fmt: skip
    panel.dragEnterEvent(drop)  # a synthetic drop is not routed by Qt; call the handlers as a real drag would
    assert drop.isAccepted()
    panel.dropEvent(drop)
    assert panel.session.loras == (LoraUse("ink", 1.0), LoraUse(str(elsewhere), 1.0))  # in the LoRA folder: by name
    assert panel.session.source_image == "" and panel.session.mode == "text"  # not taken for an image


def test_a_lora_with_a_text_encoder_part_gets_a_text_weight_that_follows_until_set_apart(panel, models, qtbot):
    onetrainer = {
        "lora_prior_unet_down_blocks_1_5_attention_attn_to_q.lora_down.weight": (8, 1536),
        "lora_prior_te_text_model_encoder_layers_3_mlp_fc1.lora_down.weight": (8, 1280),
    }
    _lora_with_tensors(models, "both-parts", onetrainer)
    _lora_with_tensors(models, "c-only", {"weights.0.lora_down": (4, 1536), "weights.0.lora_up": (1536, 4)})
    session = panel.session
    session.loras = (("both-parts", 0.8), ("c-only", 1.0))
    both, c_only = panel.lora_list.rows
    qtbot.waitUntil(lambda: both.text_spin.isVisibleTo(panel), timeout=5_000)  # known once the header is read
    qtbot.waitUntil(lambda: "Changes: Stage C" in c_only.label.toolTip(), timeout=5_000)
    assert not c_only.text_spin.isVisibleTo(panel)
    assert (
        both.text_spin.value() == 0.8
        and both.text_label.isVisibleTo(panel)
        and not c_only.text_label.isVisibleTo(panel)
    )
    # on a line of its own under the weight, not beside it: a row showing it is no wider than one without it
    assert both.minimumSizeHint().width() == c_only.minimumSizeHint().width()
    both.weight_spin.setValue(0.6)  # a text weight not set apart follows the weight
    assert session.loras[0] == LoraUse("both-parts", 0.6) and both.text_spin.value() == 0.6
    both.text_spin.setValue(0.25)
    assert session.loras[0] == LoraUse("both-parts", 0.6, 0.25)
    assert session.request().validate().all_loras()[0].text == 0.25
    both.weight_spin.setValue(0.9)  # now it stays
    assert session.loras[0] == LoraUse("both-parts", 0.9, 0.25) and both.text_spin.value() == 0.25
    both.text_spin.setValue(0.9)  # set back to the weight: joined again
    assert session.loras[0] == LoraUse("both-parts", 0.9)
    session.loras = (("c-only", 1.0, 0.5),)  # a text weight given (a recalled request): shown even without a part
    assert panel.lora_list.rows[0].text_spin.isVisibleTo(panel) and panel.lora_list.rows[0].text_spin.value() == 0.5
    session.prompt = "a cat <lora:c-only:0.2:1>"
    assert panel.lora_list.tags_hint.text() == "From prompt tags: c-only 1, text encoder 0.2"
