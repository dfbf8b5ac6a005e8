"""Print one JSON line describing a face data set: a folder tree, a .rec/.idx pair or a .bin.

    python -m simulations.data_summary PATH [--min-images 1] [--max-pixels 25000000]

Keys: format, identities, images, skipped (count per reason), sizes (distinct [width, height]
seen); a .bin adds pairs (and has no identities). Image headers only are read, each bounded by
--max-pixels, so memory stays within the loaders' bounds; a bad file ends as one line, exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from ahm_core.config import MAX_PIXELS, PIL_MAX_PIXELS
from ahm_core.data.base import TooManyPixelsError, UnreadableImageError, open_image
from ahm_core.data.folders import FolderFaces
from ahm_core.data.insightface import RecordIOFaces, load_bin


def summarize(path: Path, min_images: int = 1, max_pixels: int = MAX_PIXELS) -> dict:
    """The summary of whatever face data `path` holds."""
    if path.suffix == ".bin":
        images, same = load_bin(path)
        sizes: Counter[tuple[int, int]] = Counter()
        skipped: Counter[str] = Counter()
        for data in images:
            try:
                with open_image(data, max_pixels) as img:
                    sizes[img.size] += 1
            except TooManyPixelsError:
                skipped["too_many_pixels"] += 1
            except UnreadableImageError:
                skipped["unreadable"] += 1
        return {
            "format": "bin",
            "identities": None,
            "images": len(images),
            "pairs": len(same),
            "skipped": dict(sorted(skipped.items())),
            "sizes": sorted([w, h] for w, h in sizes),
        }
    if path.suffix in (".rec", ".idx") or (path / "train.rec").exists():
        rec = path.with_suffix(".rec") if path.suffix == ".idx" else path
        return RecordIOFaces(rec, max_pixels=max_pixels).summary()
    return FolderFaces(path, min_images=min_images, max_pixels=max_pixels).summary()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="folder tree, train.rec (or its folder), or .bin")
    parser.add_argument(
        "--min-images",
        type=int,
        default=1,
        help="folder trees: identities with fewer images are skipped",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"largest image (width x height) read; at most {PIL_MAX_PIXELS}",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.max_pixels <= PIL_MAX_PIXELS:
        parser.error(f"--max-pixels must be in 1..{PIL_MAX_PIXELS}, got {args.max_pixels}")
    try:
        summary = summarize(args.path, args.min_images, args.max_pixels)
    except (OSError, ValueError) as err:
        sys.exit(f"data_summary: {' '.join(str(err).split())}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
