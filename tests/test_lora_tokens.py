"""A reference LoRA's learned token embeddings: named by metadata or a sidecar, rebuilt as the trainer built
them (mean of the init regex's rows + offset), applied per encoding without touching the text encoder."""

import json
import logging
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from cascade_studio.core.request import GenerationRequest, StageSettings
from cascade_studio.pipeline.conditioning import VOCAB_SIZE, TextEncoder, build_text_tower
from cascade_studio.pipeline.demo import DEMO_TEXT_CLIP, randomize_
from cascade_studio.pipeline.generate import Pipeline
from cascade_studio.pipeline.lora import LoraCache, LoraError, read_lora, reference_lora_tensors, token_overrides
from cascade_studio.pipeline.models import ModelSet
from tests.test_lora import tiny_stage_c

WIDTH = DEMO_TEXT_CLIP["text_cfg"]["width"]
NEW = VOCAB_SIZE  # the first added token's id
TOKENS = [["[mytoken]", "^dog"], ["^cat</w>$", None]]  # one new token, one existing entry retrained


def tower_for(vocab: int = VOCAB_SIZE, seed: int = 0) -> torch.nn.Module:
    cfg = {**DEMO_TEXT_CLIP, "text_cfg": {**DEMO_TEXT_CLIP["text_cfg"], "vocab_size": vocab}}
    return randomize_(build_text_tower(cfg), seed)


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(tower_for())  # the real bigG tokenizer (its vocabulary ships with open_clip)


@pytest.fixture(scope="module")
def vocab(encoder):
    """Token string -> id as transformers' CLIP tokenizer names them, built here by hand."""
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    return {names.get(s, s): i for s, i in encoder._base_tokenizer().encoder.items()}


def offsets(n, seed=4):
    return torch.randn(n, WIDTH, generator=torch.Generator().manual_seed(seed))


def write_lora(path, embeddings, indices, train_tokens=None, sidecar=None):
    tensors = reference_lora_tensors(tiny_stage_c(), rank=2, seed=1)
    tensors["embeddings.embeddings"] = embeddings
    tensors["embeddings.indices"] = torch.tensor(indices, dtype=torch.int64)
    metadata = {"train_tokens": json.dumps(train_tokens)} if train_tokens is not None else None
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return path


def test_named_tokens_equal_a_hand_extended_embedding_table(tmp_path, encoder, vocab):
    cat = vocab["cat</w>"]
    off = offsets(2)
    lora = read_lora(write_lora(tmp_path / "mine.safetensors", off, [NEW, cat], TOKENS))
    assert lora.train_tokens == (("[mytoken]", "^dog"), ("^cat</w>$", None)) and lora.token_warning is None
    tokens = token_overrides([lora], encoder)
    assert tokens.added == ("[mytoken]",)
    prompts = ["a photo of a cat, [MyToken]", "a dog"]
    got = encoder.encode(prompts, tokens)

    # by hand: the trainer's new row is the mean of the rows whose string matches ^dog, plus the offset
    base = encoder.tower.token_embedding.weight
    dogs = [i for s, i in vocab.items() if re.search("^dog", s)]
    assert len(dogs) > 3
    table = base.detach().clone()
    table[cat] += off[1]
    table = torch.cat([table, (base[dogs].mean(0) + off[0])[None]])
    extended = tower_for(VOCAB_SIZE + 1)
    extended.load_state_dict({**encoder.tower.state_dict(), "token_embedding.weight": table})
    first = encoder.tokenize("a photo of a cat,")[0]
    end = int((first == encoder.eot_token_id).nonzero()[0])
    first = torch.cat([first[:end], torch.tensor([NEW]), first[end:-1]])
    hand = torch.stack([first, encoder.tokenize("a dog")[0]])
    assert torch.equal(encoder.tokenize(prompts, tokens.added), hand)
    expected = TextEncoder(extended).encode_tokens(hand)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    # rows nobody retrained are the tower's own: "a dog" is bit-identical to the plain encoding
    plain = encoder.encode(prompts)
    assert torch.equal(got[0][1], plain[0][1]) and torch.equal(got[1][1], plain[1][1])
    assert not torch.allclose(got[0][0], plain[0][0])


def test_sidecar_names_the_tokens_and_the_cache_sees_it_change(tmp_path, encoder):
    path = write_lora(tmp_path / "side.safetensors", offsets(1), [NEW])
    cache = LoraCache()
    assert cache.get(path).train_tokens is None
    path.with_suffix(".json").write_text(json.dumps({"train_tokens": [["<side>", "^cat"]], "notes": "x"}))
    lora = cache.get(path)
    assert lora.train_tokens == (("<side>", "^cat"),) and lora.token_source.endswith("side.json")
    named = encoder.encode("a <SIDE> photo", token_overrides([lora], encoder))
    assert not torch.equal(named[1], encoder.encode("a <SIDE> photo")[1])
    other = write_lora(tmp_path / "other.safetensors", offsets(0).new_zeros(0, WIDTH), [])
    other.with_suffix(".json").write_text(json.dumps({"description": "another tool's notes"}))
    assert read_lora(other).train_tokens is None  # a sidecar without train_tokens is not ours


def test_unnamed_tokens_leave_the_weights_applied_and_warn(tmp_path, encoder, vocab, caplog):
    cat = vocab["cat</w>"]
    lora = read_lora(write_lora(tmp_path / "anon.safetensors", offsets(2), [cat, NEW]))
    assert "learned token is not applied" in lora.token_warning and "anon.json" in lora.token_warning
    assert len(lora.deltas(tiny_stage_c())) == 8  # the Stage C part is untouched by the missing names
    with caplog.at_level(logging.WARNING, logger="cascade_studio.pipeline.lora"):
        tokens = token_overrides([lora], encoder)
    assert lora.token_warning in caplog.text
    assert tokens.added == () and tokens.ids.tolist() == [cat]  # existing rows need no names
    assert torch.equal(encoder.encode("[mytoken] dog", tokens)[0], encoder.encode("[mytoken] dog")[0])


@pytest.mark.parametrize(
    ("indices", "names", "sidecar", "match"),
    [
        ([NEW], [["[a]", "^dog"], ["[b]", "^cat"]], None, r"bad\.safetensors: its train_tokens metadata adds 2 tokens"),
        ([NEW], [["^dog", None]], None, r"adds 0 tokens \(none.*embeddings for 1 new token"),
        ([NEW + 1], [["[a]", None]], None, r"new token ids \[49409\] are not 49408"),
        ([NEW], [["[a]", "(unclosed"]], None, r"'\(unclosed' is not a valid regular expression"),
        ([NEW], [["[a]", "^dog"]], {"train_tokens": [["[b]", "^dog"]]}, r"metadata and .*bad\.json name different"),
        ([NEW], None, {"train_tokens": "[a]"}, r"bad\.json are not usable .*must be a non-empty list"),
        ([NEW, NEW], [["[a]", None]], None, "distinct token ids"),
    ],
)
def test_bad_token_names_are_refused_when_read(tmp_path, indices, names, sidecar, match):
    path = write_lora(tmp_path / "bad.safetensors", offsets(len(indices)), indices, names, sidecar)
    with pytest.raises(LoraError, match=match):
        read_lora(path)


@pytest.mark.parametrize(
    ("names", "match"),
    [
        ([["[a]", "^nosuchtoken"]], r"bad\.safetensors: the init regex '\^nosuchtoken' of '\[a\]'.*matches no"),
        ([["[a]", r"^\[a"]], "matches the new token itself"),
        ([["[a]", None], ["^dog</w>$", None]], r"selects token ids 1929, 49408 but the file holds .* 49408"),
    ],
)
def test_names_that_do_not_fit_the_vocabulary_are_refused(tmp_path, encoder, names, match):
    lora = read_lora(write_lora(tmp_path / "bad.safetensors", offsets(1), [NEW], names))
    with pytest.raises(LoraError, match=match):
        token_overrides([lora], encoder)


def test_later_tokens_start_from_earlier_ones_and_width_is_checked(tmp_path, encoder):
    names = [["[a]", "^dog"], ["[b]", r"^\[a\]$"], ["[c]", None]]  # [b] starts as [a]'s initial row
    off = offsets(3)
    lora = read_lora(write_lora(tmp_path / "abc.safetensors", off, [NEW + 1, NEW + 2, NEW], names))
    tokens = token_overrides([lora], encoder)
    assert tokens.added == ("[a]", "[b]", "[c]") and tokens.ids.tolist() == [NEW, NEW + 1, NEW + 2]
    torch.testing.assert_close(tokens.rows[1] - off[0], tokens.rows[0] - off[2], rtol=0, atol=1e-6)
    assert torch.equal(tokens.rows[2], off[1])  # null: zeros + offset
    wide = read_lora(write_lora(tmp_path / "wide.safetensors", torch.zeros(1, 1280), [NEW], [["[a]", None]]))
    with pytest.raises(LoraError, match=r"wide\.safetensors: .*1280 wide .* are 32 wide"):
        token_overrides([wide], encoder)


def test_two_loras_with_tokens(tmp_path, encoder):
    first = read_lora(write_lora(tmp_path / "one.safetensors", offsets(1, 1), [NEW], [["[one]", "^dog"]]))
    second = read_lora(write_lora(tmp_path / "two.safetensors", offsets(1, 2), [NEW], [["[two]", "^cat"]]))
    both = token_overrides([first, second], encoder)
    assert both.added == ("[one]", "[two]") and both.ids.tolist() == [NEW, NEW + 1]
    ids = encoder.tokenize("[two] and [one]", both.added)[0, :5].tolist()
    assert ids == [encoder.tokenize("")[0, 0], NEW + 1, encoder.tokenize("and")[0, 1], NEW, encoder.eot_token_id]
    alone = encoder.encode("[two] x", token_overrides([second], encoder))
    assert torch.equal(encoder.encode("[two] x", both)[0], alone[0])
    same = read_lora(write_lora(tmp_path / "same.safetensors", offsets(1, 1), [NEW], [["[ONE]", "^dog"]]))
    assert token_overrides([first, same], encoder).added == ("[one]",)  # the same token defined the same way
    clash = read_lora(write_lora(tmp_path / "clash.safetensors", offsets(1, 3), [NEW], [["[one]", "^dog"]]))
    with pytest.raises(LoraError, match=r"clash\.safetensors and LoRA .*one\.safetensors both add the token"):
        token_overrides([first, clash], encoder)


def test_encoder_is_untouched_and_plain_encodings_are_bit_identical(tmp_path, encoder):
    state = {k: v.clone() for k, v in encoder.tower.state_dict().items()}
    prompts = ["a photo of a cat", "", "[mytoken] " * 80]
    before = encoder.encode(prompts)
    lora = read_lora(write_lora(tmp_path / "t.safetensors", offsets(1), [NEW], [["[mytoken]", "^dog"]]))
    with_tokens = encoder.encode(prompts, token_overrides([lora], encoder))
    after = encoder.encode(prompts)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert torch.equal(with_tokens[0][:2], before[0][:2]) and not torch.equal(with_tokens[0][2], before[0][2])
    assert all(torch.equal(v, state[k]) for k, v in encoder.tower.state_dict().items())
    long = encoder.tokenize(prompts[2:], ("[mytoken]",))[0].tolist()  # cut to 77 keeping the EOT
    assert long == [encoder.tokenize("")[0, 0].item(), *[NEW] * 75, encoder.eot_token_id]


def test_pipeline_applies_named_tokens_for_the_job(tmp_path, demo_models):
    pipeline = Pipeline(ModelSet(demo_models))
    demo = load_file(str(demo_models / "lora" / "demo-style.safetensors"))
    demo["embeddings.embeddings"] = offsets(1) * 3
    demo["embeddings.indices"] = torch.tensor([NEW])
    named, anon = tmp_path / "named.safetensors", tmp_path / "anon.safetensors"
    save_file(demo, str(named), metadata={"train_tokens": json.dumps([["[mytoken]", "^lighthouse"]])})
    save_file(demo, str(anon))
    fast = {"stage_c": StageSettings(2, 4.0, 2.0), "stage_b": StageSettings(1, 1.1, 1.0), "width": 256, "height": 256}
    request = GenerationRequest("a [mytoken] lighthouse", seed=5, **fast)

    def run(path, prompt=request.prompt):
        return pipeline.run(request.with_(prompt=prompt, loras=((str(path), 0.8),)))[0].pixels

    assert not np.array_equal(run(named), run(anon))  # the token changes the conditioning
    assert np.array_equal(run(named, "a lighthouse"), run(anon, "a lighthouse"))  # only the token's row differs
    assert pipeline.models.get("text_encoder").vocab_size == VOCAB_SIZE


# ---------------------------------------------------------------------------------------------
# bundled textual-inversion embeddings (OneTrainer's bundle_emb.<name>.clip_g)


def write_bundle(path, bundles, extra=None):
    tensors = {f"bundle_emb.{name}.{encoder}": v for (name, encoder), v in bundles.items()}
    tensors.update(extra or {})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def plain_ids(encoder, text):
    row = encoder.tokenize(text)[0].tolist()
    return row[1 : row.index(encoder.eot_token_id, 1)]


def test_bundled_embeddings_stand_for_their_vectors_where_the_prompt_names_them(tmp_path, encoder):
    g = torch.Generator().manual_seed(6)
    zxq, style = torch.randn(3, WIDTH, generator=g), torch.randn(1, WIDTH, generator=g)
    kohya = {  # a Stage C part beside the embeddings, as OneTrainer writes them
        "lora_prior_unet_down_blocks_0_2_attention_attn_to_q.lora_down.weight": torch.randn(2, 32, generator=g),
        "lora_prior_unet_down_blocks_0_2_attention_attn_to_q.lora_up.weight": torch.randn(32, 2, generator=g),
    }
    bundles = {("<zxq>", "clip_g"): zxq, ("ohwx style", "clip_g"): style}
    bundles |= {("<zxq>", "clip_g_out"): zxq.clone(), ("old", "clip_l"): torch.randn(2, 768, generator=g)}
    lora = read_lora(write_bundle(tmp_path / "onetrainer.safetensors", bundles, kohya))
    assert lora.layout == "kohya" and set(lora.bundles) == {"<zxq>", "ohwx style"}
    assert lora.bundles_skipped == ("<zxq>.clip_g_out", "old.clip_l")
    assert "<zxq>.clip_g_out, old.clip_l" in lora.token_warning
    assert [d.module for d in lora.deltas(tiny_stage_c())] == ["down_blocks.0.2.attention.attn"]

    tokens = token_overrides([lora], encoder)
    assert tokens.added == ("<zxq>", "ohwx style") and tokens.lengths == (3, 1)
    assert tokens.ids.tolist() == [NEW, NEW + 1, NEW + 2, NEW + 3]
    prompt = "a photo of <ZXQ>, ohwx  style; not ohwx styles"  # any case and spacing; never inside a longer word
    bos, eot = encoder.tokenize("")[0, 0].item(), encoder.eot_token_id
    hand = [bos, *plain_ids(encoder, "a photo of"), NEW, NEW + 1, NEW + 2, *plain_ids(encoder, ",")]
    hand += [NEW + 3, *plain_ids(encoder, "; not ohwx styles"), eot]
    got_ids = encoder.tokenize([prompt], tokens.added, tokens.lengths)[0].tolist()
    assert got_ids[: len(hand)] == hand and set(got_ids[len(hand) :]) == {0}

    extended = tower_for(VOCAB_SIZE + 4)
    table = torch.cat([encoder.tower.token_embedding.weight.detach(), zxq, style])
    extended.load_state_dict({**encoder.tower.state_dict(), "token_embedding.weight": table})
    expected = TextEncoder(extended).encode_tokens(torch.tensor([got_ids]))
    got = encoder.encode([prompt], tokens)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    plain = encoder.encode(["a photo of a cat"])
    assert all(torch.equal(a, b) for a, b in zip(encoder.encode(["a photo of a cat"], tokens), plain, strict=True))


def test_bundled_embeddings_that_do_not_fit_are_refused(tmp_path, encoder):
    wide = read_lora(write_bundle(tmp_path / "wide.safetensors", {("<w>", "clip_g"): torch.zeros(2, WIDTH + 1)}))
    with pytest.raises(LoraError, match=r"wide\.safetensors: its bundled embedding '<w>' is 33 wide"):
        token_overrides([wide], encoder)
    twice = {("Zxq", "clip_g"): torch.zeros(1, WIDTH), ("zxq", "clip_g"): torch.ones(1, WIDTH)}
    with pytest.raises(LoraError, match=r"twice\.safetensors: two bundled embeddings are named"):
        read_lora(write_bundle(tmp_path / "twice.safetensors", twice))
    first = read_lora(write_bundle(tmp_path / "a.safetensors", {("<e>", "clip_g"): torch.zeros(1, WIDTH)}))
    other = read_lora(write_bundle(tmp_path / "b.safetensors", {("<E>", "clip_g"): torch.ones(1, WIDTH)}))
    with pytest.raises(LoraError, match=r"b\.safetensors and LoRA .*a\.safetensors both add the embedding '<E>'"):
        token_overrides([first, other], encoder)


def test_pipeline_applies_a_bundled_embedding_only_where_the_prompt_names_it(tmp_path, demo_models):
    pipeline = Pipeline(ModelSet(demo_models))
    path = write_bundle(tmp_path / "emb.safetensors", {("zxq", "clip_g"): torch.randn(2, WIDTH) * 3})
    fast = {"stage_c": StageSettings(2, 4.0, 2.0), "stage_b": StageSettings(1, 1.1, 1.0), "width": 256, "height": 256}
    request = GenerationRequest("a zxq lighthouse", seed=5, **fast)

    def run(prompt, loras=((str(path), 1.0),)):
        return pipeline.run(request.with_(prompt=prompt, loras=loras))[0].pixels

    assert not np.array_equal(run("a zxq lighthouse"), run("a zxq lighthouse", ()))
    assert np.array_equal(run("a lighthouse"), run("a lighthouse", ()))  # not named: nothing changes
