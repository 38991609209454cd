"""`python -m harness.images build [RECIPE] [--kernel K] [--force]`: build or reuse an image."""

from __future__ import annotations

import argparse
import sys
import time

from harness.images.builder import build_image, default_cache_dir
from harness.images.errors import ImageBuildError
from harness.images.kernel import KERNEL_SPEC_FORMS
from harness.logs import print_progress


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.images")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the guest image (cached)")
    build.add_argument(
        "recipe",
        nargs="?",
        help="path of a recipe YAML, else a shipped recipe name (default: default)",
    )
    build.add_argument(
        "--kernel",
        metavar="KERNEL",
        help=f"kernel to boot instead of the recipe's: {KERNEL_SPEC_FORMS}",
    )
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    print_progress("[image]")  # downloads, unpacking
    started = time.monotonic()
    try:
        image = build_image(args.recipe, args.kernel, default_cache_dir(), force=args.force)
    except ImageBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"image {image.recipe} kernel {image.kernel_version} ({image.kernel_origin}) "
        f"in {time.monotonic() - started:.2f} s"
    )
    print(image.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
