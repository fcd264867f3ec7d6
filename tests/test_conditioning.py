"""CLIP conditioning: Hugging Face parity of the masked text forward, strict loading, tokenizer, image encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cascade_studio.pipeline import conditioning
from cascade_studio.pipeline.checkpoints import META_CONFIG, META_NETWORK, CheckpointError, read_header
from cascade_studio.pipeline.conditioning import (
    CLIP_MEAN,
    CLIP_NETWORK,
    CLIP_STD,
    EOT_TOKEN_ID,
    SOT_TOKEN_ID,
    TRANSFORMERS_LAYOUT,
    ImageEncoder,
    TextEncoder,
    build_text_tower,
    clip_preprocess,
    save_clip,
    save_hf_text,
    text_layout,
    to_hf_text_state,
)
from cascade_studio.pipeline.demo import randomize_
from tests.conftest import ROOT
from tests.support.configs import bench_config
from tests.support.hf_clip import (
    STABLE_CASCADE_TEXT_CONFIG,
    hf_text_model,
    open_clip_text_to_hf,
    random_hf_text_model,
)

HF_TEXT = bench_config("tiny")["text_encoder"]  # transformers CLIPTextConfig keywords
EOT = HF_TEXT["eos_token_id"]  # 1: != 2, so HF pools at the first occurrence of it, like us
LENGTH = HF_TEXT["max_position_embeddings"]

TINY_VISION = {"image_size": 224, "layers": 2, "width": 32, "head_width": 8, "patch_size": 32, "mlp_ratio": 2.0}


def tiny_clip_config(*, quick_gelu: bool | None = None, vocab_size: int | None = None) -> dict:
    """open_clip model config matching ``HF_TEXT`` (exact GELU), plus a tiny vision tower."""
    return {
        "embed_dim": HF_TEXT["projection_dim"],
        "quick_gelu": HF_TEXT["hidden_act"] == "quick_gelu" if quick_gelu is None else quick_gelu,
        "text_cfg": {
            "context_length": LENGTH,
            "vocab_size": vocab_size or HF_TEXT["vocab_size"],
            "width": HF_TEXT["hidden_size"],
            "heads": HF_TEXT["num_attention_heads"],
            "layers": HF_TEXT["num_hidden_layers"],
            "mlp_ratio": HF_TEXT["intermediate_size"] / HF_TEXT["hidden_size"],
            "pool_type": "eos",  # open_clip's own forward pools at the first EOT like HF (eos_token_id != 2)
            "eos_id": EOT,
        },
        "vision_cfg": dict(TINY_VISION),
    }


def tiny_tower(seed: int = 0, **kwargs) -> torch.nn.Module:
    """open_clip's own text tower (the reference our TextTower and TextEncoder are checked against)."""
    from open_clip.model import _build_text_tower

    cfg = tiny_clip_config(**kwargs)
    tower = randomize_(_build_text_tower(cfg["embed_dim"], cfg["text_cfg"], cfg["quick_gelu"]), seed)
    tower.attn_mask = tower.build_causal_mask()  # randomize_ also scrambles float buffers
    return tower


def tiny_clip(seed: int = 0, **kwargs) -> tuple[torch.nn.Module, dict]:
    from open_clip.model import CLIP

    cfg = tiny_clip_config(**kwargs)
    model = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=cfg["quick_gelu"])
    randomize_(model, seed)
    model.attn_mask = torch.full((LENGTH, LENGTH), float("-inf")).triu_(1)  # randomize_ scrambled it
    return model, cfg


def token_batch(eots: list[int], seed: int = 0, vocab: int = HF_TEXT["vocab_size"]) -> torch.Tensor:
    """BOS, random ids, EOT at ``eots[i]``, then padding (zeros, or random ids incl. EOT for odd rows)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i, e in enumerate(eots):
        row = torch.randint(2, vocab, (LENGTH,), generator=g)
        row[0] = HF_TEXT["bos_token_id"]
        row[e] = EOT
        if i % 2 == 0:
            row[e + 1 :] = 0
        elif e + 2 < LENGTH:
            row[e + 2] = EOT  # a later EOT: only the first one counts
        rows.append(row)
    return torch.stack(rows)


def hf_attention_mask(tokens: torch.Tensor) -> torch.Tensor:
    """What the HF tokenizer returns with padding="max_length": 1 up to and including EOT, then 0."""
    eot = (tokens == EOT).int().argmax(dim=1)
    return (torch.arange(LENGTH)[None] <= eot[:, None]).long()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# ---------------------------------------------------------------------------------------------
# text: parity with transformers' CLIPTextModelWithProjection called with attention_mask


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_text_matches_hf_with_attention_mask(attn_implementation):
    tower = tiny_tower(seed=1)
    encoder = TextEncoder(tower, eot_token_id=EOT)
    hf = hf_text_model(tower, HF_TEXT)
    hf.set_attn_implementation(attn_implementation)
    tokens = token_batch([1, 5, 12, 30, LENGTH - 1], seed=2)
    mask = hf_attention_mask(tokens)
    assert mask[-1].all() and mask[0].sum() == 2  # a full row and an empty prompt

    with torch.inference_mode():
        clip_text, pooled = encoder.encode_tokens(tokens)
        out = hf(input_ids=tokens, attention_mask=mask, output_hidden_states=True)

    assert len(out.hidden_states) == HF_TEXT["num_hidden_layers"] + 1
    hf_text = out.hidden_states[-1]  # the last layer's output, before final_layer_norm
    assert rel_diff(out.last_hidden_state, hf_text) > 0.1  # last_hidden_state is after the final LN
    assert clip_text.shape == (5, LENGTH, HF_TEXT["hidden_size"])
    assert pooled.shape == (5, 1, HF_TEXT["projection_dim"])
    assert torch.isfinite(clip_text).all() and torch.isfinite(pooled).all()
    assert rel_diff(clip_text, hf_text) <= 1e-5, rel_diff(clip_text, hf_text)  # all 77 positions
    assert rel_diff(pooled[:, 0], out.text_embeds) <= 1e-5, rel_diff(pooled[:, 0], out.text_embeds)


def test_text_without_padding_mask_would_differ():
    """open_clip's own causal-only forward differs from HF at padded positions: the test above catches that."""
    tower = tiny_tower(seed=3)
    hf = hf_text_model(tower, HF_TEXT)
    tokens = token_batch([4, 9, 20], seed=4)
    mask = hf_attention_mask(tokens).bool()
    with torch.inference_mode():
        x = tower.token_embedding(tokens) + tower.positional_embedding
        for block in tower.transformer.resblocks:  # open_clip >= 2.23: batch-first blocks
            x = block(x, attn_mask=tower.attn_mask)
        hf_text = hf(input_ids=tokens, attention_mask=mask.long(), output_hidden_states=True).hidden_states[-1]
        pooled_open_clip = tower(tokens)  # pool_type "eos": open_clip's own forward
        _, pooled = TextEncoder(tower, eot_token_id=EOT).encode_tokens(tokens)
    assert rel_diff(x[mask], hf_text[mask]) <= 1e-5  # causal mask alone is right up to the EOT ...
    assert rel_diff(x[~mask], hf_text[~mask]) > 1e-2  # ... but not at the padded positions
    # the EOT position never attends past itself, so the pooled embedding needs no padding mask
    assert rel_diff(pooled[:, 0], pooled_open_clip) <= 1e-5


def test_text_encode_prompts_and_bad_tokens():
    tower = tiny_tower(seed=5, vocab_size=49408)
    encoder = TextEncoder(tower)  # real bigG tokenizer, EOT 49407
    tokens = encoder.tokenize(["a photo of a cat", ""])
    with torch.inference_mode():
        text, pooled = encoder.encode(["a photo of a cat", ""])
        text_t, pooled_t = encoder.encode_tokens(tokens)
    assert text.shape == (2, LENGTH, HF_TEXT["hidden_size"]) and pooled.shape == (2, 1, HF_TEXT["projection_dim"])
    assert torch.equal(text, text_t) and torch.equal(pooled, pooled_t)
    assert not torch.allclose(pooled[0], pooled[1])

    with pytest.raises(ValueError, match="vocabulary is 1000"):
        TextEncoder(tiny_tower()).encode_tokens(tokens)  # bigG ids in a 1000-id test vocabulary
    with pytest.raises(ValueError, match="no end-of-text"):
        TextEncoder(tiny_tower(), eot_token_id=EOT).encode_tokens(torch.full((1, LENGTH), 5))
    with pytest.raises(ValueError, match="shape"):
        TextEncoder(tiny_tower(), eot_token_id=EOT).encode_tokens(torch.ones(1, 10, dtype=torch.long))


# ---------------------------------------------------------------------------------------------
# tokenizer


def test_bigg_tokenizer_pads_and_truncates_keeping_eot():
    encoder = TextEncoder(tiny_tower())
    tokens = encoder.tokenize(["a photo of a cat", "", "word " * 200])
    assert tokens.shape == (3, 77) and tokens.dtype == torch.long
    assert tokens[0, :7].tolist() == [SOT_TOKEN_ID, 320, 1125, 539, 320, 2368, EOT_TOKEN_ID]
    assert (tokens[0, 7:] == 0).all()
    assert tokens[1, :2].tolist() == [SOT_TOKEN_ID, EOT_TOKEN_ID] and (tokens[1, 2:] == 0).all()
    assert tokens[2, 0] == SOT_TOKEN_ID and tokens[2, -1] == EOT_TOKEN_ID
    assert (tokens[2, 1:-1] != 0).all() and (tokens[2, 1:-1] != EOT_TOKEN_ID).all()
    assert torch.equal(encoder.tokenize("a photo of a cat"), tokens[:1])


# ---------------------------------------------------------------------------------------------
# loading open_clip-format safetensors


class ReadSpy:
    def __init__(self, monkeypatch):
        self.keys: list[str] = []
        real = conditioning.read_tensors

        def spy(header, **kwargs):
            self.keys.extend(header.tensors)
            return real(header, **kwargs)

        monkeypatch.setattr(conditioning, "read_tensors", spy)


def test_text_from_file_reads_only_text_keys(tmp_path, monkeypatch):
    model, cfg = tiny_clip(seed=6)
    state = model.state_dict()
    assert any(k.startswith("visual.") for k in state) and "logit_scale" in state
    path = save_clip(state, tmp_path / "clip.safetensors", cfg)

    spy = ReadSpy(monkeypatch)
    encoder = TextEncoder.from_file(path, eot_token_id=EOT)
    assert spy.keys and not any(k.startswith("visual.") or k == "logit_scale" for k in spy.keys)
    assert encoder.dtype == torch.float32 and encoder.device.type == "cpu"

    reference = build_text_tower(cfg)
    reference.load_state_dict({k: v for k, v in state.items() if k in reference.state_dict()}, strict=True)
    tokens = token_batch([3, 40], seed=7)
    with torch.inference_mode():
        ours = encoder.encode_tokens(tokens)
        theirs = TextEncoder(reference, eot_token_id=EOT).encode_tokens(tokens)
        open_clip_pooled = model.encode_text(tokens)  # the full CLIP's own text path
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert rel_diff(ours[1][:, 0], open_clip_pooled) <= 1e-5

    half = TextEncoder.from_file(path, eot_token_id=EOT, dtype=torch.bfloat16)
    text, pooled = half.encode_tokens(tokens)
    assert text.dtype == torch.bfloat16 and torch.isfinite(text).all() and torch.isfinite(pooled).all()
    assert rel_diff(pooled.float(), ours[1]) < 0.05


def test_text_from_file_is_strict(tmp_path):
    model, cfg = tiny_clip(seed=8)
    state = model.state_dict()

    broken = {k: v for k, v in state.items() if k not in ("ln_final.weight", "transformer.resblocks.1.ln_2.bias")}
    path = save_clip(broken, tmp_path / "missing.safetensors", cfg)
    with pytest.raises(CheckpointError, match="missing") as err:
        TextEncoder.from_file(path)
    assert str(path) in str(err.value) and "ln_final.weight" in str(err.value)
    assert "transformer.resblocks.1.ln_2.bias" in str(err.value)

    extra = {**state, "transformer.resblocks.7.ln_1.weight": torch.ones(32)}
    path = save_clip(extra, tmp_path / "extra.safetensors", cfg)
    with pytest.raises(CheckpointError, match="unexpected.*resblocks.7.ln_1.weight"):
        TextEncoder.from_file(path)

    visual_only = {k: v for k, v in state.items() if k.startswith("visual.")}
    path = save_clip(visual_only, tmp_path / "visual.safetensors", cfg)
    with pytest.raises(CheckpointError, match="holds no CLIP text tensors"):
        TextEncoder.from_file(path)

    # Without our metadata the file is taken for open_clip's ViT-bigG-14: every shape is wrong.
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(CheckpointError, match="wrongly shaped.*open_clip_model.safetensors"):
        TextEncoder.from_file(path)

    with pytest.raises(CheckpointError, match="only .safetensors"):
        TextEncoder.from_file(tmp_path / "open_clip_pytorch_model.bin")


# ---------------------------------------------------------------------------------------------
# loading transformers-format safetensors (Stability AI's text_encoder/model.safetensors)


def hf_outputs(hf: torch.nn.Module, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' ``(hidden_states[-1], text_embeds)``, called with the tokenizer's attention mask."""
    with torch.inference_mode():
        out = hf(input_ids=tokens, attention_mask=hf_attention_mask(tokens), output_hidden_states=True)
    return out.hidden_states[-1], out.text_embeds


def assert_matches_hf(encoder: TextEncoder, hf: torch.nn.Module, tokens: torch.Tensor) -> None:
    hf_text, hf_pooled = hf_outputs(hf, tokens)
    with torch.inference_mode():
        clip_text, pooled = encoder.encode_tokens(tokens)
    assert clip_text.shape == hf_text.shape and pooled.shape == (len(tokens), 1, hf_pooled.shape[-1])
    assert rel_diff(clip_text, hf_text) <= 1e-5, rel_diff(clip_text, hf_text)  # all 77 positions
    assert rel_diff(pooled[:, 0], hf_pooled) <= 1e-5, rel_diff(pooled[:, 0], hf_pooled)


def test_text_from_transformers_save_pretrained(tmp_path):
    """transformers' own file: every key mapping (q/k/v packing, layer norms, MLP, projection) checked by its output."""
    hf = random_hf_text_model(HF_TEXT, seed=20)  # random layer norms too: a swapped name would show
    hf.save_pretrained(tmp_path / "text_encoder")
    path = tmp_path / "text_encoder" / "model.safetensors"
    header = read_header(path)
    assert text_layout(header) == TRANSFORMERS_LAYOUT and "text_projection.weight" in header.tensors

    encoder = TextEncoder.from_file(path, model_cfg=tiny_clip_config(), eot_token_id=EOT)
    assert encoder.dtype == torch.float32
    assert_matches_hf(encoder, hf, token_batch([1, 5, 12, 30, LENGTH - 1], seed=21))


def test_text_from_transformers_file_with_metadata_and_position_ids(tmp_path, monkeypatch):
    """A bare save_file in the transformers layout; the config comes from our metadata; position ids are skipped."""
    hf = random_hf_text_model(HF_TEXT, seed=22)
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    state["text_model.embeddings.position_ids"] = torch.arange(LENGTH)[None]  # older transformers saved it
    path = tmp_path / "model.safetensors"
    save_file(state, str(path), metadata={META_NETWORK: CLIP_NETWORK, META_CONFIG: json.dumps(tiny_clip_config())})

    spy = ReadSpy(monkeypatch)
    encoder = TextEncoder.from_file(path, eot_token_id=EOT)
    assert "text_model.embeddings.position_ids" not in spy.keys and len(spy.keys) == len(state) - 1
    assert_matches_hf(encoder, hf, token_batch([3, 40, LENGTH - 1], seed=23))


def test_text_from_a_bf16_transformers_file(tmp_path):
    """Like the released file: bf16 on disk, loaded as bf16 or widened to float32."""
    hf = random_hf_text_model(HF_TEXT, seed=24)
    path = tmp_path / "model.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in hf.state_dict().items()}, str(path))
    rounded = hf.to(torch.bfloat16).float()  # the oracle with the very weights the file holds
    tokens = token_batch([2, 17, 60], seed=25)

    wide = TextEncoder.from_file(path, model_cfg=tiny_clip_config(), eot_token_id=EOT, dtype=torch.float32)
    assert wide.dtype == torch.float32
    assert_matches_hf(wide, rounded, tokens)
    half = TextEncoder.from_file(path, model_cfg=tiny_clip_config(), eot_token_id=EOT)
    assert half.dtype == torch.bfloat16
    with torch.inference_mode():
        text, pooled = half.encode_tokens(tokens)
    assert text.dtype == torch.bfloat16 and torch.isfinite(text).all()
    assert rel_diff(pooled[:, 0].float(), hf_outputs(rounded, tokens)[1]) < 0.05


def test_text_saved_in_transformers_layout_loads_back_exactly(tmp_path):
    """save_hf_text (the demo's writer) agrees with the test oracle's converter and round-trips bit for bit."""
    tower = tiny_tower(seed=26)
    state = tower.state_dict()
    converted = to_hf_text_state(state)
    oracle = open_clip_text_to_hf({k: v for k, v in state.items() if k != "attn_mask"})
    assert converted.keys() == oracle.keys() and all(torch.equal(converted[k], oracle[k]) for k in oracle)

    path = save_hf_text(state, tmp_path / "text_encoder" / "model.safetensors", tiny_clip_config())
    loaded = TextEncoder.from_file(path, eot_token_id=EOT)
    tokens = token_batch([4, 50], seed=27)
    with torch.inference_mode():
        ours, theirs = loaded.encode_tokens(tokens), TextEncoder(tower, eot_token_id=EOT).encode_tokens(tokens)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_transformers_text_file_is_strict(tmp_path):
    state = {k: v.contiguous() for k, v in random_hf_text_model(HF_TEXT, seed=28).state_dict().items()}
    metadata = {META_NETWORK: CLIP_NETWORK, META_CONFIG: json.dumps(tiny_clip_config())}

    def write(name: str, tensors: dict) -> Path:
        save_file(tensors, str(tmp_path / name), metadata=metadata)
        return tmp_path / name

    q = "text_model.encoder.layers.1.self_attn.q_proj.weight"
    path = write("missing.safetensors", {k: v for k, v in state.items() if k != q})
    with pytest.raises(CheckpointError, match=f"CLIPTextModelWithProjection layout: 1 missing key.*{q}") as err:
        TextEncoder.from_file(path)
    assert str(path) in str(err.value)

    path = write("extra.safetensors", {**state, "text_model.encoder.layers.9.layer_norm1.weight": torch.ones(32)})
    with pytest.raises(CheckpointError, match="unexpected.*layers.9.layer_norm1.weight"):
        TextEncoder.from_file(path)

    # Without our metadata the file is taken for ViT-bigG-14 (the released file's architecture): every shape is wrong.
    path = tmp_path / "plain.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="wrongly shaped.*stabilityai/stable-cascade"):
        TextEncoder.from_file(path)


def test_released_text_encoder_layout_is_what_the_bigg_tower_reads():
    """Stability AI's text_encoder (its config.json) has exactly the tensors our ViT-bigG-14 tower expects."""
    import open_clip
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from cascade_studio.pipeline.weights import TEXT_ENCODER_FILE, entry_named

    with torch.device("meta"):
        released = CLIPTextModelWithProjection(CLIPTextConfig(**STABLE_CASCADE_TEXT_CONFIG))
        tower = build_text_tower(open_clip.get_model_config(conditioning.TEXT_MODEL))
    released_shapes = {k: tuple(v.shape) for k, v in released.state_dict().items()}
    assert conditioning._hf_text_shapes(tower) == released_shapes
    # bf16: two bytes a value, plus the header, is the size the registry lists
    values = sum(math.prod(s) for s in released_shapes.values())
    entry = entry_named(TEXT_ENCODER_FILE)
    assert entry.dtype == "BF16" and 0 < entry.size - 2 * values < 200_000


# ---------------------------------------------------------------------------------------------
# image encoder


def test_preprocess_matches_hand_computation():
    g = torch.Generator().manual_seed(9)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    wide = torch.rand(2, 3, 224, 300, generator=g)  # shorter side already 224: crop only
    assert torch.allclose(clip_preprocess(wide), (wide[..., :, 38:262] - mean) / std, atol=1e-6)
    tall = torch.rand(1, 3, 301, 224, generator=g)  # (301 - 224) / 2 = 38.5 rounds to 38 (half to even)
    assert torch.allclose(clip_preprocess(tall), (tall[..., 38:262, :] - mean) / std, atol=1e-6)

    flat = torch.full((1, 3, 97, 150), 0.25)  # resampling keeps a constant image constant
    out = clip_preprocess(flat)
    assert out.shape == (1, 3, 224, 224)
    assert torch.allclose(out, ((0.25 - mean) / std).expand_as(out), atol=1e-5)


def test_preprocess_matches_torchvision():
    import torchvision.transforms.v2.functional as tv
    from torchvision.transforms import InterpolationMode

    image = torch.rand(2, 3, 448, 500, generator=torch.Generator().manual_seed(10))
    expected = tv.resize(image, [224], interpolation=InterpolationMode.BICUBIC, antialias=True)
    assert expected.shape[-2:] == (224, 250)
    expected = tv.normalize(tv.center_crop(expected, [224, 224]), list(CLIP_MEAN), list(CLIP_STD))
    assert torch.allclose(clip_preprocess(image), expected, atol=1e-5)


def test_image_encoder_matches_open_clip(tmp_path, monkeypatch):
    model, cfg = tiny_clip(seed=11, quick_gelu=True)  # like OpenAI's ViT-L/14
    path = save_clip(model.state_dict(), tmp_path / "clip.safetensors", cfg)

    spy = ReadSpy(monkeypatch)
    encoder = ImageEncoder.from_file(path)
    assert spy.keys and all(k.startswith("visual.") for k in spy.keys)
    assert type(encoder.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert encoder.image_size == 224 and encoder.embed_dim == cfg["embed_dim"]

    images = torch.rand(2, 3, 260, 300, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode():
        ours = encoder.encode(images)
        theirs = model.encode_image(clip_preprocess(images))
    assert ours.shape == (2, 1, cfg["embed_dim"])
    assert rel_diff(ours[:, 0], theirs) <= 1e-5
    assert ours.abs().max() > 0 and not torch.allclose(ours[0], ours[1])


def test_image_from_file_is_strict(tmp_path):
    model, cfg = tiny_clip(seed=13)
    state = model.state_dict()
    path = save_clip({k: v for k, v in state.items() if k != "visual.proj"}, tmp_path / "a.safetensors", cfg)
    with pytest.raises(CheckpointError, match="missing.*proj") as err:
        ImageEncoder.from_file(path)
    assert str(path) in str(err.value)

    path = save_clip({k: v for k, v in state.items() if not k.startswith("visual.")}, tmp_path / "b.safetensors", cfg)
    with pytest.raises(CheckpointError, match="holds no CLIP vision tensors"):
        ImageEncoder.from_file(path)


@pytest.mark.parametrize("config", ["tiny", "bigG"])
def test_our_text_tower_has_open_clips_parameters(config):
    # Both file layouts load into TextTower because it holds exactly open_clip's TextTransformer tensors.
    import open_clip
    from open_clip.model import _build_text_tower

    cfg = tiny_clip_config() if config == "tiny" else open_clip.get_model_config(conditioning.TEXT_MODEL)
    if config == "bigG":  # the built-in config is open_clip's
        assert conditioning.BIGG_TEXT_CONFIG["text_cfg"] == cfg["text_cfg"]
        assert conditioning.BIGG_TEXT_CONFIG["embed_dim"] == cfg["embed_dim"]
    with torch.device("meta"):
        ours = build_text_tower(cfg)
        theirs = _build_text_tower(cfg["embed_dim"], dict(cfg["text_cfg"]), bool(cfg.get("quick_gelu", False)))
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in theirs.state_dict().items()
    }


def test_our_text_tower_encodes_like_open_clips():
    reference = tiny_tower(seed=8)
    ours = build_text_tower(tiny_clip_config())
    ours.load_state_dict(reference.state_dict())
    tokens = token_batch([3, 11, 30], seed=9)
    with torch.inference_mode():
        a = TextEncoder(reference, eot_token_id=EOT).encode_tokens(tokens)
        b = TextEncoder(ours, eot_token_id=EOT).encode_tokens(tokens)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_the_tokenizer_needs_no_open_clip_package_and_equals_open_clips():
    import subprocess
    import sys

    code = (
        "import sys; from cascade_studio.pipeline import conditioning as c; "
        "t = c._open_clip_tokenizer(c.TEXT_MODEL, 77); ids = t(['a photo of a cat, highly detailed', ''])[0][:12]; "
        "print(ids.tolist(), 'open_clip' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    import open_clip

    expected = open_clip.get_tokenizer(conditioning.TEXT_MODEL)(["a photo of a cat, highly detailed", ""])
    assert out.stdout.strip() == f"{expected[0][:12].tolist()} False"
    ours = conditioning._open_clip_tokenizer(conditioning.TEXT_MODEL, 77)
    prompts = ["Ünïcödé  and   spaces", "x " * 100, "<start_of_text> [fernando]"]
    assert torch.equal(ours(prompts), open_clip.get_tokenizer(conditioning.TEXT_MODEL)(prompts))
