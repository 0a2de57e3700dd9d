"""The generated parts of the docs site: CLI, config and API references, and files outside docs/.

Used two ways: as a MkDocs hook (``hooks:`` in mkdocs.yml), which adds the generated pages to
every build so they cannot go stale, and as a script, ``python scripts/docs_gen.py OUT_DIR``,
which writes the same pages as Markdown files for reading without MkDocs.
"""

from __future__ import annotations

import ast
import inspect
import posixpath
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

#: Pages this module generates, by their path under docs/.
CLI_PAGE = "reference/cli.md"
CONFIG_PAGE = "reference/config.md"
API_PAGE = "reference/api.md"

_LINK = re.compile(r"\]\((?!https?:|mailto:|#)([^)\s]+?)(?:#[^)\s]*)?(?:\s+\"[^\"]*\")?\)")


# ---------------------------------------------------------------- CLI reference


def cli_commands() -> dict[str, Any]:
    """The visible commands of ``polytask``, by name, as click commands, in help order."""
    import typer

    from polytask.cli import app

    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="polytask")
    names = group.list_commands(ctx)
    return {n: group.get_command(ctx, n) for n in names if not group.get_command(ctx, n).hidden}


def _cell(text: str) -> str:
    """Text fit for one Markdown table cell: one line, pipes outside code spans escaped (the
    table extension leaves those inside code spans alone)."""
    parts = " ".join(text.split()).split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


_TABLE_HEAD = ["| name | description |", "|---|---|"]


def _option_row(param: Any, ctx: Any) -> str | None:
    """A click parameter's table row (its declaration and help), or None when hidden."""
    record = param.get_help_record(ctx)
    if record is None or getattr(param, "hidden", False):
        return None
    return f"| {_cell(f'`{record[0]}`')} | {_cell(record[1])} |"


def cli_reference() -> str:
    """The CLI reference page: each command's help, usage, arguments and options."""
    import typer

    from polytask.cli import app

    group = typer.main.get_command(app)
    root = group.context_class(group, info_name="polytask")
    lines = [
        "# CLI reference",
        "",
        "Generated from the commands registered in `polytask.cli` at build time; "
        "`polytask COMMAND --help` prints the same.",
        "",
        _cell(group.help or ""),
        "",
    ]
    options = [_option_row(p, root) for p in group.get_params(root)]
    options = [row for row in options if row]
    if options:
        lines += ["**Options of `polytask` itself**", "", *_TABLE_HEAD, *options, ""]
    lines += ["| command | what it does |", "|---|---|"]
    commands = cli_commands()
    for name, command in commands.items():
        short = inspect.cleandoc(command.help or "").split("\n\n")[0]
        lines.append(f"| [`{name}`](#{name}) | {_cell(short)} |")
    for name, command in commands.items():
        ctx = command.context_class(command, info_name=name, parent=root)
        usage = " ".join(["polytask", name, *command.collect_usage_pieces(ctx)])
        lines += ["", f"## {name}", "", "```", usage, "```", ""]
        lines.append(inspect.cleandoc(command.help or ""))
        arguments, options = [], []
        for param in command.get_params(ctx):
            row = _option_row(param, ctx)
            if row:
                (options if param.param_type_name == "option" else arguments).append(row)
        for title, rows in (("Arguments", arguments), ("Options", options)):
            if rows:
                lines += ["", f"**{title}**", "", *_TABLE_HEAD, *rows]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------- config reference


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation contains (``X | None``, ``list[X]``…)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def _is_list(annotation: Any) -> bool:
    """Whether the annotation holds its model in a list (``list[X] | None``)."""
    if typing.get_origin(annotation) is list:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_list(a) for a in typing.get_args(annotation))
    return False


def config_sections(
    model: type[BaseModel] | None = None, path: str = ""
) -> list[tuple[str, type[BaseModel]]]:
    """Every section of the config, depth first: ``("", Config)``, ``("data", DataConfig)``,
    ``("tasks[]", Task)``, ``("train.finetune", FinetuneConfig)``…"""
    if model is None:
        from polytask.config import Config

        model = Config
    sections = [(path, model)]
    for name, field in model.model_fields.items():
        key = field.alias or name
        for sub in _models_in(field.annotation):
            child = f"{path}.{key}" if path else key
            sections += config_sections(sub, child + ("[]" if _is_list(field.annotation) else ""))
    return sections


def section_id(path: str) -> str:
    """A section heading's anchor: ``signals.auxiliary_from[]`` → ``signals-auxiliary_from``."""
    return path.replace("[]", "").replace(".", "-") or "top-level"


def _type_name(annotation: Any) -> str:
    """A short, readable name of a field's type: ``list[positive int] | None``, ``'a' | 'b'``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is typing.Annotated:
        base = _type_name(args[0])
        bounds = [b for item in args[1:] for b in _bounds(item)]
        if bounds in (["> 0"], ["≥ 0"]):
            return ("positive " if bounds == ["> 0"] else "non-negative ") + base
        return base
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is Any:
        return "Any"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    """The default value as YAML would read it, or "required"."""
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, BaseModel):
        return "the section's defaults"
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def _bounds(item: Any) -> list[str]:
    """Bounds that one metadata item sets (``Ge(ge=0)`` → ``≥ 0``)."""
    signs = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥"}
    return [
        f"{sign} {getattr(item, attr)}"
        for attr, sign in signs.items()
        if getattr(item, attr, None) is not None
    ]


def _constraints(field: FieldInfo) -> list[str]:
    """Bounds from the field's own metadata (``ge``, ``lt``, ``min_length``…) as text."""
    return [b for item in field.metadata for b in _bounds(item)]


def _field_notes(model: type[BaseModel]) -> dict[str, str]:
    """What the source says about each field: an attribute docstring, a trailing comment,
    or a ``name``: entry in the class docstring."""
    notes: dict[str, str] = {}
    doc = inspect.cleandoc(model.__doc__ or "")
    for match in re.finditer(r"``(\w+)``: (.+?)(?=; ``\w+``:|\.\s*$|\Z)", doc, re.S):
        notes[match.group(1)] = " ".join(match.group(2).split())
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return notes
    lines = source.splitlines()
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    for statement, after in zip(body, [*body[1:], None], strict=True):
        if not isinstance(statement, ast.AnnAssign) or not isinstance(statement.target, ast.Name):
            continue
        name = statement.target.id
        if (
            isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            notes[name] = " ".join(after.value.value.split())
            continue
        line = lines[statement.end_lineno - 1] if statement.end_lineno else ""
        comment = re.search(r"#\s*(.+)$", line)
        if comment and name not in notes:
            notes[name] = comment.group(1).strip()
    return notes


def _doc_text(text: str) -> str:
    """reST double backticks as Markdown code."""
    return text.replace("``", "`")


def config_reference(root: type[BaseModel] | None = None) -> str:
    """The config reference page: one table of fields per section of ``root`` (``Config``)."""
    lines = [
        "# Config reference",
        "",
        "Generated from the pydantic models in `polytask/config.py` and `polytask/tasks.py` at "
        "build time. A YAML config (or `pt.Config` built in Python) has these sections; an "
        "unknown key is an error that names it.",
    ]
    for path, model in config_sections(root):
        title = path or "top level"
        heading = f"`{title}`" if path else title
        lines += ["", f"## {heading} {{#{section_id(path)}}}", ""]
        lines += [f"`{model.__name__}`: " + _doc_text(inspect.cleandoc(model.__doc__ or "")), ""]
        notes = _field_notes(model)
        lines += ["| field | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = field.alias or name
            described = field.description or notes.get(name, "")
            bounds = _constraints(field)
            if bounds:
                described = (described + "; " if described else "") + ", ".join(bounds)
            if any(True for _ in _models_in(field.annotation)):
                sub = f"{path}.{key}" if path else key
                sub += "[]" if _is_list(field.annotation) else ""
                link = f"see [`{sub}`](#{section_id(sub)})"
                described = (described + "; " if described else "") + link
            kind = _cell(f"`{_type_name(field.annotation)}`")
            text = _cell(_doc_text(described))
            lines.append(f"| `{key}` | {kind} | {_default(field)} | {text} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- API reference


def api_objects() -> dict[str, list[tuple[str, str]]]:
    """``polytask.__all__`` by defining module: module → [(public name, dotted path)], for the
    classes, functions and modules; data (registries, ``__version__``) under ``""``."""
    import polytask

    groups: dict[str, list[tuple[str, str]]] = {}
    for name in polytask.__all__:
        obj = getattr(polytask, name)
        if inspect.ismodule(obj):
            module, path = obj.__name__, obj.__name__
        elif inspect.isclass(obj) or inspect.isfunction(obj):
            module, path = obj.__module__, f"{obj.__module__}.{obj.__qualname__}"
        else:
            module, path = "", name
        groups.setdefault(module, []).append((name, path))
    return groups


def _data_entry(name: str, value: Any) -> str:
    """One line for a public data name: a registry's keys, or a value."""
    if isinstance(value, dict):
        keys = ", ".join(f"`{k}`" for k in value)
        return f"- `pt.{name}`: a registry of {len(value)}, keyed by the names configs use: {keys}"
    return f"- `pt.{name}`: `{value!r}`"


def api_reference() -> str:
    """The Python API page: every name of ``polytask.__all__``, grouped by module, rendered by
    mkdocstrings from its docstring (registries and the version listed with their values)."""
    import importlib

    import polytask

    lines = [
        "# Python API",
        "",
        "Every name `import polytask as pt` exports (`polytask.__all__`), grouped by the module "
        "that defines it, from the docstrings. The scikit-learn estimators are on "
        "[their own page](sklearn.md).",
    ]
    groups = api_objects()
    for module in sorted(m for m in groups if m):
        doc = inspect.getdoc(importlib.import_module(module)) or module
        lines += ["", f"## `{module}`", "", doc.split("\n\n")[0].replace("\n", " "), ""]
        for _, path in groups[module]:
            options = "    options:\n      heading_level: 3\n      show_root_heading: true"
            lines += [f"::: {path}", options, ""]
    if "" in groups:
        lines += ["", "## Registries and version", ""]
        lines += [_data_entry(n, getattr(polytask, n)) for n, _ in groups[""]]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- MkDocs hook


def outside_links(docs_dir: Path) -> dict[str, str]:
    """Relative links from docs pages to repository files outside docs/ (plots, results), as
    MkDocs resolves them (``../benchmarks/results/x.png``), each with its path in the
    repository (``benchmarks/results/x.png``). Links to missing files or to other Markdown pages
    are left to MkDocs' own link check."""
    docs_dir = docs_dir.resolve()
    repo = docs_dir.parent
    found = {}
    for page in docs_dir.rglob("*.md"):
        page_uri = page.relative_to(docs_dir).as_posix()
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            uri = posixpath.normpath(posixpath.join(posixpath.dirname(page_uri), target))
            path = (docs_dir / uri).resolve()
            if not uri.startswith("../") or path.suffix == ".md" or not path.is_file():
                continue
            if repo in path.parents:
                found[uri] = path.relative_to(repo).as_posix()
    return found


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the generated reference pages, and the repository files that pages
    link to outside docs/, published under ``repo/`` in the site."""
    from mkdocs.structure.files import File, InclusionLevel

    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    files.append(File.generated(config, CONFIG_PAGE, content=config_reference()))
    files.append(File.generated(config, API_PAGE, content=api_reference()))
    for uri, in_repo in sorted(outside_links(Path(config.docs_dir)).items()):
        files.append(
            File(
                uri,
                src_dir=config.docs_dir,
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
                dest_uri=f"repo/{in_repo}",
                inclusion=InclusionLevel.INCLUDED,
            )
        )
    return files


def main(argv: list[str] | None = None) -> int:
    """Write the generated pages into a folder: ``python scripts/docs_gen.py OUT_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python scripts/docs_gen.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    pages = {CLI_PAGE: cli_reference(), CONFIG_PAGE: config_reference(), API_PAGE: api_reference()}
    for page, text in pages.items():
        path = out / Path(page).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
