"""The ``cascade-studio`` command.

Until the studio window lands, running it without arguments reports which weights it finds
(same as ``cascade-studio info``). ``inspect`` checks individual files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__

REPO_MODELS = Path(__file__).resolve().parents[1] / "models"


def default_models_dir() -> Path:
    env = os.environ.get("CASCADE_STUDIO_MODELS")
    if env:
        return Path(env).expanduser()
    return REPO_MODELS


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def describe_file(path: Path) -> str:
    from .pipeline.checkpoints import CheckpointError, identify

    try:
        header, identity = identify(path)
    except CheckpointError as exc:
        return f"unusable: {exc}"
    dtypes = "/".join(sorted(header.float_dtypes)) or "-"
    params = sum(_numel(t.shape) for t in header.tensors.values())
    return f"{identity.label}, {dtypes}, {params / 1e6:,.1f}M values"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def cmd_info(args: argparse.Namespace) -> int:
    models = Path(args.models_dir).expanduser()
    print(f"Cascade Studio {__version__}")
    print(f"Weights folder: {models}")
    if not models.is_dir():
        print("  (does not exist yet)")
        return 0
    files = sorted(p for p in models.rglob("*") if p.is_file() and p.suffix == ".safetensors")
    if not files:
        print("  no .safetensors files found")
    for path in files:
        rel = path.relative_to(models)
        print(f"  {rel} ({_human(path.stat().st_size)}): {describe_file(path)}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    status = 0
    for name in args.files:
        text = describe_file(Path(name))
        print(f"{name}: {text}")
        status |= text.startswith("unusable")
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade-studio", description="Run Stable Cascade on your own machine.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--models-dir",
        default=str(default_models_dir()),
        help="folder holding the weights (default: $CASCADE_STUDIO_MODELS or the repository's models/)",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="show which weights are present and what they hold").set_defaults(func=cmd_info)
    inspect = sub.add_parser("inspect", help="check .safetensors files and say which network each holds")
    inspect.add_argument("files", nargs="+", metavar="FILE")
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func = getattr(args, "func", cmd_info)
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
