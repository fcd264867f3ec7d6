"""Choosing the compute device and precision."""

from __future__ import annotations

import torch

from ..networks.linear import cpu_has_native_bf16

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; anything else must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but this PyTorch build sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but it is not available on this machine")
    return device


def precision_name(dtype: torch.dtype) -> str:
    """ "bfloat16", "float32": how status lines and PNG metadata name a precision."""
    return str(dtype).removeprefix("torch.")


def choose_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on GPUs that support it and on CPUs with native bf16 matrix products (the
    reference samples in bf16; on such a CPU it halves the time), float32 elsewhere. float16 is not offered:
    the released Stage C overflows in it."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in _DTYPES:
        raise ValueError(f"precision must be auto, bf16 or fp32, not {name!r} (fp16 overflows in Stage C)")
    return _DTYPES[name]


#: Below this much GPU memory, "auto" runs one stage at a time (the lite bf16 set needs ~5 GB of
#: weights alone, plus activations).
SEQUENTIAL_BELOW_BYTES = 12 * 2**30


def choose_memory(name: str, device: torch.device) -> str:
    """``auto``: one stage at a time on GPUs with less than 12 GiB, everything resident elsewhere."""
    if name != "auto":
        return name
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return "sequential" if total < SEQUENTIAL_BELOW_BYTES else "resident"
    return "resident"
