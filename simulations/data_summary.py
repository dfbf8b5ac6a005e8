"""Print one JSON line describing a face data set: a folder tree, a .rec/.idx pair or a .bin.

    python -m simulations.data_summary PATH [--min-images 1]

Keys: format, identities, images, skipped (count per reason), sizes (distinct [width, height]
seen); a .bin adds pairs (and has no identities).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

from ahm_core.data.folders import FolderFaces
from ahm_core.data.insightface import RecordIOFaces, load_bin


def summarize(path: Path, min_images: int = 1) -> dict:
    """The summary of whatever face data `path` holds."""
    if path.suffix == ".bin":
        images, same = load_bin(path)
        sizes: Counter[tuple[int, int]] = Counter()
        skipped: Counter[str] = Counter()
        for data in images:
            try:
                with Image.open(io.BytesIO(data)) as img:
                    sizes[img.size] += 1
            except OSError:
                skipped["unreadable"] += 1
        return {
            "format": "bin",
            "identities": None,
            "images": len(images),
            "pairs": len(same),
            "skipped": dict(skipped),
            "sizes": sorted([w, h] for w, h in sizes),
        }
    if path.suffix in (".rec", ".idx") or (path / "train.rec").exists():
        return RecordIOFaces(path.with_suffix(".rec") if path.suffix == ".idx" else path).summary()
    return FolderFaces(path, min_images=min_images).summary()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="folder tree, train.rec (or its folder), or .bin")
    parser.add_argument(
        "--min-images",
        type=int,
        default=1,
        help="folder trees: identities with fewer images are skipped",
    )
    args = parser.parse_args(argv)
    try:
        summary = summarize(args.path, args.min_images)
    except (OSError, ValueError) as err:
        sys.exit(f"data_summary: {err}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
