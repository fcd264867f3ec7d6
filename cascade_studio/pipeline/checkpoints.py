"""Reading, recognising and loading Stable Cascade checkpoints (safetensors only).

A checkpoint is first *inspected*: its safetensors header is parsed and validated by hand, so a
truncated or corrupt file fails with a message naming the file rather than deep inside a library.
The key set then says which network it holds, and the shapes which variant (Stage C full or lite,
…). Files that match no released layout (our tiny demo and test networks) carry their constructor
keywords in the safetensors metadata. Loading builds the module on the ``meta`` device and
assigns the tensors into it as they are read, so the weights are never held twice.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

#: Safetensors metadata keys with which we describe networks that match no released layout.
META_NETWORK = "cascade_studio.network"
META_CONFIG = "cascade_studio.config"

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}
MAX_HEADER_BYTES = 100 * 1024 * 1024
# torch.save writes a zip archive (or, in old versions, a bare pickle) under any file name.
TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80\x02")
REDOWNLOAD = "Delete the file and download it again."

DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}

RELEASED_PROJ_BLOCKS = [0, 4, 8, 12, 51, 55, 59, 63]


@dataclass(frozen=True)
class NetworkKind:
    """One network class and how people call it."""

    name: str
    label: str
    module: str
    cls: str

    def build_class(self) -> type[torch.nn.Module]:
        return getattr(importlib.import_module(self.module), self.cls)


NETWORKS: dict[str, NetworkKind] = {
    kind.name: kind
    for kind in (
        NetworkKind("stage_c", "Stage C", "cascade_studio.networks.stage_c", "StageC"),
        NetworkKind("stage_b", "Stage B", "cascade_studio.networks.stage_b", "StageB"),
        NetworkKind("stage_a", "Stage A", "cascade_studio.networks.stage_a", "StageA"),
        NetworkKind("effnet", "EfficientNet encoder", "cascade_studio.networks.effnet", "EfficientNetEncoder"),
        NetworkKind("previewer", "Previewer", "cascade_studio.networks.previewer", "Previewer"),
        NetworkKind("controlnet", "ControlNet", "cascade_studio.networks.controlnet", "ControlNet"),
    )
}

#: The released variants: (network, variant) -> the reference constructor keywords.
RELEASED: dict[tuple[str, str], dict] = {
    ("stage_c", "full"): {},
    ("stage_c", "lite"): {
        "c_cond": 1536,
        "c_hidden": [1536, 1536],
        "nhead": [24, 24],
        "blocks": [[4, 12], [12, 4]],
    },
    ("stage_b", "full"): {
        "c_hidden": [320, 640, 1280, 1280],
        "nhead": [-1, -1, 20, 20],
        "blocks": [[2, 6, 28, 6], [6, 28, 6, 2]],
        "block_repeat": [[1, 1, 1, 1], [3, 3, 2, 2]],
    },
    ("stage_b", "lite"): {
        "c_hidden": [320, 576, 1152, 1152],
        "nhead": [-1, 9, 18, 18],
        "blocks": [[2, 4, 14, 4], [4, 14, 4, 2]],
        "block_repeat": [[1, 1, 1, 1], [2, 2, 2, 2]],
    },
    ("stage_a", "released"): {},
    ("effnet", "released"): {},
    ("previewer", "released"): {},
    ("controlnet", "inpainting"): {"c_in": 4, "proj_blocks": RELEASED_PROJ_BLOCKS},
    ("controlnet", "canny"): {"c_in": 1, "proj_blocks": RELEASED_PROJ_BLOCKS},
    ("controlnet", "super_resolution"): {
        "c_in": 16,
        "proj_blocks": RELEASED_PROJ_BLOCKS,
        "bottleneck_mode": "large",
    },
}


class CheckpointError(ValueError):
    """A weights file that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int = 0  # byte offsets into the data section
    end: int = 0


@dataclass(frozen=True)
class Header:
    path: Path
    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str] = field(default_factory=dict)
    data_start: int = 0  # file offset of the data section

    @property
    def float_dtypes(self) -> set[str]:
        return {t.dtype for t in self.tensors.values() if t.dtype in ("F64", "F32", "F16", "BF16")}

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: t.shape for k, t in self.tensors.items()}


@dataclass(frozen=True)
class Identity:
    """What a checkpoint holds: network, variant and the constructor keywords that build it."""

    network: str
    variant: str
    kwargs: dict
    released: bool

    @property
    def label(self) -> str:
        return f"{NETWORKS[self.network].label} ({self.variant})"


def _refuse_pickle(path: Path) -> None:
    raise CheckpointError(
        f"{path}: only .safetensors weights are loaded. Pickle-based files ({path.suffix or 'no suffix'}) "
        "can run arbitrary code when opened, so Cascade Studio never opens them. Download the "
        ".safetensors release of this model instead."
    )


def read_header(path: str | os.PathLike) -> Header:
    """Parse and validate a safetensors header without reading the tensor data."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        _refuse_pickle(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: {size} bytes is too small for a safetensors file; the download is incomplete "
                    f"or the file is not a checkpoint. {REDOWNLOAD}"
                )
            (header_len,) = struct.unpack("<Q", head)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                if head.startswith(TORCH_SAVE_MAGIC):
                    _refuse_pickle(path)
                raise CheckpointError(
                    f"{path}: not a valid safetensors file (its header claims {header_len} bytes but the file "
                    f"has {size}); it is truncated or corrupt. {REDOWNLOAD}"
                )
            raw = f.read(header_len)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, not a .safetensors file") from None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the safetensors header is corrupt ({exc}). {REDOWNLOAD}") from None

    metadata = doc.pop("__metadata__", None) or {}
    data_len = size - 8 - header_len
    tensors: dict[str, TensorInfo] = {}
    for key, entry in doc.items():
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            itemsize = DTYPES[dtype][1]
            expected = math.prod(shape) * itemsize
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: the safetensors header entry for {key!r} is malformed; the file is corrupt. {REDOWNLOAD}"
            ) from None
        if end > data_len:
            raise CheckpointError(
                f"{path}: the file is truncated: tensor {key!r} ends at byte {end} of the data section, which "
                f"holds only {data_len} bytes. {REDOWNLOAD}"
            )
        if end - begin != expected or begin < 0:
            raise CheckpointError(
                f"{path}: tensor {key!r} occupies {end - begin} bytes but {dtype} {list(shape)} needs "
                f"{expected}; the file is corrupt. {REDOWNLOAD}"
            )
        tensors[key] = TensorInfo(dtype, shape, begin, end)
    if not tensors:
        raise CheckpointError(f"{path}: the safetensors file holds no tensors")
    return Header(path, tensors, {str(k): str(v) for k, v in metadata.items()}, 8 + header_len)


def _family(keys: set[str]) -> str | None:
    if {"clip_txt_mapper.weight", "clip_img_mapper.weight"} <= keys:
        return "stage_c"
    if {"clip_mapper.weight", "effnet_mapper.0.weight"} <= keys:
        return "stage_b"
    if "vquantizer.codebook.weight" in keys:
        return "stage_a"
    if any(k.startswith("projections.") for k in keys):
        return "controlnet"
    if "mapper.0.weight" in keys and any(k.startswith("backbone.") for k in keys):
        return "effnet"
    if keys and all(k.startswith("blocks.") for k in keys):
        return "previewer"
    return None


@functools.lru_cache(maxsize=32)
def _expected_shapes(network: str, kwargs_json: str) -> dict[str, tuple[int, ...]]:
    cls = NETWORKS[network].build_class()
    with torch.device("meta"):
        module = cls(**json.loads(kwargs_json))
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def expected_shapes(network: str, kwargs: Mapping) -> dict[str, tuple[int, ...]]:
    """Key → shape of the state dict that ``network`` built with ``kwargs`` has (built on meta)."""
    return _expected_shapes(network, json.dumps(kwargs, sort_keys=True))


@dataclass(frozen=True)
class LayoutDiff:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def describe(self, limit: int = 5) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s), first: {', '.join(self.missing[:limit])}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s), first: {', '.join(self.unexpected[:limit])}")
        if self.mismatched:
            shown = ", ".join(f"{k} is {list(got)} (expected {list(want)})" for k, got, want in self.mismatched[:limit])
            parts.append(f"{len(self.mismatched)} wrongly shaped tensor(s), first: {shown}")
        return "; ".join(parts)


def layout_diff(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> LayoutDiff:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(
        (k, tuple(found[k]), tuple(expected[k]))
        for k in set(found) & set(expected)
        if tuple(found[k]) != tuple(expected[k])
    )
    return LayoutDiff(missing, unexpected, mismatched)


def identify_layout(
    shapes: Mapping[str, tuple[int, ...]],
    metadata: Mapping[str, str] | None = None,
    *,
    source: str = "checkpoint",
) -> Identity:
    """Say which network and variant a state dict layout (key → shape) belongs to.

    Released variants are recognised by their exact layout; anything else must carry our
    constructor keywords in its metadata. Raises :class:`CheckpointError` otherwise.
    """
    metadata = metadata or {}
    network = _family(set(shapes))
    if network is None:
        hint = metadata.get(META_NETWORK)
        if hint not in NETWORKS:
            first = ", ".join(sorted(shapes)[:3])
            raise CheckpointError(
                f"{source}: not a Stable Cascade checkpoint that Cascade Studio knows (first keys: {first}). "
                "Expected one of the official stabilityai/stable-cascade single-file checkpoints."
            )
        network = hint

    candidates = [(variant, kw) for (net, variant), kw in RELEASED.items() if net == network]
    diffs = []
    for variant, kw in candidates:
        diff = layout_diff(shapes, expected_shapes(network, kw))
        if diff.size == 0:
            return Identity(network, variant, dict(kw), released=True)
        diffs.append((diff.size, variant, diff))

    if META_CONFIG in metadata:
        try:
            kwargs = json.loads(metadata[META_CONFIG])
            if not isinstance(kwargs, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise CheckpointError(f"{source}: metadata {META_CONFIG!r} is not valid JSON ({exc})") from None
        try:
            diff = layout_diff(shapes, expected_shapes(network, kwargs))
        except TypeError as exc:
            raise CheckpointError(f"{source}: metadata {META_CONFIG!r} does not fit {network}: {exc}") from None
        if diff.size == 0:
            return Identity(network, "custom", kwargs, released=False)
        raise CheckpointError(
            f"{source}: the tensors do not match the {NETWORKS[network].label} configuration stored in its "
            f"metadata: {diff.describe()}"
        )

    _, variant, diff = min(diffs, key=lambda d: d[0])
    raise CheckpointError(
        f"{source}: looks like a {NETWORKS[network].label} checkpoint but matches no released layout. "
        f"Closest is {variant!r}: {diff.describe()}. Use an official stabilityai/stable-cascade file, "
        "or re-download this one if it should be official."
    )


def identify(path: str | os.PathLike) -> tuple[Header, Identity]:
    header = read_header(path)
    return header, identify_layout(header.shapes, header.metadata, source=str(header.path))


def read_tensors(
    header: Header, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(key, tensor)`` for every tensor of a validated safetensors file.

    Each tensor is read straight from the file into its own freshly allocated (aligned) memory:
    no memory map stays resident beside the weights, so a load peaks at one copy of them plus
    one tensor. Floating tensors are converted to ``dtype`` and moved to ``device`` one by one.
    """
    try:
        with open(header.path, "rb", buffering=0) as f:
            for key, info in sorted(header.tensors.items(), key=lambda item: item[1].begin):
                tensor = torch.empty(info.shape, dtype=DTYPES[info.dtype][0])
                if tensor.numel():
                    f.seek(header.data_start + info.begin)
                    _read_exactly(f, memoryview(tensor.view(-1).view(torch.uint8).numpy()), header.path, key)
                if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                yield key, tensor.to(device)
    except OSError as exc:
        raise CheckpointError(f"{header.path}: could not read the tensors ({exc})") from None


def _read_exactly(f, buffer: memoryview, path: Path, key: str) -> None:
    done = 0
    while done < len(buffer):  # one read() returns at most ~2 GiB on Linux
        n = f.readinto(buffer[done:])
        if not n:
            raise CheckpointError(f"{path}: the file ended inside tensor {key!r}; it is truncated. {REDOWNLOAD}")
        done += n


@dataclass
class LoadedNetwork:
    module: torch.nn.Module
    identity: Identity
    path: Path
    dtype: torch.dtype


def _file_dtype(header: Header) -> torch.dtype:
    floats = header.float_dtypes
    if len(floats) == 1:
        return DTYPES[next(iter(floats))][0]
    return torch.float32


def load_network(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    expect: str | None = None,
) -> LoadedNetwork:
    """Load a checkpoint into the network it holds, in eval mode and without gradients.

    ``dtype=None`` keeps the file's precision (a bf16 file stays bf16); pass ``torch.float32`` to
    upcast. Stage C refuses float16, whose activations overflow with the released weights.
    ``expect`` names the network the caller needs (``"stage_c"`` …); another one is an error.
    """
    header, identity = identify(path)
    path = header.path
    if expect is not None and identity.network != expect:
        raise CheckpointError(
            f"{path}: holds a {identity.label} checkpoint, but this needs a {NETWORKS[expect].label} checkpoint."
        )
    target = dtype or _file_dtype(header)
    if identity.network == "stage_c" and target == torch.float16:
        source = "is stored in float16" if dtype is None else "was asked for in float16"
        raise CheckpointError(
            f"{path}: Stage C {source}. Its activations overflow in float16 (the reference states that only "
            "bfloat16 and float32 work), so the images would be black or noise. Use the official "
            "stage_c_bf16 / stage_c (float32) files, or choose bfloat16 or float32 precision."
        )

    state = dict(read_tensors(header, dtype=target, device=device))
    with torch.device("meta"):
        module = NETWORKS[identity.network].build_class()(**identity.kwargs)
    module.load_state_dict(state, strict=True, assign=True)
    module.eval().requires_grad_(False)
    return LoadedNetwork(module, identity, path, target)


def save_network(module: torch.nn.Module, path: str | os.PathLike, network: str, kwargs: Mapping) -> Path:
    """Write ``module`` as a safetensors checkpoint with the official key names.

    The metadata records the network and its constructor keywords, so layouts that match no
    released variant (demo and test networks) can be loaded again. Written atomically.
    """
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    return write_safetensors(state, path, {META_NETWORK: network, META_CONFIG: json.dumps(dict(kwargs))})


def write_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str]
) -> Path:
    """Write a safetensors file atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
