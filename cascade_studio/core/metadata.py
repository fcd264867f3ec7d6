"""PNG metadata: write ours in a form other tools understand, read everybody's.

Every image we save carries two text chunks: `parameters` (the A1111 text form most tools read) and
`cascade_studio` (our JSON, holding the full `GenerationRequest`; recall reads only this). Reading sniffs, in
order: `cascade_studio` -> `invokeai_metadata` -> `prompt`/`workflow` (ComfyUI) -> `parameters` (JSON from
Fooocus/SwarmUI, else A1111 text).

All metadata read from files is untrusted: chunk sizes are bounded before anything is read into memory,
JSON errors are caught, graph walks are bounded, and nothing is ever evaluated.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .request import MASK_MODES, STRENGTH_MODES, GenerationRequest, LoraUse

SOURCES = ("cascade_studio", "invokeai", "comfyui", "a1111", "fooocus", "swarmui", "unknown")
MAX_TEXT_BYTES = 4 * 1024 * 1024  # one text chunk; Pillow separately caps *decompressed* zTXt/iTXt at 1 MiB
MAX_TOTAL_TEXT_BYTES = 16 * 1024 * 1024  # all text chunks of one file together
MAX_CHUNKS = 1_000_000  # chunk headers walked per file (big images have thousands of IDAT chunks)
MAX_GRAPH_NODES = 10_000
MAX_TRACE_DEPTH = 64
SAMPLER_LABELS = {"ddpm": "DDPM", "ddim": "DDIM"}

# ---------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------


def a1111_parameters(request: GenerationRequest, model_name: str, version: str) -> str:
    """The A1111 "parameters" text for one image (prompt, negative prompt, then one line of settings)."""
    c, b = request.stage_c, request.stage_b
    params: dict[str, Any] = {
        "Steps": c.steps,
        "Sampler": SAMPLER_LABELS.get(request.sampler, str(request.sampler).upper()),
        "CFG scale": _number_text(c.cfg),
        "Seed": request.seed,
        "Size": f"{request.width}x{request.height}",
        "Model": model_name,
        "Stage B steps": b.steps,
        "Stage B CFG scale": _number_text(b.cfg),
        "Shift": _number_text(c.shift),
    }
    # Only written when they differ from what every plain text-to-image run uses, so the common case stays
    # exactly the documented line.
    if b.shift != 1:
        params["Stage B shift"] = _number_text(b.shift)
    if request.mode != "text":
        params["Mode"] = request.mode
    if request.mode in STRENGTH_MODES:
        params["Denoising strength"] = _number_text(request.strength)
    params.update(_control_parameters(request))
    loras = request.all_loras()
    if loras:  # A1111 keeps its <lora:…> tags in the prompt; this line also lists the ones given outside it
        params["LoRA"] = ", ".join(_lora_text(use) for use in loras)
    params["Version"] = f"cascade-studio {version}"

    line = ", ".join(f"{key}: {_a1111_quote(str(value))}" for key, value in params.items())
    negative = f"\nNegative prompt: {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{line}".strip()


_CONTROLNET_NAMES = {"inpaint": "inpainting", "outpaint": "inpainting", "canny": "canny", "upscale": "super_resolution"}


def _control_parameters(request: GenerationRequest) -> dict[str, str]:
    """The A1111-style settings of the mask and ControlNet modes (A1111's own names where it has one)."""
    params: dict[str, str] = {}
    if request.mode in MASK_MODES:
        params["Inpaint method"] = {"latent_blend": "latent blend"}.get(request.method, request.method)
        if request.mode == "outpaint" and request.outpaint is not None:
            params["Outpaint"] = "{} {} {} {}".format(*request.outpaint)  # left top right bottom, px
        params["Mask blur"] = str(request.mask_feather)
        if request.mask_grow:
            params["Mask grow"] = str(request.mask_grow)
        params["Inpaint area"] = "Only masked" if request.context == "mask" else "Whole picture"
        if request.context == "mask":
            params["Only masked padding, pixels"] = str(request.context_padding)
    uses_controlnet = request.mode in ("canny", "upscale") or (
        request.mode in MASK_MODES and request.method == "controlnet"
    )
    if uses_controlnet:
        params["ControlNet"] = _CONTROLNET_NAMES[request.mode]
        params["Control strength"] = _number_text(request.control_strength)
    return params


def png_text_chunks(
    request: GenerationRequest,
    model_name: str,
    version: str,
    *,
    device: str | None = None,
    precision: str | None = None,
) -> dict[str, str]:
    """The text chunks for one saved image. Pass `request.for_image(i)`: a PNG describes exactly one image.

    `device` ("cpu", "cuda" …) and `precision` ("bfloat16", "float32") say what computed it: the same request
    in another precision gives a slightly different image."""
    if request.batch_size != 1:
        raise ValueError("png metadata describes one image: pass request.for_image(i), not the whole batch")
    ours = {
        "schema_version": GenerationRequest.schema_version,
        "request": request.to_dict(),
        "generator": f"cascade-studio {version}",
        "model": model_name,
    }
    ours.update({k: v for k, v in (("device", device), ("precision", precision)) if v is not None})
    return {
        "parameters": a1111_parameters(request, model_name, version),
        # ASCII JSON (non-ASCII as \\u escapes) reads back identically in any tool, even ones that mangle iTXt.
        "cascade_studio": json.dumps(ours, ensure_ascii=True, sort_keys=True),
    }


def save_png_atomic(path: str | os.PathLike[str], image: Image.Image, texts: Mapping[str, str]) -> Path:
    """Write `image` as PNG with `texts` to `path` atomically: `<name>.tmp` in the same folder, fsync, rename.

    Either the complete new file is at `path` or nothing changed there; the temporary file never survives.
    """
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        if not isinstance(key, str) or not 1 <= len(key) <= 79 or not key.isascii():
            raise ValueError(f"PNG text key must be 1-79 ASCII characters (got {key!r})")
        # tEXt is Latin-1 by the standard, but many tools write (and read) UTF-8 there; keeping tEXt pure
        # ASCII and everything else in UTF-8 iTXt leaves no room for either mistake.
        if value.isascii():
            info.add_text(key, value)
        else:
            info.add_itxt(key, value)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)
    return path


def fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; Windows cannot open folders this way and needs no such step.
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lora_text(use: LoraUse) -> str:
    """``name:0.8``, or ``name:0.8:te=0.5`` with a text-encoder weight of its own (the CLI's ``--lora`` form)."""
    text = f"{use.name}:{_number_text(use.weight)}"
    return text if use.text_weight is None else f"{text}:te={_number_text(use.text_weight)}"


def _number_text(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _a1111_quote(text: str) -> str:
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------------
# The A1111 text form
# ---------------------------------------------------------------------------------------------------------

_A1111_KEY = re.compile(r"\s*(\w[\w \-/]+):\s*")
_A1111_QUOTED = re.compile(r'"(?:\\.|[^\\"])+"')
_NEGATIVE = "Negative prompt:"


def parse_a1111(text: str) -> dict[str, str]:
    """Split A1111 "parameters" text into prompt, negative_prompt and the settings' key/value pairs.

    The last line counts as settings only when it holds three or more `key: value` pairs (as in A1111
    itself); otherwise it belongs to the prompt. Quoted values are unquoted; all values stay strings.
    """
    *lines, last = text.strip().replace("\r\n", "\n").split("\n")
    pairs = _a1111_pairs(last)
    if len(pairs) < 3:
        lines.append(last)
        pairs = []
    prompt: list[str] = []
    negative: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not negative and stripped.startswith(_NEGATIVE):
            negative.append(stripped[len(_NEGATIVE) :].strip())
        elif negative:
            negative.append(line)
        else:
            prompt.append(line)
    result = {"prompt": "\n".join(prompt), "negative_prompt": "\n".join(negative)}
    for key, value in pairs:
        result.setdefault(key, value)
    return result


def _a1111_pairs(line: str) -> list[tuple[str, str]]:
    # A linear scan. A1111's own `re.findall` over the line can backtrack quadratically on a long line
    # without colons, which a hostile file could use to hang the gallery.
    pairs: list[tuple[str, str]] = []
    pos, n = 0, len(line)
    while pos < n:
        key = _A1111_KEY.match(line, pos)
        if key is None:
            comma = line.find(",", pos)
            if comma < 0:
                break
            pos = comma + 1
            continue
        pos = key.end()
        quoted = _A1111_QUOTED.match(line, pos)
        if quoted is not None and (quoted.end() == n or line[quoted.end()] == ","):
            end = quoted.end()
            value = _json_unquote(quoted.group(0))
        else:
            end = line.find(",", pos)
            end = n if end < 0 else end
            value = line[pos:end].strip()
        pairs.append((key.group(1).strip(), value))
        pos = end + 1
    return pairs


def _json_unquote(quoted: str) -> str:
    try:
        value = json.loads(quoted)
    except ValueError:
        return quoted
    return value if isinstance(value, str) else quoted


# ---------------------------------------------------------------------------------------------------------
# Reading PNG text chunks
# ---------------------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_TYPES = (b"tEXt", b"zTXt", b"iTXt")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A valid 1×1 PNG around one text chunk at a time; see _decode_text_chunk.
_STUB_HEAD = _PNG_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
_STUB_TAIL = _chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + _chunk(b"IEND", b"")


@dataclass
class _PngScan:
    size: tuple[int, int] | None = None
    texts: dict[str, str] = field(default_factory=dict)


def read_png_text(path: str | os.PathLike[str], max_bytes: int = MAX_TEXT_BYTES) -> dict[str, str]:
    """Every tEXt, zTXt and iTXt chunk of a PNG (before or after the image data) as {key: text}.

    Chunks larger than `max_bytes`, with bad CRCs or that fail to decode are skipped; a file that is not a
    PNG gives {}. Missing or unreadable files raise OSError.
    """
    return _scan_png(path, max_bytes).texts


def _scan_png(path: str | os.PathLike[str], max_bytes: int) -> _PngScan:
    # Walk the chunk headers ourselves and hand Pillow one small text chunk at a time (wrapped in a 1×1
    # stub PNG). Opening the real file with Pillow would read every pre-IDAT text chunk whole, however
    # large, and would only find text after the image data by decoding all the pixels. We read Pillow,
    # not Qt: QImageReader.text() collapses newlines, which breaks the A1111 form.
    scan = _PngScan()
    total = 0
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return scan
        for _ in range(MAX_CHUNKS):
            header = f.read(8)
            if len(header) < 8:
                break
            length, kind = struct.unpack(">I4s", header)
            if length > 0x7FFFFFFF:  # not a PNG any more
                break
            if kind == b"IEND":
                break
            wanted = (kind == b"IHDR" and length == 13) or (
                kind in _TEXT_TYPES and length <= max_bytes and total + length <= MAX_TOTAL_TEXT_BYTES
            )
            if not wanted:
                f.seek(length + 4, os.SEEK_CUR)
                continue
            data, crc = f.read(length), f.read(4)
            if len(data) < length or len(crc) < 4:
                break
            if zlib.crc32(kind + data) != int.from_bytes(crc, "big"):
                continue
            if kind == b"IHDR":
                scan.size = struct.unpack(">II", data[:8])
                continue
            total += length
            decoded = _decode_text_chunk(kind, data)
            if decoded is not None and len(decoded[1]) <= max_bytes:
                scan.texts[decoded[0]] = decoded[1]
    return scan


def _decode_text_chunk(kind: bytes, data: bytes) -> tuple[str, str] | None:
    try:
        with Image.open(io.BytesIO(_STUB_HEAD + _chunk(kind, data) + _STUB_TAIL), formats=["PNG"]) as im:
            found = [(k, v) for k, v in im.info.items() if isinstance(k, str) and isinstance(v, str)]
    except Exception:  # any failure to decode one untrusted chunk only loses that chunk
        return None
    if not found:
        return None
    key, value = found[-1]
    value = str(value)  # plain str, not Pillow's iTXt subclass
    if kind != b"iTXt" and not value.isascii():
        # tEXt/zTXt are Latin-1 by the standard, but several tools write UTF-8 there.
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            value = value.encode("latin-1").decode("utf-8")
    return key, value


# ---------------------------------------------------------------------------------------------------------
# Interpreting metadata
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForeignMetadata:
    """What a PNG says about how it was made, whichever tool wrote it.

    `request` is set only for our own files whose `cascade_studio` chunk is valid (it is what recall uses);
    `extra` holds tool-specific details (denoise, Stage B settings, ControlNet, model hash, ...); `raw` holds
    every text chunk as read; `error` says why our own chunk could not be used, when it could not.
    """

    source: str = "unknown"
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    sampler: str | None = None
    raw: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    request: GenerationRequest | None = None
    error: str | None = None


def read_metadata(path: str | os.PathLike[str], max_bytes: int = MAX_TEXT_BYTES) -> ForeignMetadata:
    """Read and interpret a PNG's generation metadata. Files without any give source "unknown"."""
    scan = _scan_png(path, max_bytes)
    meta = interpret_text_chunks(scan.texts)
    if scan.size is not None and meta.width is None and meta.height is None:
        meta = replace(meta, width=scan.size[0], height=scan.size[1])
    return meta


def interpret_text_chunks(texts: Mapping[str, str]) -> ForeignMetadata:
    """Interpret already-read text chunks (see `read_metadata`, which also fills in the pixel size)."""
    texts = dict(texts)
    own_error = None
    if "cascade_studio" in texts:
        try:
            return replace(_from_cascade_studio(texts), raw=texts)
        except _DATA_ERRORS as exc:
            own_error = f"cascade_studio metadata unusable: {exc}"
    meta = None
    for keys, reader in (
        (("invokeai_metadata",), _from_invokeai),
        (("prompt", "workflow"), _from_comfyui),
        (("parameters",), _from_parameters),
    ):
        if any(key in texts for key in keys):
            try:
                meta = reader(texts)
            except _DATA_ERRORS:
                meta = None
            if meta is not None:
                break
    meta = meta or ForeignMetadata()
    if own_error is not None:
        meta = replace(meta, source="cascade_studio", error=own_error)
    return replace(meta, raw=texts)


# The shapes of failure that malformed metadata can produce; anything else is a bug and should surface.
_DATA_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError)


def _load_json(text: str) -> Any:
    return json.loads(text)  # JSONDecodeError is a ValueError; deep nesting raises RecursionError


def _from_cascade_studio(texts: Mapping[str, str]) -> ForeignMetadata:
    data = _load_json(texts["cascade_studio"])
    if not isinstance(data, dict) or not isinstance(data.get("request"), dict):
        raise ValueError("no request object")
    request_data = dict(data["request"])
    request_data.setdefault("schema_version", data.get("schema_version", 1))
    request = GenerationRequest.from_dict(request_data)
    model = _str_or_none(data.get("model"))
    if model is None and "parameters" in texts:
        model = parse_a1111(texts["parameters"]).get("Model")
    return ForeignMetadata(
        source="cascade_studio",
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        seed=request.seed,
        steps=request.stage_c.steps,
        cfg=request.stage_c.cfg,
        width=request.width,
        height=request.height,
        model=model,
        sampler=SAMPLER_LABELS.get(request.sampler, request.sampler),
        extra={
            "generator": _str_or_none(data.get("generator")),
            "device": _str_or_none(data.get("device")),
            "precision": _str_or_none(data.get("precision")),
            "stage_b_steps": request.stage_b.steps,
            "stage_b_cfg": request.stage_b.cfg,
            "shift": request.stage_c.shift,
            "mode": request.mode,
            "method": request.method,
        },
        request=request,
    )


def _from_invokeai(texts: Mapping[str, str]) -> ForeignMetadata | None:
    data = _load_json(texts["invokeai_metadata"])
    if not isinstance(data, dict):
        return None
    model = data.get("model")
    if isinstance(model, dict):
        model = model.get("model_name") or model.get("name")
    extra = {
        key: data[key]
        for key in ("generation_mode", "scheduler", "strength", "cfg_rescale_multiplier")
        if _is_scalar(data.get(key))
    }
    return ForeignMetadata(
        source="invokeai",
        prompt=_str_or_empty(data.get("positive_prompt")),
        negative_prompt=_str_or_empty(data.get("negative_prompt")),
        seed=_to_int(data.get("seed")),
        steps=_to_int(data.get("steps")),
        cfg=_to_float(data.get("cfg_scale")),
        width=_to_int(data.get("width")),
        height=_to_int(data.get("height")),
        model=_str_or_none(model),
        sampler=_str_or_none(data.get("scheduler")),
        extra=extra,
    )


def _from_parameters(texts: Mapping[str, str]) -> ForeignMetadata | None:
    text = texts["parameters"]
    if text.lstrip().startswith("{"):
        try:
            data = _load_json(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            if isinstance(data.get("sui_image_params"), dict):
                return _from_swarmui(data["sui_image_params"])
            return _from_fooocus(data)
    return _from_a1111(text)


def _from_a1111(text: str) -> ForeignMetadata:
    parsed = parse_a1111(text)
    prompt = parsed.pop("prompt")
    negative = parsed.pop("negative_prompt")
    width, height = _parse_size(parsed.get("Size"))
    known = {"Steps", "Sampler", "CFG scale", "Seed", "Size", "Model"}
    return ForeignMetadata(
        source="a1111",
        prompt=prompt,
        negative_prompt=negative,
        seed=_to_int(parsed.get("Seed")),
        steps=_to_int(parsed.get("Steps")),
        cfg=_to_float(parsed.get("CFG scale")),
        width=width,
        height=height,
        model=parsed.get("Model"),
        sampler=parsed.get("Sampler"),
        extra={key: value for key, value in parsed.items() if key not in known},
    )


def _from_fooocus(data: dict[str, Any]) -> ForeignMetadata | None:
    if not any(key in data for key in ("prompt", "full_prompt", "negative_prompt")):
        return None
    width, height = _parse_size(data.get("resolution"))
    keys = ("scheduler", "performance", "sharpness", "version")
    extra = {key: data[key] for key in keys if _is_scalar(data.get(key))}
    return ForeignMetadata(
        source="fooocus",
        prompt=_str_or_empty(data.get("prompt")),
        negative_prompt=_str_or_empty(data.get("negative_prompt")),
        seed=_to_int(data.get("seed")),
        steps=_to_int(data.get("steps")),
        cfg=_to_float(data.get("guidance_scale")),
        width=width,
        height=height,
        model=_str_or_none(data.get("base_model")),
        sampler=_str_or_none(data.get("sampler")),
        extra=extra,
    )


def _from_swarmui(params: dict[str, Any]) -> ForeignMetadata:
    extra = {key: params[key] for key in ("scheduler", "swarm_version") if _is_scalar(params.get(key))}
    return ForeignMetadata(
        source="swarmui",
        prompt=_str_or_empty(params.get("prompt")),
        negative_prompt=_str_or_empty(params.get("negativeprompt")),
        seed=_to_int(params.get("seed")),
        steps=_to_int(params.get("steps")),
        cfg=_to_float(params.get("cfgscale")),
        width=_to_int(params.get("width")),
        height=_to_int(params.get("height")),
        model=_str_or_none(params.get("model")),
        sampler=_str_or_none(params.get("sampler")),
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------------------
# ComfyUI graphs
# ---------------------------------------------------------------------------------------------------------

# Widget order of the common nodes, for turning a UI `workflow` (positional widget values) into the
# API `prompt` form (named inputs) when a file carries only the workflow.
_WORKFLOW_WIDGETS = {
    "KSampler": ("seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"),
    "KSamplerAdvanced": (
        "add_noise",
        "noise_seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "start_at_step",
        "end_at_step",
        "return_with_leftover_noise",
    ),
    "CLIPTextEncode": ("text",),
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CheckpointLoader": ("config_name", "ckpt_name"),
    "UNETLoader": ("unet_name", "weight_dtype"),
    "EmptyLatentImage": ("width", "height", "batch_size"),
    "StableCascade_EmptyLatentImage": ("width", "height", "compression", "batch_size"),
    "ControlNetLoader": ("control_net_name",),
    "ControlNetApply": ("strength",),
    "ControlNetApplyAdvanced": ("strength", "start_percent", "end_percent"),
}
_TEXT_INPUTS = ("text", "text_g", "text_l", "prompt", "string", "value")
_CONDITIONING_INPUTS = ("conditioning", "conditioning_to", "conditioning_1", "cond")
_MODEL_NAME_INPUTS = ("ckpt_name", "unet_name", "model_name")
_Link = tuple[str, int]


def _from_comfyui(texts: Mapping[str, str]) -> ForeignMetadata | None:
    graph = None
    if "prompt" in texts:
        try:
            graph = _api_graph(_load_json(texts["prompt"]))
        except _DATA_ERRORS:
            graph = None
    if not graph and "workflow" in texts:
        try:
            graph = _workflow_to_api_graph(_load_json(texts["workflow"]))
        except _DATA_ERRORS:
            graph = None
    if not graph:
        return None
    return _from_comfyui_graph(graph)


def _api_graph(data: Any) -> dict[str, dict[str, Any]] | None:
    if not isinstance(data, dict):
        return None
    graph = {}
    for node_id, node in list(data.items())[:MAX_GRAPH_NODES]:
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            graph[str(node_id)] = {"class_type": str(node.get("class_type", "")), "inputs": node["inputs"]}
    return graph or None


def _workflow_to_api_graph(data: Any) -> dict[str, dict[str, Any]] | None:
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        return None
    links: dict[Any, _Link] = {}
    for link in data.get("links") or []:
        # [link_id, from_node, from_slot, to_node, to_slot, type]
        if isinstance(link, list) and len(link) >= 3 and isinstance(link[2], int):
            links[link[0]] = (str(link[1]), link[2])
    graph = {}
    for node in data["nodes"][:MAX_GRAPH_NODES]:
        if not isinstance(node, dict) or "id" not in node:
            continue
        kind = str(node.get("type", ""))
        inputs: dict[str, Any] = {}
        values = node.get("widgets_values")
        if isinstance(values, list):
            inputs.update(zip(_WORKFLOW_WIDGETS.get(kind, ()), values))
        for slot in node.get("inputs") or []:
            if isinstance(slot, dict) and slot.get("link") in links and isinstance(slot.get("name"), str):
                inputs[slot["name"]] = list(links[slot["link"]])
        graph[str(node["id"])] = {"class_type": kind, "inputs": inputs}
    return graph or None


def _from_comfyui_graph(graph: dict[str, dict[str, Any]]) -> ForeignMetadata:
    samplers = [node_id for node_id, node in graph.items() if _is_sampler(node)]
    ancestors = {node_id: _ancestors(graph, node_id) for node_id in samplers}
    # With Stable Cascade's two samplers (Stage C, then Stage B) the first stage carries the user's
    # seed and steps: it is the sampler with no other sampler upstream.
    first_stage = [s for s in samplers if not any(other in ancestors[s] for other in samplers if other != s)]
    first_stage.sort(key=_node_order)
    extra: dict[str, Any] = {}
    if any(node["class_type"].startswith("StableCascade_") for node in graph.values()):
        extra["stable_cascade"] = True
    if not first_stage:
        return ForeignMetadata(source="comfyui", extra=extra)
    main_id = first_stage[0]
    inputs = graph[main_id]["inputs"]

    prompt, prompt_path = _trace_text(graph, _as_link(inputs.get("positive")))
    negative, _ = _trace_text(graph, _as_link(inputs.get("negative")))
    width, height = _trace_size(graph, _as_link(inputs.get("latent_image")))

    denoise = _to_float(_trace_value(graph, inputs.get("denoise"), ("denoise", "value")))
    if denoise is not None:
        extra["denoise"] = denoise
    scheduler = _str_or_none(inputs.get("scheduler"))
    if scheduler is not None:
        extra["scheduler"] = scheduler
    for node_id in prompt_path:
        node_inputs = graph[node_id]["inputs"]
        control = _as_link(node_inputs.get("control_net"))
        if control is not None:
            extra["controlnet"] = _trace_model(graph, control, ("control_net_name",))
            extra["controlnet_strength"] = _to_float(node_inputs.get("strength"))
            break

    later = sorted((s for s in samplers if main_id in ancestors[s]), key=_node_order)
    if later:
        second = graph[later[0]]["inputs"]
        extra["stage_b_seed"] = _to_int(_trace_value(graph, second.get("seed", second.get("noise_seed")), ()))
        extra["stage_b_steps"] = _to_int(_trace_value(graph, second.get("steps"), ("steps", "value")))
        extra["stage_b_cfg"] = _to_float(_trace_value(graph, second.get("cfg"), ("cfg", "value")))
        extra["stage_b_model"] = _trace_model(graph, _as_link(second.get("model")), _MODEL_NAME_INPUTS)

    return ForeignMetadata(
        source="comfyui",
        # ComfyUI text boxes often keep a trailing newline; it means nothing to the encoder's user
        prompt=(prompt or "").strip(),
        negative_prompt=(negative or "").strip(),
        seed=_to_int(_trace_value(graph, inputs.get("seed", inputs.get("noise_seed")), ("seed", "noise_seed"))),
        steps=_to_int(_trace_value(graph, inputs.get("steps"), ("steps", "value"))),
        cfg=_to_float(_trace_value(graph, inputs.get("cfg"), ("cfg", "value"))),
        width=width,
        height=height,
        model=_trace_model(graph, _as_link(inputs.get("model")), _MODEL_NAME_INPUTS),
        sampler=_str_or_none(inputs.get("sampler_name")),
        extra=extra,
    )


def _is_sampler(node: dict[str, Any]) -> bool:
    inputs = node["inputs"]
    has_conditioning = _as_link(inputs.get("positive")) is not None and _as_link(inputs.get("negative")) is not None
    return has_conditioning and ("seed" in inputs or "noise_seed" in inputs)


def _node_order(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def _as_link(value: Any) -> _Link | None:
    # In the API graph a link input is [node_id, output_index].
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        return str(value[0]), value[1]
    return None


def _ancestors(graph: dict[str, dict[str, Any]], node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        for value in graph[stack.pop()]["inputs"].values():
            link = _as_link(value)
            if link is not None and link[0] in graph and link[0] not in seen:
                seen.add(link[0])
                stack.append(link[0])
    return seen


def _trace_text(graph: dict[str, dict[str, Any]], link: _Link | None) -> tuple[str | None, list[str]]:
    """Follow a conditioning link back to its text. Returns (text, ids of the nodes passed on the way)."""
    path: list[str] = []
    for _ in range(MAX_TRACE_DEPTH):
        if link is None or link[0] not in graph or link[0] in path:
            return None, path
        node_id, slot = link
        path.append(node_id)
        inputs = graph[node_id]["inputs"]
        for key in _TEXT_INPUTS:
            value = inputs.get(key)
            if isinstance(value, str):
                return value, path
        text_link = next((_as_link(inputs[k]) for k in _TEXT_INPUTS if _as_link(inputs.get(k))), None)
        if text_link is not None:
            link = text_link
        elif _as_link(inputs.get("positive")) and _as_link(inputs.get("negative")):
            # e.g. ControlNetApplyAdvanced: output 0 carries its positive input, output 1 its negative
            link = _as_link(inputs["negative" if slot == 1 else "positive"])
        else:
            link = next((_as_link(inputs[k]) for k in _CONDITIONING_INPUTS if _as_link(inputs.get(k))), None)
    return None, path


def _trace_value(graph: dict[str, dict[str, Any]], value: Any, keys: tuple[str, ...]) -> Any:
    """A widget value, following links to primitive nodes (seed generators, int/float constants)."""
    keys = keys + ("seed", "noise_seed", "value", "int", "float", "number")
    for _ in range(MAX_TRACE_DEPTH):
        link = _as_link(value)
        if link is None:
            return value
        node = graph.get(link[0])
        if node is None:
            return None
        value = next((node["inputs"][k] for k in keys if k in node["inputs"]), None)
    return None


def _trace_model(graph: dict[str, dict[str, Any]], link: _Link | None, name_keys: tuple[str, ...]) -> str | None:
    seen: set[str] = set()
    for _ in range(MAX_TRACE_DEPTH):
        if link is None or link[0] not in graph or link[0] in seen:
            return None
        seen.add(link[0])
        inputs = graph[link[0]]["inputs"]
        for key in name_keys:
            if isinstance(inputs.get(key), str):
                return inputs[key]
        link = _as_link(inputs.get("model")) or _as_link(inputs.get("control_net"))
    return None


def _trace_size(graph: dict[str, dict[str, Any]], link: _Link | None) -> tuple[int | None, int | None]:
    seen: set[str] = set()
    for _ in range(MAX_TRACE_DEPTH):
        if link is None or link[0] not in graph or link[0] in seen:
            break
        seen.add(link[0])
        inputs = graph[link[0]]["inputs"]
        width, height = _to_int(inputs.get("width")), _to_int(inputs.get("height"))
        if width is not None and height is not None:
            return width, height
        link = next((_as_link(inputs[k]) for k in ("samples", "latent", "latent_image") if k in inputs), None)
    # image-to-image graphs encode a loaded picture: the size is that picture's, known only from the file
    return None, None


# ---------------------------------------------------------------------------------------------------------
# Value helpers for untrusted data
# ---------------------------------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*\(?\s*(\d{1,6})\s*[x×*,]\s*(\d{1,6})\s*\)?\s*$")


def _parse_size(value: Any) -> tuple[int | None, int | None]:
    if not isinstance(value, str):
        return None, None
    match = _SIZE.match(value)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and 0 < len(value.strip()) <= 40:
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= 40):
        try:
            number = float(value)
        except (ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _str_or_empty(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)
