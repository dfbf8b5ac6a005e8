"""mkdocs hook: the configuration reference, generated from `ahm_core.config.AHMConfig` at build
time, so the page cannot go stale. `docs/configuration.md` holds the prose; the marker line
`<!-- ahm:config-reference -->` in it is replaced by one table per section of the schema: each
field's type, default, bounds (the field's `metadata`) and the comment the source puts beside or
above it (comments do not survive to run time, so they are read from the source with `tokenize`
and matched to the fields that `ast` finds)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- ahm:config-reference -->"


def _comments(source: str) -> dict[int, str]:
    """Line number -> the text of the comment on that line."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def field_notes(cls: type) -> dict[str, str]:
    """Field name -> the comment block directly above its line (no blank line between) and the
    comment at the end of its statement, joined."""
    source = inspect.getsource(sys.modules[cls.__module__])
    lines = source.splitlines()
    comments = _comments(source)
    tree = ast.parse(source)
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    notes: dict[str, str] = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above, line = [], stmt.lineno - 1
        while line >= 1 and lines[line - 1].strip().startswith("#"):
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
        notes[stmt.target.id] = " ".join(above + beside)
    return notes


def _type_name(hint: typing.Any) -> str:
    if typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return f"list of {_type_name(args[0])}"
    return getattr(hint, "__name__", str(hint))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"' if value else '""'
    return repr(value)


def _bounds(meta: typing.Mapping[str, typing.Any]) -> str:
    parts = []
    for key, sign in (("min", ">="), ("min_open", ">"), ("max", "<="), ("max_open", "<")):
        if key in meta:
            parts.append(f"{sign} {meta[key]}")
    return ", ".join(parts)


def choices() -> dict[str, list[str]]:
    """Option -> the names it accepts: `ahm_core.checks.REGISTRIES`, the registries that
    `validate` checks against, so the list is what is accepted."""
    try:
        from ahm_core.checks import REGISTRIES
    except ImportError:
        return {}
    return {option: sorted(registry) for option, registry in REGISTRIES.items()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference() -> str:
    """The configuration reference as Markdown: one section per field of `AHMConfig`."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from ahm_core.config import AHMConfig

    out, accepted = [], choices()
    hints = typing.get_type_hints(AHMConfig)
    for section in dataclasses.fields(AHMConfig):
        cls = hints[section.name]
        doc = " ".join(inspect.cleandoc(cls.__doc__ or "").split())
        notes, types = field_notes(cls), typing.get_type_hints(cls)
        out += [f"## `{section.name}`", "", doc, ""]
        out += ["| option | type | default | accepts | notes |", "| --- | --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            key = f"{section.name}.{f.name}"
            names = ", ".join(f"`{n}`" for n in accepted.get(key, ()))
            row = (
                f"`{key}`",
                _type_name(types[f.name]),
                f"`{_default(f)}`",
                _bounds(f.metadata) or (f"one of {names}" if names else ""),
                notes.get(f.name, ""),
            )
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # the mkdocs hook API
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown
