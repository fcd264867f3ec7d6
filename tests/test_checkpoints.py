"""The checkpoint loader: round trips, recognition, precision rules and every kind of bad file."""

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from cascade_studio.pipeline.checkpoints import (
    META_CONFIG,
    META_NETWORK,
    CheckpointError,
    identify,
    identify_layout,
    load_network,
    read_header,
    save_network,
)
from tests.support.manifests import manifest_shapes
from tests.support.tiny import TINY, build_tiny, run_tiny


@pytest.mark.parametrize("name", sorted(TINY))
def test_round_trip_reproduces_outputs_bit_for_bit(tmp_path, name):
    network, kwargs = TINY[name]
    original = build_tiny(name, seed=5)
    path = save_network(original, tmp_path / f"{name}.safetensors", network, kwargs)

    loaded = load_network(path)
    assert (loaded.identity.network, loaded.identity.variant) == (network, "custom")
    assert loaded.identity.kwargs == json.loads(json.dumps(kwargs))
    assert loaded.dtype == torch.float32
    assert not any(p.is_meta or p.requires_grad for p in loaded.module.parameters())
    assert not loaded.module.training
    for ours, theirs in zip(run_tiny(name, loaded.module), run_tiny(name, original), strict=True):
        assert torch.equal(ours, theirs)


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path):
    network, kwargs = TINY["previewer"]
    save_network(build_tiny("previewer"), tmp_path / "p.safetensors", network, kwargs)
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]


def _save_in(dtype, tmp_path, name):
    network, kwargs = TINY[name]
    module = build_tiny(name).to(dtype)
    return module, save_network(module, tmp_path / f"{name}_{dtype}.safetensors", network, kwargs)


def test_bf16_file_stays_bf16_or_upcasts_on_request(tmp_path):
    module, path = _save_in(torch.bfloat16, tmp_path, "stage_c")
    kept = load_network(path)
    assert kept.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in kept.module.parameters())
    up = load_network(path, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in up.module.parameters())
    for (key, a), b in zip(module.state_dict().items(), up.module.state_dict().values()):
        assert torch.equal(a.float(), b), key


def test_integer_buffers_keep_their_dtype_when_upcasting(tmp_path):
    _, path = _save_in(torch.bfloat16, tmp_path, "effnet")
    loaded = load_network(path, dtype=torch.float32)
    counters = [b for k, b in loaded.module.state_dict().items() if k.endswith("num_batches_tracked")]
    assert counters and all(b.dtype == torch.int64 for b in counters)


def test_fp16_stage_c_is_refused_with_an_explanation(tmp_path):
    _, path = _save_in(torch.float16, tmp_path, "stage_c")
    with pytest.raises(CheckpointError, match=r"Stage C is stored in float16.*overflow.*bfloat16") as err:
        load_network(path)
    assert str(path) in str(err.value)
    _, bf16 = _save_in(torch.bfloat16, tmp_path, "stage_c")
    with pytest.raises(CheckpointError, match="asked for in float16"):
        load_network(bf16, dtype=torch.float16)


def test_fp16_is_allowed_for_stage_b(tmp_path):
    _, path = _save_in(torch.float16, tmp_path, "stage_b")
    assert load_network(path).dtype == torch.float16


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickle_based_files_are_refused_unopened(tmp_path, suffix):
    path = tmp_path / f"stage_c{suffix}"
    path.write_bytes(b"not even read")
    with pytest.raises(CheckpointError, match=r"only \.safetensors weights are loaded") as err:
        load_network(path)
    assert str(path) in str(err.value)


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    path = tmp_path / "stage_c.safetensors"
    torch.save({"w": torch.zeros(2)}, path)  # a zip archive holding a pickle
    with pytest.raises(CheckpointError, match=r"only \.safetensors weights are loaded"):
        read_header(path)


@pytest.fixture
def tiny_file(tmp_path):
    network, kwargs = TINY["stage_b"]
    return save_network(build_tiny("stage_b"), tmp_path / "stage_b.safetensors", network, kwargs)


def test_truncated_file_is_reported_as_truncated(tiny_file):
    data = tiny_file.read_bytes()
    tiny_file.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"truncated.*download it again") as err:
        load_network(tiny_file)
    assert str(tiny_file) in str(err.value)


def test_file_cut_inside_the_header_is_reported(tiny_file):
    tiny_file.write_bytes(tiny_file.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_network(tiny_file)


def test_tiny_and_empty_files_are_reported(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too small for a safetensors file"):
        read_header(path)


def test_corrupt_header_is_reported(tiny_file):
    data = bytearray(tiny_file.read_bytes())
    data[10:20] = b"\xff" * 10
    tiny_file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="header is corrupt"):
        load_network(tiny_file)


def test_inconsistent_tensor_size_is_reported(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"'w' occupies 8 bytes but F32 \[4\] needs 16"):
        read_header(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_network(tmp_path / "nope.safetensors")


def test_unknown_checkpoint_is_reported(tmp_path):
    path = tmp_path / "sdxl.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(CheckpointError, match="not a Stable Cascade checkpoint"):
        identify(path)


def test_wrong_network_for_the_job_is_reported(tiny_file):
    with pytest.raises(CheckpointError, match=r"holds a Stage B \(custom\) checkpoint, but this needs a Stage C"):
        load_network(tiny_file, expect="stage_c")


def test_layout_errors_list_missing_unexpected_and_misshaped_keys(tmp_path):
    network, kwargs = TINY["stage_c"]
    state = build_tiny("stage_c").state_dict()
    del state["clf.1.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["clip_txt_mapper.weight"] = torch.zeros(3, 3)
    path = tmp_path / "broken.safetensors"
    meta = {META_NETWORK: network, META_CONFIG: json.dumps(kwargs)}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)
    with pytest.raises(CheckpointError) as err:
        load_network(path)
    message = str(err.value)
    assert str(path) in message
    assert "1 missing key(s), first: clf.1.bias" in message
    assert "1 unexpected key(s), first: extra.weight" in message
    assert "clip_txt_mapper.weight is [3, 3] (expected [128, 32])" in message


def test_near_miss_of_a_released_layout_names_the_closest_variant():
    shapes = manifest_shapes("stage_c_lite")
    del shapes["up_blocks.1.0.depthwise.weight"]
    shapes["down_blocks.0.0.depthwise.bias"] = (7,)
    with pytest.raises(CheckpointError) as err:
        identify_layout(shapes, source="stage_c_lite_bf16.safetensors")
    message = str(err.value)
    assert message.startswith("stage_c_lite_bf16.safetensors: looks like a Stage C checkpoint")
    assert "Closest is 'lite'" in message
    assert "missing key(s), first: up_blocks.1.0.depthwise.weight" in message
    assert "down_blocks.0.0.depthwise.bias is [7] (expected [1536])" in message


def test_tiny_layouts_are_recognised_from_their_metadata(tmp_path):
    for name, (network, kwargs) in TINY.items():
        path = save_network(build_tiny(name), tmp_path / f"{name}.safetensors", network, kwargs)
        header, identity = identify(path)
        assert identity.network == network, name
        assert not identity.released
        assert header.float_dtypes == {"F32"}
