"""The one shape of an adversary (breaching's split: a case says who holds what, an attack runs on
it, scoring judges what it returns): an `Attack` takes a `Case` and returns `Reconstructions`,
faces with the identities they claim. Adding an attack is one file with a subclass under
`@register`, and its import in `ahm_core/attacks/__init__.py`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

if TYPE_CHECKING:
    from ahm_core.cases import Case


@dataclass
class Reconstructions:
    """What an attack recovered: faces in [0, 1] ([N, 1 or 3, H, W]), the identity (dataset label)
    each claims, and the original each reconstructs (None where the attack claims identities only,
    as model inversion); `figures` are the attack's own (JSON), `summary` says them in a few
    words, `panels` are the rows of its picture (name -> images)."""

    faces: Tensor
    labels: Tensor
    targets: Tensor | None
    figures: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    panels: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.faces) != len(self.labels):
            raise ValueError(f"{len(self.faces)} faces but {len(self.labels)} labels")
        if self.targets is not None and self.targets.shape[0] != len(self.faces):
            raise ValueError(f"{len(self.faces)} faces but {len(self.targets)} targets")


class Attack(ABC):
    """An adversary of the threat model (docs/design.md section 4)."""

    name: ClassVar[str]  # its registry key and the name reports print
    holds: ClassVar[str]  # what it holds, in a few words, for the report

    def skip(self, case: Case) -> str | None:
        """Why this attack does not apply to `case` (what it lacks), or None when it does."""
        return None

    @abstractmethod
    def run(self, case: Case) -> Reconstructions:
        """Attack the case's victims."""


SHOWN = 8  # faces in an attack's picture
ATTACKS: dict[str, Attack] = {}


def register(cls: type[Attack]) -> type[Attack]:
    """Class decorator: add an attack to the registry under its `name`."""
    if cls.name in ATTACKS:
        raise ValueError(f"attack {cls.name!r} is registered twice")
    ATTACKS[cls.name] = cls()
    return cls
