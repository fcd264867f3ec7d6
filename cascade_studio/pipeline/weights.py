"""Every weight file Cascade Studio can use, where it is found, and downloading the missing ones.

The registry names each file by the path it has in the weights folder (the official names, as
:mod:`.models` looks for them; the ControlNets under ``controlnet/``, the text encoder under
``text_encoder/`` as in stabilityai/stable-cascade, the open_clip-format CLIP files under ``clip/``),
the Hugging Face repository and file it comes from, its approximate size and which variants need
it. Only ``.safetensors`` files are ever downloaded.

Downloads go through ``huggingface_hub.hf_hub_download`` with ``local_dir`` set to a private
staging folder *inside* the weights folder (``.downloading/<file>/``), not into the shared
Hugging Face cache: the weights folder is where the user chose to keep the gigabytes, the file is
written once (no second copy in ``~/.cache/huggingface``), and since staging and destination
share a file system the finished file is moved into place with a rename. A file appears under its
official name only once it has been downloaded completely and verified (it must parse as
safetensors and hold the expected network); on failure, cancel or Ctrl-C the staging folder is
removed, so no partial file is ever left in the weights folder.

Resuming: huggingface_hub resumes an interrupted transfer within one call (it retries a dropped
connection with an HTTP ``Range`` request, up to five times). Recent versions (1.x and later)
write to a process-unique temporary file and delete it when the call fails, so a plain-HTTP
download that is cancelled, or that fails for good, starts again from the beginning next time.
When ``hf_xet`` is installed and the repository is Xet-backed, huggingface_hub downloads through
Xet instead; its chunk cache lets a later attempt skip what was already fetched. Progress works on
both paths; a cancel raised from a Xet progress callback may only take effect when the file is
complete, and the file is then discarded (the HTTP path, which the tests exercise, stops at once).

Files already in the Hugging Face cache (downloaded by another tool) are found by :func:`locate`
and linked (hard link, else copied) into the weights folder instead of being downloaded again.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# checkpoints (and with it torch) is imported only where a file is verified, so the registry can be listed
# from the window's thread without a multi-second torch import.

#: The text encoder inside the weights folder, under its path in stabilityai/stable-cascade: CLIP
#: ViT-bigG/14's text tower alone, as transformers' ``CLIPTextModelWithProjection``, bf16 (1.39 GB).
TEXT_ENCODER_FILE = "text_encoder/model.safetensors"
#: The alternative the pipeline also accepts: open_clip's full ViT-bigG-14 file (both towers, fp32, 10 GB).
#: Not part of any variant; listed so that a copy in the Hugging Face cache (fetched by open_clip) is found.
OPEN_CLIP_TEXT_ENCODER_FILE = "clip/ViT-bigG-14-laion2b_s39b_b160k.safetensors"
IMAGE_ENCODER_FILE = "clip/ViT-L-14-openai.safetensors"
#: registry file -> files the pipeline reads in its place, so that having one of them means nothing to download
SUBSTITUTES = {TEXT_ENCODER_FILE: (OPEN_CLIP_TEXT_ENCODER_FILE,)}

STABLE_CASCADE_REPO = "stabilityai/stable-cascade"
#: open_clip's own Hugging Face source for ``ViT-bigG-14`` / ``laion2b_s39b_b160k``; the repository
#: holds ``open_clip_model.safetensors`` (both towers, fp32) beside a pickle ``.bin``.
TEXT_CLIP_REPO = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
#: OpenAI's CLIP ViT-L/14 in open_clip format. open_clip (3.x, ``pretrained.py``) maps
#: ``ViT-L-14`` / ``openai`` to this repository (``hf_hub="timm/vit_large_patch14_clip_224.openai/"``)
#: and prefers its ``open_clip_model.safetensors`` over ``open_clip_pytorch_model.bin``; public
#: configurations name ``timm/vit_large_patch14_clip_224.openai/open_clip_model.safetensors``.
#: Fairly sure (open_clip's mapping is certain; the file listing itself was not seen). Not
#: ``openai/clip-vit-large-patch14``, which holds transformers-format weights with other key names.
IMAGE_CLIP_REPO = "timm/vit_large_patch14_clip_224.openai"
OPEN_CLIP_FILE = "open_clip_model.safetensors"

#: variant -> what it is
VARIANTS: dict[str, str] = {
    "lite": "Stage C lite (1B) and Stage B lite (700M) in bf16, with the shared files (default)",
    "full": "Stage C (3.6B) and Stage B (1.5B) in bf16, with the shared files",
    "lite-fp32": "the lite Stage C and Stage B in float32 (twice the size of bf16), with the shared files",
    "full-fp32": "the full Stage C and Stage B in float32 (twice the size of bf16), with the shared files",
    "controlnets": "the ControlNets (inpainting, canny, super resolution; they work with the full Stage C)",
}
DEFAULT_VARIANT = "lite"
_MAIN = frozenset({"lite", "full", "lite-fp32", "full-fp32"})

#: folder inside the weights folder where unfinished downloads live
STAGING_DIR = ".downloading"
_STAGING_MARGIN = 256 * 1000**2  # bytes of head-room on top of the files themselves (plus 2 %)

FOLDER = "weights folder"
HF_CACHE = "Hugging Face cache"
SUBSTITUTE = "substitute"  # a file the pipeline reads instead (see SUBSTITUTES)


@dataclass(frozen=True)
class WeightFile:
    """One file of the registry."""

    name: str  # path inside the weights folder
    repo: str  # Hugging Face repository
    filename: str  # file name inside the repository
    size: int  # approximate size in bytes
    description: str
    variants: frozenset[str]
    network: str  # a checkpoints.NETWORKS key, or "clip_text" / "clip_image"
    layout: str | None = None  # the released layout (identify()'s variant) the official file has
    dtype: str | None = None  # the safetensors dtype of the official file ("BF16", "F32")
    size_is_estimate: bool = False  # True: not read off Hugging Face, computed from the parameter count
    licence: str = "stable-cascade-nc-community (Stability AI Non-Commercial Research Community License)"

    @property
    def page(self) -> str:
        return f"https://huggingface.co/{self.repo}"


def _stage(name: str, size: float, network: str, layout: str, dtype: str, variant: str, what: str) -> WeightFile:
    return WeightFile(name, STABLE_CASCADE_REPO, name, int(size), what, frozenset({variant}), network, layout, dtype)


def _shared(name: str, size: float, network: str, what: str) -> WeightFile:
    return WeightFile(name, STABLE_CASCADE_REPO, name, int(size), what, _MAIN, network, "released", "F32")


def _controlnet(kind: str, size: float, what: str) -> WeightFile:
    name = f"controlnet/{kind}.safetensors"
    return WeightFile(name, STABLE_CASCADE_REPO, name, int(size), what, frozenset({"controlnets"}), "controlnet", kind)


#: Sizes of the stabilityai/stable-cascade files as Hugging Face lists them (decimal units).
REGISTRY: tuple[WeightFile, ...] = (
    _stage("stage_c_lite_bf16.safetensors", 2.06e9, "stage_c", "lite", "BF16", "lite", "Stage C lite (1B), bf16"),
    _stage("stage_b_lite_bf16.safetensors", 1.4e9, "stage_b", "lite", "BF16", "lite", "Stage B lite (700M), bf16"),
    _stage("stage_c_bf16.safetensors", 7.18e9, "stage_c", "full", "BF16", "full", "Stage C (3.6B), bf16"),
    _stage("stage_b_bf16.safetensors", 3.13e9, "stage_b", "full", "BF16", "full", "Stage B (1.5B), bf16"),
    _stage("stage_c_lite.safetensors", 4.12e9, "stage_c", "lite", "F32", "lite-fp32", "Stage C lite (1B), fp32"),
    _stage("stage_b_lite.safetensors", 2.8e9, "stage_b", "lite", "F32", "lite-fp32", "Stage B lite (700M), fp32"),
    _stage("stage_c.safetensors", 14.4e9, "stage_c", "full", "F32", "full-fp32", "Stage C (3.6B), fp32"),
    _stage("stage_b.safetensors", 6.25e9, "stage_b", "full", "F32", "full-fp32", "Stage B (1.5B), fp32"),
    _shared("stage_a.safetensors", 73.7e6, "stage_a", "Stage A (VQGAN decoder)"),
    _shared("previewer.safetensors", 16e6, "previewer", "Previewer (latent previews)"),
    _shared("effnet_encoder.safetensors", 81.5e6, "effnet", "EfficientNet encoder (image-to-image)"),
    WeightFile(
        TEXT_ENCODER_FILE,
        STABLE_CASCADE_REPO,
        TEXT_ENCODER_FILE,
        1_389_382_688,  # exact (the file's Git LFS pointer): 694.66M values x 2 bytes + the header
        "CLIP ViT-bigG/14 text encoder (text tower only, transformers format), bf16",
        _MAIN,
        "clip_text",
        dtype="BF16",
    ),
    WeightFile(
        IMAGE_ENCODER_FILE,
        IMAGE_CLIP_REPO,
        OPEN_CLIP_FILE,
        # estimate: 427.62M parameters (both towers) x 4 bytes (fp32)
        int(1.71e9),
        "CLIP ViT-L/14 (OpenAI) image encoder, for image variations",
        _MAIN,
        "clip_image",
        size_is_estimate=True,
        licence="MIT (OpenAI CLIP; the timm copy is tagged apache-2.0)",
    ),
    WeightFile(
        OPEN_CLIP_TEXT_ENCODER_FILE,
        TEXT_CLIP_REPO,
        OPEN_CLIP_FILE,
        # estimate: 2,539.57M parameters (both towers) x 4 bytes (fp32)
        int(10.16e9),
        f"CLIP ViT-bigG/14 (laion2b_s39b_b160k, open_clip format, both towers): used instead of {TEXT_ENCODER_FILE} "
        "when that is absent; never downloaded",
        frozenset(),
        "clip_text",
        size_is_estimate=True,
        licence="MIT",
    ),
    _controlnet("inpainting", 218e6, "ControlNet: inpainting / outpainting"),
    _controlnet("canny", 218e6, "ControlNet: canny edges"),
    _controlnet("super_resolution", 814e6, "ControlNet: super resolution"),
)

#: keys a checkpoint of each CLIP tower holds, per accepted layout
_CLIP_KEYS = {
    "clip_text": {
        "transformers": (
            "text_model.embeddings.token_embedding.weight",
            "text_model.embeddings.position_embedding.weight",
            "text_model.final_layer_norm.weight",
            "text_projection.weight",
        ),
        "open_clip": ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection"),
    },
    "clip_image": {
        "open_clip": ("visual.conv1.weight", "visual.class_embedding", "visual.ln_post.weight", "visual.proj"),
    },
}


def files_for(variant: str) -> list[WeightFile]:
    """The registry files ``variant`` needs, in download order (the big networks first)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    return [entry for entry in REGISTRY if variant in entry.variants]


def entry_named(name: str) -> WeightFile:
    for entry in REGISTRY:
        if entry.name == name:
            return entry
    raise KeyError(name)


def human_size(n: float) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


# ---------------------------------------------------------------------------------------------
# where files are


@dataclass(frozen=True)
class Location:
    path: Path
    where: str  # FOLDER or HF_CACHE


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def locate(entry: WeightFile, models_dir: str | os.PathLike, *, substitutes: bool = True) -> Location | None:
    """Where ``entry`` is: in the weights folder, in the Hugging Face cache, or nowhere (None).

    With ``substitutes``, a file the pipeline reads instead (``SUBSTITUTES``) counts as ``entry`` being present:
    its location comes back with ``where == SUBSTITUTE``, and nothing is downloaded for ``entry``.
    """
    path = Path(models_dir).expanduser() / entry.name
    if path.is_file():
        return Location(path, FOLDER)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(entry.repo, entry.filename, cache_dir=str(hf_cache_dir()))
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, str) and os.path.isfile(cached):
        return Location(Path(cached), HF_CACHE)
    if substitutes:
        for name in SUBSTITUTES.get(entry.name, ()):
            found = locate(entry_named(name), models_dir, substitutes=False)
            if found is not None:
                return Location(found.path, SUBSTITUTE)
    return None


# ---------------------------------------------------------------------------------------------
# errors


class DownloadError(RuntimeError):
    """A download that did not happen; the message says why and what the user can do."""


class AccessDenied(DownloadError):
    """Hugging Face refused the file (401/403, gated repository): licence and token needed."""


class Offline(DownloadError):
    """No network (or offline mode): the files can be copied in by hand."""


class NotEnoughSpace(DownloadError):
    """The weights folder's disk cannot hold the missing files."""


class VerificationFailed(DownloadError):
    """A downloaded file is not the expected checkpoint; it was removed."""


class DownloadCancelled(DownloadError):
    """The caller's ``cancel`` callback asked to stop; the unfinished file was removed."""


def _access_message(entry: WeightFile, status: int | None, gated: bool, token_given: bool) -> str:
    why = f"HTTP {status}" if status else "access denied"
    if gated:
        why += ", gated repository"
    lines = [
        f"Hugging Face refused the download of {entry.filename} from {entry.repo} ({why}).",
        f"The repository needs its licence accepted and a Hugging Face access token: open {entry.page} "
        f"while logged in and accept the licence ({entry.licence}), create a read token at "
        "https://huggingface.co/settings/tokens, then run `hf auth login` (older versions: `huggingface-cli login`), "
        "set the HF_TOKEN environment variable, or pass --token.",
    ]
    if token_given:
        lines.append("A token was sent: check that it is valid and belongs to the account that accepted the licence.")
    return " ".join(lines)


def _offline_message(entry: WeightFile, models_dir: Path, endpoint: str | None, why: str) -> str:
    return (
        f"Could not download {entry.name}: {why}. Connect to the internet and run the download again, or copy the "
        f"file by hand into {models_dir / entry.name} (it is {entry.filename} from {entry.page}, about "
        f"{human_size(entry.size)}); files placed there are used as they are."
    )


def _network_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError", "TimeoutException")),
        ("httpx", ("TransportError", "TimeoutException")),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        errors.extend(getattr(mod, name) for name in names if isinstance(getattr(mod, name, None), type))
    return tuple(errors)


def _scrub(text: str, token: str | None) -> str:
    for secret in (token, os.environ.get("HF_TOKEN")):
        if secret:
            text = text.replace(secret, "***")
    return text


def _translate(exc: BaseException, entry: WeightFile, models_dir: Path, endpoint: str | None, token: str | None):
    """The DownloadError a user can act on for an exception out of hf_hub_download (None: not ours to explain)."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    token_given = bool(token or os.environ.get("HF_TOKEN"))
    if isinstance(exc, GatedRepoError):
        return AccessDenied(_access_message(entry, status, True, token_given))
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return AccessDenied(_access_message(entry, status, False, token_given))
    if isinstance(exc, LocalEntryNotFoundError) and type(exc.__cause__).__name__ == "FileMetadataError":
        return DownloadError(
            f"{endpoint or 'The Hugging Face endpoint'} answered, but not like the Hugging Face Hub does, for "
            f"{entry.filename} from {entry.repo}: check HF_ENDPOINT / --endpoint, your proxy and firewall. "
            f"The file can also be copied by hand into {models_dir / entry.name}."
        )
    if isinstance(exc, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        why = "there is no network connection to Hugging Face"
        if isinstance(exc, OfflineModeIsEnabled):
            why = "offline mode is on (HF_HUB_OFFLINE)"
        return Offline(_offline_message(entry, models_dir, endpoint, why))
    if isinstance(exc, (EntryNotFoundError, RepositoryNotFoundError)) or status == 404:
        return DownloadError(
            f"{entry.repo} has no file {entry.filename} (HTTP {status or 404}); the repository may have changed. "
            f"Look for it on {entry.page} and copy it by hand into {models_dir / entry.name}."
        )
    if isinstance(exc, HfHubHTTPError):
        return DownloadError(
            f"Hugging Face answered HTTP {status} for {entry.filename} from {entry.repo}; the Hub may be having "
            "trouble. Try again later."
        )
    if isinstance(exc, _network_errors()):
        return Offline(_offline_message(entry, models_dir, endpoint, "the connection to Hugging Face failed"))
    if isinstance(exc, OSError):
        return DownloadError(f"Downloading {entry.name} failed: {_scrub(str(exc), token)}")
    return None


# ---------------------------------------------------------------------------------------------
# checks


def _offline_mode() -> bool:
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_disk_space(entries: Iterable[WeightFile], models_dir: str | os.PathLike) -> None:
    """Raise :class:`NotEnoughSpace` unless the weights folder's disk can take ``entries`` (plus head-room)."""
    need = sum(entry.size for entry in entries)
    if not need:
        return
    margin = _STAGING_MARGIN + need // 50
    probe = _existing_parent(Path(models_dir).expanduser())
    free = shutil.disk_usage(probe).free
    if free < need + margin:
        raise NotEnoughSpace(
            f"Not enough free disk space for the download: the missing files need about {human_size(need)} "
            f"(plus {human_size(margin)} head-room), but {probe} has only {human_size(free)} free. "
            f"Free up {human_size(need + margin - free)}, or choose a weights folder on another disk (--models-dir)."
        )


def verify(entry: WeightFile, path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a safetensors file holding ``entry``'s network.

    An official file must also match the released layout and dtype; files that match no released
    layout are accepted when their metadata describes the right network (tiny demo/test networks).
    """
    from .checkpoints import NETWORKS, CheckpointError, identify, read_header

    path = Path(path)
    if entry.network in _CLIP_KEYS:
        # Keys only, no dtype check: any precision loads (the text encoder was fp32 on the Hub for a while).
        header = read_header(path)
        layouts = _CLIP_KEYS[entry.network]
        if not any(all(key in header.tensors for key in keys) for keys in layouts.values()):
            tower = "text" if entry.network == "clip_text" else "image"
            first = next(iter(layouts.values()))
            absent = [key for key in first if key not in header.tensors]
            raise CheckpointError(
                f"{path}: not a CLIP checkpoint with a {tower} tower ({' or '.join(layouts)} format; "
                f"no {', '.join(absent)})"
            )
        return
    header, identity = identify(path)
    if identity.network != entry.network:
        raise CheckpointError(
            f"{path}: holds a {NETWORKS[identity.network].label}, not a {NETWORKS[entry.network].label}"
        )
    if identity.released and entry.layout and identity.variant != entry.layout:
        raise CheckpointError(f"{path}: holds {identity.label}, not the {entry.layout!r} variant")
    if identity.released and entry.dtype and header.float_dtypes != {entry.dtype}:
        found = "/".join(sorted(header.float_dtypes)) or "no floats"
        raise CheckpointError(f"{path}: stored as {found}, expected {entry.dtype}")


# ---------------------------------------------------------------------------------------------
# downloading


@dataclass(frozen=True)
class DownloadProgress:
    """Progress of one file: ``done`` of ``total`` bytes (``total`` is the registry estimate until known)."""

    name: str  # the file's name in the weights folder
    done: int
    total: int
    index: int  # 1-based position among the files being fetched
    count: int


@dataclass(frozen=True)
class DownloadResult:
    entry: WeightFile
    path: Path
    action: str  # "present", "downloaded", "linked from the Hugging Face cache", "copied from ..."


def _progress_class(entry: WeightFile, index: int, count: int, progress, cancel):
    """A tqdm class for huggingface_hub's ``tqdm_class``: it draws nothing and reports to our callbacks."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class _Progress(hf_tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            self._total = int(kwargs.get("total") or 0) or entry.size
            self._report()

        def _report(self) -> None:
            if progress is not None:
                progress(DownloadProgress(entry.name, self._done, self._total, index, count))

        def update(self, n=1):
            self._done += int(n or 0)
            self._report()
            if cancel is not None and cancel():
                raise DownloadCancelled(f"Download of {entry.name} cancelled; the unfinished file was removed.")

        # huggingface_hub >= 1.x: a class with these gets a single (aggregated) bar for Xet downloads,
        # whose update() counts the bytes written; transfer counts are not needed.
        def update_transfer(self, n=1):
            pass

        def set_transfer_postfix_str(self, *args, **kwargs):
            pass

    return _Progress


def _hf_download(entry: WeightFile, staging: Path, *, token, endpoint, revision, tqdm_class) -> Path:
    from huggingface_hub import hf_hub_download

    from .. import __version__

    kwargs = {
        "repo_id": entry.repo,
        "filename": entry.filename,
        "revision": revision,
        "local_dir": str(staging),
        "cache_dir": str(hf_cache_dir()),
        "token": token,
        "library_name": "cascade-studio",
        "library_version": __version__,
    }
    if endpoint:
        kwargs["endpoint"] = endpoint
    if "tqdm_class" in inspect.signature(hf_hub_download).parameters:  # huggingface_hub >= 0.2x
        kwargs["tqdm_class"] = tqdm_class
    return Path(hf_hub_download(**kwargs))


def _download_one(entry, models_dir: Path, *, token, endpoint, revision, progress, cancel, index, count) -> Path:
    from .checkpoints import CheckpointError

    staging = models_dir / STAGING_DIR / entry.name.replace("/", "__")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        tqdm_class = _progress_class(entry, index, count, progress, cancel)
        try:
            fetched = _hf_download(
                entry, staging, token=token, endpoint=endpoint, revision=revision, tqdm_class=tqdm_class
            )
        except DownloadError:
            raise
        except Exception as exc:
            error = _translate(exc, entry, models_dir, endpoint, token)
            if error is None:
                raise
            raise error from exc
        if cancel is not None and cancel():  # e.g. asked during a Xet transfer, whose callbacks cannot stop it
            raise DownloadCancelled(f"Download of {entry.name} cancelled; the unfinished file was removed.")
        try:
            verify(entry, fetched)
        except CheckpointError as exc:
            raise VerificationFailed(
                f"The downloaded {entry.name} is not usable and was removed: {exc}. Try the download again; if it "
                f"keeps failing, the file on {entry.page} may have changed."
            ) from None
        target = models_dir / entry.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(fetched, target)
        if progress is not None:
            size = target.stat().st_size
            progress(DownloadProgress(entry.name, size, size, index, count))
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(_existing_parent(b)).st_dev
    except OSError:
        return False


def _import_from_cache(entry: WeightFile, cached: Path, models_dir: Path) -> tuple[Path, str]:
    from .checkpoints import CheckpointError

    source = Path(os.path.realpath(cached))
    try:
        verify(entry, source)
    except CheckpointError as exc:
        raise VerificationFailed(
            f"The copy of {entry.name} in the Hugging Face cache ({cached}) is not usable: {exc}. Delete it and "
            "run the download again."
        ) from None
    target = models_dir / entry.name
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        try:
            os.link(source, partial)
            action = "linked from the Hugging Face cache"
        except OSError:
            shutil.copyfile(source, partial)
            action = "copied from the Hugging Face cache"
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target, action


def download(
    entries: Sequence[WeightFile],
    models_dir: str | os.PathLike,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    revision: str = "main",
    progress: Callable[[DownloadProgress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[DownloadResult]:
    """Put ``entries`` into the weights folder, downloading those that are nowhere on this machine.

    Files already in the weights folder are skipped; files in the Hugging Face cache are linked
    (or copied) in. The free disk space is checked before anything is fetched. ``token`` (else
    ``HF_TOKEN`` or the stored login) is only handed to huggingface_hub, never logged. ``endpoint``
    defaults to ``$HF_ENDPOINT`` (read now) or huggingface.co. ``progress`` gets a
    :class:`DownloadProgress` per received chunk; ``cancel`` is polled as often and stops the
    download when it returns True (:class:`DownloadCancelled`). Raises a :class:`DownloadError`
    subclass whose message tells the user what to do.
    """
    models_dir = Path(models_dir).expanduser()
    entries = list(dict.fromkeys(entries))
    for entry in entries:
        if not entry.filename.endswith(".safetensors") or not entry.name.endswith(".safetensors"):
            raise ValueError(f"{entry.repo}/{entry.filename}: only .safetensors files are ever downloaded")
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    plan = [(entry, locate(entry, models_dir)) for entry in entries]
    to_fetch = [entry for entry, where in plan if where is None]
    to_copy = [entry for entry, where in plan if where and where.where == HF_CACHE]
    check_disk_space(
        to_fetch
        + [e for e, where in plan if where and where.where == HF_CACHE and not _same_device(where.path, models_dir)],
        models_dir,
    )
    if to_fetch and _offline_mode():
        raise Offline(_offline_message(to_fetch[0], models_dir, endpoint, "offline mode is on (HF_HUB_OFFLINE)"))

    results: list[DownloadResult] = []
    count = len(to_fetch) + len(to_copy)
    index = 0
    try:
        for entry, where in plan:
            if where is not None and where.where in (FOLDER, SUBSTITUTE):
                results.append(DownloadResult(entry, where.path, "present"))
                continue
            index += 1
            if cancel is not None and cancel():
                raise DownloadCancelled(f"Download cancelled before {entry.name}.")
            if where is not None:
                path, action = _import_from_cache(entry, where.path, models_dir)
                results.append(DownloadResult(entry, path, action))
                continue
            path = _download_one(
                entry,
                models_dir,
                token=token,
                endpoint=endpoint,
                revision=revision,
                progress=progress,
                cancel=cancel,
                index=index,
                count=count,
            )
            results.append(DownloadResult(entry, path, "downloaded"))
    finally:
        staging_root = models_dir / STAGING_DIR
        if staging_root.is_dir() and not any(staging_root.iterdir()):
            staging_root.rmdir()
    return results
