"""The docs site: generated references cover the registered CLI, config and API; the strict
MkDocs build passes (skipped where MkDocs is not installed; `make test` installs it)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import typer
from pydantic import BaseModel, Field
from typer.testing import CliRunner

import polytask
from polytask import cli
from polytask.config import Config

ROOT = Path(__file__).resolve().parents[1]


def _load_gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_gen", ROOT / "scripts" / "docs_gen.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _load_gen()


def _help_commands() -> set[str]:
    """Command names as `polytask --help` prints them (the Commands panel)."""
    result = CliRunner().invoke(cli.app, ["--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    panel = result.output.split("Commands", 1)[1]
    return set(re.findall(r"^(?:│ | {2})(\S+) {2,}\S", panel, re.M))  # rich or plain click


def _sections(page: str) -> dict[str, str]:
    """A generated page cut at its `## ` headings: heading text → the text under it."""
    parts = re.split(r"^## (.+?)(?: \{#[^}]*\})?$", page, flags=re.M)
    return {parts[i].strip("`"): parts[i + 1] for i in range(1, len(parts), 2)}


def test_cli_reference_has_every_command_of_help_with_its_options() -> None:
    page = gen.cli_reference()
    sections = _sections(page)
    group = typer.main.get_command(cli.app)
    ctx = group.context_class(group, info_name="polytask")
    registered = {n for n in group.list_commands(ctx) if not group.get_command(ctx, n).hidden}
    assert _help_commands() == registered
    assert set(sections) == registered
    for name in registered:
        command = group.get_command(ctx, name)
        first_line = (command.help or "").strip().splitlines()[0]
        assert first_line in sections[name]
        for param in command.params:
            for opt in param.opts if param.param_type_name == "option" else []:
                assert f"{opt}" in sections[name], (name, opt)
    assert "--version" in page.split("## ", 1)[0]


def test_a_newly_registered_command_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = typer.Typer()

    @extra.command("zz-probe")
    def probe(level: int = typer.Option(3, "--level", help="How deep to probe.")) -> None:
        """Probe the docs generator."""

    commands = [*cli.app.registered_commands, *extra.registered_commands]
    monkeypatch.setattr(cli.app, "registered_commands", commands)
    section = _sections(gen.cli_reference())["zz-probe"]
    assert "Probe the docs generator." in section
    assert "--level" in section and "How deep to probe." in section


def _model_of(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _model_of(a)]


def _walk(model: type[BaseModel], path: str = "") -> dict[str, set[str]]:
    """Section path → the keys a YAML config may give there, found independently of docs_gen."""
    found = {path: {f.alias or n for n, f in model.model_fields.items()}}
    for name, field in model.model_fields.items():
        for sub in _model_of(field.annotation):
            key = f"{path}.{field.alias or name}".lstrip(".")
            listed = "list[" in str(field.annotation)
            found |= _walk(sub, key + ("[]" if listed else ""))
    return found


def _rows(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.M))


def test_config_reference_has_every_field_of_every_section() -> None:
    sections = _sections(gen.config_reference())
    expected = _walk(Config)
    assert {"", "data", "tasks[]", "model", "train", "train.finetune", "signals"} <= set(expected)
    assert {("top level" if p == "" else p) for p in expected} == set(sections)
    for path, keys in expected.items():
        assert _rows(sections["top level" if path == "" else path]) == keys, path


class _Inner(BaseModel):
    """An inner section."""

    depth: int = Field(default=2, ge=1)
    """How deep it goes."""


class _Outer(BaseModel):
    """A made-up config root."""

    name: str
    inner: list[_Inner] = Field(default_factory=list)  # the inner entries


def test_config_reference_follows_a_new_field_and_its_docs() -> None:
    sections = _sections(gen.config_reference(_Outer))
    assert set(sections) == {"top level", "inner[]"}
    assert _rows(sections["top level"]) == {"name", "inner"}
    assert "the inner entries" in sections["top level"]
    depth = next(line for line in sections["inner[]"].splitlines() if line.startswith("| `depth`"))
    assert "`2`" in depth and "How deep it goes." in depth and "≥ 1" in depth


def test_api_reference_names_every_public_name_by_its_defining_path() -> None:
    page = gen.api_reference()
    paths = re.findall(r"^::: (\S+)$", page, re.M)
    data = set(re.findall(r"^- `pt\.(\w+)`", page, re.M))
    documented = {p.rsplit(".", 1)[-1] for p in paths} | data
    assert set(polytask.__all__) <= documented
    for path in paths:
        module_name, _, attr = path.rpartition(".")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError):
            obj = importlib.import_module(path)
        assert obj is getattr(polytask, attr), path
    assert "::: polytask.sklearn" in (ROOT / "docs" / "reference" / "sklearn.md").read_text()


def test_every_docs_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    generated = {gen.CLI_PAGE, gen.CONFIG_PAGE, gen.API_PAGE}
    assert {p for p in pages | generated if f": {p}" not in nav} == set()


def test_pages_link_outside_docs_only_to_committed_files() -> None:
    # A plot or result a page links to must be in git, or the build passes here and fails in CI.
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    tracked = set(listed.stdout.split())
    assert set(gen.outside_links(ROOT / "docs").values()) - tracked == set()


def test_strict_build(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed")
    pytest.importorskip("material", reason="mkdocs-material is not installed")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for page in ("reference/cli", "reference/config", "reference/api", "concepts"):
        assert (tmp_path / page / "index.html").is_file()
    api = (tmp_path / "reference" / "api" / "index.html").read_text()
    assert 'id="polytask.compare.compare"' in api and 'id="polytask.config.Config"' in api
