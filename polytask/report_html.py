"""One self-contained HTML page of a run, comparison, plan or relatedness directory.

The page carries its plots inline as base64 PNG data URIs and its styling in one ``<style>``
element: no scripts, no external CSS, fonts or images, nothing fetched over a network. Plots are
drawn afresh from the directory's JSON/CSV files with the functions of ``report.py`` (into a
temporary folder), so a page never shows a stale PNG. Every text taken from a file is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import shlex
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import PolytaskError, RunError
from .io import MEMBERS_FILE

#: The kinds of directory a report is made of, and the file that identifies each.
REPORT_KINDS: dict[str, str] = {
    "plan": "plan.json",
    "plan_run": MEMBERS_FILE,
    "compare": "comparison.json",
    "relate": "relatedness.json",
    "run": "model.json",
}

_STYLE = """
body { font-family: sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
nav ul { columns: 3; } table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; font-size: 0.9em; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f3f3f3; }
img { max-width: 100%; height: auto; margin: 4px; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.7em; overflow-x: auto; font-size: 0.85em; }
caption { caption-side: bottom; text-align: left; font-size: 0.85em; color: #555; }
.note { color: #555; font-size: 0.9em; } figure { display: inline-block; margin: 0; }
"""


def detect_kind(directory: str | Path) -> str:
    """``run``, ``compare``, ``plan``, ``plan_run`` or ``relate``, from the files the directory
    holds (a RunError names what was expected when none fits)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RunError(f"report: {str(directory)!r} is not a directory")
    for kind, marker in REPORT_KINDS.items():
        if (directory / marker).is_file():
            return kind
    expected = ", ".join(f"{m} ({k})" for k, m in REPORT_KINDS.items())
    raise RunError(
        f"report: {str(directory)!r} holds no run, comparison, plan or relatedness files "
        f"(expected one of {expected})"
    )


def render_report(directory: str | Path) -> str:
    """The HTML page of ``directory`` (see ``detect_kind``) as a string."""
    directory = Path(directory)
    kind = detect_kind(directory)
    page = _Page(directory, kind)
    with tempfile.TemporaryDirectory(prefix="polytask-report-") as scratch:
        page.scratch = Path(scratch)
        _BUILDERS[kind](page, directory)
    return page.html()


def write_report(directory: str | Path, out: str | Path | None = None) -> Path:
    """Write the page of ``directory`` to ``out`` (default ``DIRECTORY/report.html``)."""
    directory = Path(directory)
    path = Path(out) if out is not None else directory / "report.html"
    if path.is_dir():
        raise RunError(f"report: --out {str(path)!r} is a directory; give a file such as r.html")
    text = render_report(directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise RunError(f"report: cannot write {str(path)!r}: {exc.strerror}") from None
    return path


# ---- the page -------------------------------------------------------------------------------
def esc(value: Any) -> str:
    """``value`` as HTML-escaped text."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return "—" if not math.isfinite(value) else format(float(value), f".{digits}g")
    return str(value)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            numeric = isinstance(cell, (int, float, np.number)) and not isinstance(cell, bool)
            text = _fmt(cell) if numeric else str(cell)
            cells.append(f'<td class="n">{esc(text)}</td>' if numeric else f"<td>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _pm(part: Mapping[str, Any]) -> str:
    return f"{_fmt(part.get('mean'))} ± {_fmt(part.get('std'))}"


def _ci(pair: Any) -> str:
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
        return "—"
    lo, hi = (_num(v) for v in pair)
    return "—" if not (math.isfinite(lo) and math.isfinite(hi)) else f"[{lo:+.2f}, {hi:+.2f}]"


def _change(value: Any) -> str:
    v = _num(value)
    return f"{v:+.2f}" if math.isfinite(v) else "—"


class _Page:
    """Sections of the page in order; each an id, a heading and already-escaped HTML."""

    def __init__(self, directory: Path, kind: str) -> None:
        self.directory = directory
        self.kind = kind
        self.sections: list[tuple[str, str, str]] = []
        self.scratch = Path(".")
        self._plots = 0

    def add(self, title: str, body: str) -> None:
        anchor = f"s{len(self.sections) + 1}"
        self.sections.append((anchor, title, body))

    def plot(self, draw: Callable[[Path], Path | Sequence[Path] | None], alt: str) -> str:
        """``<img>`` elements of the PNG(s) ``draw`` writes into a fresh scratch folder."""
        self._plots += 1
        folder = self.scratch / f"plot{self._plots}"
        folder.mkdir(parents=True)
        made = draw(folder)
        paths = [] if made is None else [made] if isinstance(made, Path) else list(made)
        return "".join(_image(p, f"{alt}: {p.stem}" if len(paths) > 1 else alt) for p in paths)

    def html(self) -> str:
        title = f"polytask {_KIND_TITLES[self.kind]}: {self.directory.name or self.directory}"
        nav = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t, _ in self.sections)
        body = "".join(
            f'<section id="{a}"><h2>{esc(t)}</h2>{content}</section>'
            for a, t, content in self.sections
        )
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
            f"<h1>{esc(title)}</h1>"
            f'<p class="note">directory: <code>{esc(self.directory.resolve())}</code></p>'
            f"<nav><ul>{nav}</ul></nav>{body}</body></html>\n"
        )


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}"></figure>'


_KIND_TITLES = {
    "run": "run",
    "compare": "STL vs MTL comparison",
    "plan": "plan",
    "plan_run": "plan model",
    "relate": "task relatedness",
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"report: file {str(path)!r} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"report: file {str(path)!r} is corrupt: {exc}") from None


def _command(page: _Page, words: Sequence[str], note: str = "") -> None:
    page.add(
        "Command",
        "<p>The command line is not stored; this is the equivalent command, reconstructed "
        "from the kind and the files of the directory:</p>"
        f"<pre>{esc(shlex.join(words))}</pre>"
        + (f'<p class="note">{esc(note)}</p>' if note else ""),
    )


def _config(page: _Page, path: Path) -> None:
    if path.is_file():
        page.add(f"Config ({path.name})", f"<pre>{esc(path.read_text())}</pre>")


def _versions(page: _Page, model_json: Path) -> None:
    if not model_json.is_file():
        return
    versions = _read_json(model_json).get("versions") or {}
    if versions:
        page.add("Versions", _table(["package", "version"], sorted(versions.items())))


# ---- a run ----------------------------------------------------------------------------------
def _build_run(page: _Page, directory: Path) -> None:
    _run_sections(page, directory, label="")
    _config(page, directory / "config.yaml")
    _versions(page, directory / "model.json")
    _command(page, ["polytask", "fit", str(directory / "config.yaml"), "--out", str(directory)])


def _run_sections(page: _Page, directory: Path, *, label: str) -> None:
    """Scores, learning curves, balancer weights and routing weights of one run directory."""
    from .config import parse_config
    from .report import plot_learning_curves, plot_mixing, plot_weights
    from .tasks import Task

    prefix = f"{label}: " if label else ""
    metrics = (
        _read_json(directory / "metrics.json") if (directory / "metrics.json").is_file() else {}
    )
    config = None
    if (directory / "config.yaml").is_file():
        import yaml

        try:
            config = parse_config(yaml.safe_load((directory / "config.yaml").read_text()))
        except (PolytaskError, yaml.YAMLError, ValueError):
            config = None  # the page still shows the file as text and what else it can
    summary = [
        ("best epoch", metrics.get("best_epoch")),
        ("stopped early", metrics.get("stopped_early")),
        ("training time (s)", metrics.get("train_seconds")),
    ]
    if config is not None:
        summary += [
            ("architecture", config.model.architecture),
            ("balancer", config.train.balancer),
            ("seed", config.train.seed),
        ]
    body = _table(["", "value"], [(k, v) for k, v in summary if v is not None])
    for split in ("test", "validation"):
        scores = metrics.get(split)
        if not isinstance(scores, Mapping) or not scores:
            continue
        names = list(dict.fromkeys(m for s in scores.values() for m in s if m != "n"))
        rows = [
            [task, s.get("n", "—"), *(_num(s.get(m)) if m in s else "—" for m in names)]
            for task, s in scores.items()
        ]
        body += _table(["task", "n", *names], rows, caption=f"{split} scores (labelled rows)")
    page.add(f"{prefix}Scores", body)

    tasks_file, history_file = directory / "tasks.json", directory / "history.csv"
    if tasks_file.is_file() and history_file.is_file():
        tasks = [Task(**t) for t in _read_json(tasks_file)]
        history = pd.read_csv(history_file)
        curves = page.plot(lambda d: plot_learning_curves(history, tasks, d), "learning curve")
        page.add(
            f"{prefix}Learning curves",
            '<p class="note">training and validation loss per epoch, per task, over its '
            "labelled rows; the dotted line marks the best epoch.</p>" + curves,
        )
        balancer = config.train.balancer if config is not None else ""
        columns = [c for c in history.columns if c.startswith("weight/")]
        moving = any(history[c].nunique(dropna=True) > 1 for c in columns)
        weights = page.plot(lambda d: plot_weights(history, d, balancer=balancer), "task weights")
        if weights and moving:
            page.add(
                f"{prefix}Balancer weights",
                f'<p class="note">mean weight per step of each task, per epoch ({esc(balancer)})'
                "</p>" + weights,
            )
    elif not history_file.is_file():
        page.add(f"{prefix}Learning curves", '<p class="note">no history.csv in this run.</p>')
    if (directory / "mixing.json").is_file():
        tables = _read_json(directory / "mixing.json")
        architecture = config.model.architecture if config is not None else ""
        mixing = page.plot(
            lambda d: plot_mixing(tables, d, architecture=architecture), "routing weights"
        )
        if mixing:
            page.add(
                f"{prefix}Gate / mixing weights",
                '<p class="note">gates averaged over the validation rows; cross-stitch mixing '
                "matrices.</p>" + mixing,
            )


# ---- a comparison ---------------------------------------------------------------------------
def _build_compare(page: _Page, directory: Path) -> None:
    result = _read_json(directory / "comparison.json")
    _comparison_sections(page, result)
    _config(page, directory / "config.yaml")
    seeds = len(result.get("seeds", [])) or 1
    _command(
        page,
        [
            "polytask",
            "compare",
            str(directory / "config.yaml"),
            "--seeds",
            str(seeds),
            "--out",
            str(directory),
        ],
    )


def _delta_m(result: Mapping[str, Any]) -> str:
    return (
        f"Δm = {_change(result.get('delta_m_percent'))}% ± {_fmt(result.get('delta_m_std'), 3)}, "
        f"95% CI {_ci(result.get('delta_m_ci95'))}: {result.get('delta_m_verdict', '')}"
    )


def _comparison_sections(
    page: _Page, result: Mapping[str, Any], *, title: str = "STL vs MTL"
) -> None:
    from .report import plot_comparison

    seeds = len(result.get("seeds", []))
    rows = []
    for name, t in result["tasks"].items():
        arrow = "↑" if t.get("higher_is_better") else "↓"
        rows.append(
            [
                name,
                f"{t['metric']} {arrow}",
                t.get("n_test", "—"),
                _pm(t["stl"]),
                _pm(t["mtl"]),
                _change(t.get("relative_change_percent")),
                _ci(t.get("relative_change_ci95")),
                _num(t.get("p_value")),
                t.get("verdict", ""),
            ]
        )
    table = _table(
        ["task", "metric", "n", "STL", "MTL", "change %", "95% CI of change", "p", "verdict"],
        rows,
        caption=f"mean ± std over {seeds} seed(s); change: relative change vs STL in %, "
        "negative = MTL better (the sign of Δm); p: paired t-test over seeds",
    )
    summary = f"<p><strong>{esc(_delta_m(result))}</strong></p>"
    summary += f"<p>{esc(result.get('summary', ''))}</p>"
    warnings = result.get("warnings") or []
    if warnings:
        summary += "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
    plot = page.plot(lambda d: plot_comparison(result, d / "comparison.png"), "STL vs MTL")
    page.add(
        title,
        summary
        + '<p class="note">per-task primary metric on the test split, bars: mean, error bars: '
        "± std over seeds; one panel per metric and scale.</p>" + plot + table,
    )


# ---- a plan ---------------------------------------------------------------------------------
def _build_plan(page: _Page, directory: Path) -> None:
    plan = _read_json(directory / "plan.json")
    result = _read_json(directory / "comparison.json")
    choice = plan.get("choice", {})
    aio = result.get("vs_all_in_one", {}).get("tasks", {})
    rows = []
    for name, t in result["tasks"].items():
        picked = choice.get(name, {})
        rows.append(
            [
                name,
                t["metric"] + (" ↑" if t.get("higher_is_better") else " ↓"),
                picked.get("candidate", t.get("chosen", "—")),
                picked.get("reason", ""),
                _pm(t["stl"]),
                _pm(aio[name]["stl"]) if name in aio else "—",
                _pm(t["mtl"]),
                _change(t.get("relative_change_percent")),
                t.get("verdict", "").replace("MTL", "plan"),
                _change(aio.get(name, {}).get("relative_change_percent")),
            ]
        )
    seeds = len(result.get("seeds", []))
    deltas = [f"<p><strong>plan vs STL: {esc(_delta_m(result))}</strong></p>"]
    if "vs_all_in_one" in result:
        deltas.append(
            f"<p><strong>plan vs all-in-one: {esc(_delta_m(result['vs_all_in_one']))}</strong></p>"
        )
    page.add(
        "Per-task choice",
        "".join(deltas)
        + _table(
            [
                "task",
                "metric",
                "chosen",
                "reason",
                "STL",
                "all-in-one",
                "plan",
                "change % vs STL",
                "verdict vs STL",
                "change % vs all-in-one",
            ],
            rows,
            caption=f"chosen on validation rows; test scores, mean ± std over {seeds} seed(s); "
            "negative change = the plan is better",
        ),
    )
    candidates = plan.get("candidates", {})
    page.add(
        "Candidates",
        _table(
            ["candidate", "status", "description", "config change", "wall time (s)", "reason"],
            [
                [
                    name,
                    c.get("status", ""),
                    c.get("description", ""),
                    ", ".join(f"{k}={v}" for k, v in (c.get("config") or {}).items()) or "—",
                    _num(c.get("wall_seconds")),
                    c.get("reason", ""),
                ]
                for name, c in candidates.items()
            ],
        ),
    )
    plain = {k: v for k, v in result.items() if k != "vs_all_in_one"}
    _comparison_sections(page, plain, title="Plan vs STL (plan bars: each task's chosen candidate)")
    run = directory / "run"
    if (run / MEMBERS_FILE).is_file():
        _members(page, run)
    _config(page, run / "config.yaml")
    members = sorted((run / "members").glob("*/model.json"))
    if members:
        _versions(page, members[0])
    words = ["polytask", "plan", str(run / "config.yaml"), "--out", str(directory)]
    words += ["--seeds", str(len(plan.get("seeds", [])) or 1)]
    for name in candidates:
        if name not in ("stl", "all_in_one"):
            words += ["--candidate", name]
    _command(page, words)


def _members(page: _Page, run: Path) -> None:
    meta = _read_json(run / "members.json")
    rows = [[task, member] for task, member in meta.get("tasks", {}).items()]
    page.add(
        "Model: task → member",
        _table(["task", "predicted by member run"], rows)
        + '<p class="note">each member is an ordinary run directory under '
        f"<code>{esc(run / 'members')}</code>.</p>",
    )
    for member in meta.get("members", []):
        folder = run / "members" / str(member)
        if folder.is_dir():
            _run_sections(page, folder, label=f"member {member}")


def _build_plan_run(page: _Page, directory: Path) -> None:
    _members(page, directory)
    _config(page, directory / "config.yaml")
    members = sorted((directory / "members").glob("*/model.json"))
    if members:
        _versions(page, members[0])
    parent = directory.parent
    _command(page, ["polytask", "plan", str(directory / "config.yaml"), "--out", str(parent)])


# ---- relatedness ----------------------------------------------------------------------------
def _build_relate(page: _Page, directory: Path) -> None:
    from .relate import Relatedness

    data = _read_json(directory / "relatedness.json")
    try:
        tasks = [str(t) for t in data["tasks"]]
        measures = {
            name: np.array(
                [[math.nan if v is None else float(v) for v in row] for row in values], dtype=float
            )
            for name, values in data["measures"].items()
        }
        groups = [list(g) for g in data.get("groups", [])]
        settings = dict(data.get("settings", {}))
    except (KeyError, TypeError, ValueError) as exc:
        path = str(directory / "relatedness.json")
        raise RunError(f"report: file {path!r} is invalid: {exc!r}") from None
    found = Relatedness(
        tasks=tasks, main=tasks, measures=measures, groups=groups, settings=settings
    )
    page.add(
        "Suggested groups",
        "<ol>"
        + "".join(f"<li>{esc(', '.join(g))}</li>" for g in groups)
        + "</ol>"
        + _table(
            ["setting", "value"],
            [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in settings.items()],
        ),
    )

    def draw(folder: Path) -> list[Path]:
        return [p for p in found.save(folder) if p.suffix == ".png"]

    page.add(
        "Relatedness heatmaps",
        '<p class="note">row i, column j: how much task i relates to / helps task j; rows and '
        "columns in the order of a hierarchical clustering.</p>" + page.plot(draw, "relatedness"),
    )
    validation = data.get("validation")
    if isinstance(validation, Mapping) and validation.get("arms"):
        rows = [
            [
                arm,
                _change(v.get("delta_m_percent")),
                _fmt(v.get("delta_m_std"), 3),
                _ci(v.get("delta_m_ci95")),
            ]
            for arm, v in validation["arms"].items()
        ]
        page.add(
            "Validation of the groups",
            _table(
                ["arm", "Δm %", "± std", "95% CI"],
                rows,
                caption=f"on the {validation.get('split', 'validation')} split, vs STL; "
                "negative = better than STL",
            ),
        )
    words = ["polytask", "relate", "CONFIG.yaml", "--out", str(directory)]
    words += ["--seeds", str(len(settings.get("seeds", [])) or 1)]
    for name in measures:
        words += ["--measure", name]
    if "every" in settings:
        words += ["--every", str(settings["every"])]
    if isinstance(validation, Mapping):
        words.append("--validate")
    _command(
        page,
        words,
        "a relatedness directory stores no config: CONFIG.yaml stands for the "
        "config it was measured with",
    )


_BUILDERS: dict[str, Callable[[_Page, Path], None]] = {
    "run": _build_run,
    "compare": _build_compare,
    "plan": _build_plan,
    "plan_run": _build_plan_run,
    "relate": _build_relate,
}

__all__ = ["REPORT_KINDS", "detect_kind", "render_report", "write_report"]
