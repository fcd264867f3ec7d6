"""Device and precision choice (pipeline/device.py)."""

from __future__ import annotations

import pytest
import torch

from cascade_studio.pipeline.device import choose_dtype, cpu_has_native_bf16

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "native"), [(False, False, False), (False, True, True), (True, False, True)]
)
def test_auto_precision_on_a_cpu_follows_native_bf16(monkeypatch, amx, avx512_bf16, native):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert cpu_has_native_bf16() is native
    assert choose_dtype("auto", CPU) == (torch.bfloat16 if native else torch.float32)
    # An explicit choice wins either way.
    assert choose_dtype("fp32", CPU) == torch.float32
    assert choose_dtype("bf16", CPU) == torch.bfloat16


def test_a_torch_without_the_probes_counts_as_no_native_bf16(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert cpu_has_native_bf16() is False
    assert choose_dtype("auto", CPU) == torch.float32


def test_fp16_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="fp16 overflows in Stage C"):
        choose_dtype("fp16", CPU)
