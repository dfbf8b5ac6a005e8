"""Split the project's dependencies for the image build (docker/Dockerfile).

    python requirements_from_pyproject.py torch pyproject.toml   # torch, torchvision
    python requirements_from_pyproject.py rest pyproject.toml    # everything else

`torch` lines are installed from the PyTorch index of the chosen variant (cpu, cu128, ...), so the
CPU image does not pull CUDA wheels from PyPI. In `rest`, extras are dropped from flwr
(`flwr[simulation]` -> `flwr`): the base image already holds that Flower version, and the
simulation extra (Ray) is not needed by a SuperExec. Standard library only (tomllib, or pip's
vendored tomli before Python 3.11).
"""

from __future__ import annotations

import re
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    from pip._vendor import tomli as tomllib  # type: ignore[no-redef]

TORCH = {"torch", "torchvision"}
NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?(.*)$")


def split(dependencies: list[str]) -> tuple[list[str], list[str]]:
    """(torch requirements, other requirements), flwr's extras dropped."""
    torch, rest = [], []
    for dep in dependencies:
        match = NAME.match(dep)
        if match is None:
            raise ValueError(f"cannot parse requirement {dep!r}")
        name = match.group(1).lower().replace("_", "-")
        if name in TORCH:
            torch.append(dep.strip())
        elif name == "flwr":
            rest.append(f"flwr{match.group(3)}".strip())
        else:
            rest.append(dep.strip())
    return torch, rest


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in {"torch", "rest"}:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[2], "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    torch, rest = split(deps)
    print("\n".join(torch if argv[1] == "torch" else rest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
