"""`polytask report`: one self-contained HTML page per directory kind (run, compare, plan,
relate), every image inline, decodable and non-blank, nothing fetched, text escaped; rendered
in headless Chromium without a console error."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from synthetic import make_config, make_frame
from typer.testing import CliRunner

import polytask as pt
from polytask.commands_extra import report_command
from polytask.io import write_json
from polytask.report import plot_comparison
from polytask.report_html import detect_kind, render_report, write_report

TASKS = [
    pt.Task(name="price", kind="regression"),
    pt.Task(name="sold", kind="binary"),
    pt.Task(name="species", kind="multiclass"),
]
#: Headings each kind's page must have (part of an <h2> text is enough).
SECTIONS = {
    "run": ["Scores", "Learning curves", "Balancer weights", "Gate / mixing weights",
            "Config", "Versions", "Command"],
    "compare": ["STL vs MTL", "Config", "Command"],
    "plan": ["Per-task choice", "Candidates", "Plan vs STL", "Model: task → member",
             "member ", ": Learning curves", "Config", "Versions", "Command"],
    "relate": ["Suggested groups", "Relatedness heatmaps", "Command"],
}  # fmt: skip


@pytest.fixture(scope="module")
def directories(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small real directory of every kind, made with the library."""
    root = tmp_path_factory.mktemp("report")
    columns = ["x0", "x1", "x2", "x3", "color", "price", "sold", "species"]
    make_frame(n=120, seed=3)[columns].to_csv(root / "data.csv", index=False)
    config = make_config(root / "data.csv", TASKS, epochs=3)
    routed = make_config(
        root / "data.csv", TASKS, epochs=3, balancer="uncertainty", model={"architecture": "mmoe"}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pt.PolytaskWarning)  # tiny splits
        pt.fit(routed, out=root / "run")
        result = pt.compare(config, seeds=2).to_json()
        (root / "compare").mkdir()
        write_json(root / "compare" / "comparison.json", result)  # as `polytask compare` does
        (root / "compare" / "config.yaml").write_text(config.to_yaml())
        plot_comparison(result, root / "compare" / "comparison.png")
        pt.plan(config, seeds=2, candidates=["per_task"], workers=1, out=root / "plan")
        pt.relate(config, out=root / "relate")
    return {kind: root / kind for kind in ("run", "compare", "plan", "relate")}


@pytest.fixture(scope="module")
def pages(directories: dict[str, Path]) -> dict[str, str]:
    """The page of every kind, rendered once."""
    return {kind: render_report(folder) for kind, folder in directories.items()}


class _Page(HTMLParser):
    """The parts of a page the tests look at: tags, image sources, links, headings."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.references: list[str] = []
        self.headings: list[str] = []
        self._in_heading = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.images.append(values.get("src") or "")
        for name in ("src", "href", "srcset", "data", "poster", "action"):
            if values.get(name) is not None and tag != "img":
                self.references.append(values[name] or "")
        self._in_heading = tag == "h2"
        if self._in_heading:
            self.headings.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_heading = False

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.headings[-1] += data


def _pixels(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:60]
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :], validate=True)))
    image.load()  # decodes the whole PNG (a truncated one fails here)
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"), dtype=float)


@pytest.mark.parametrize("kind", ["run", "compare", "plan", "relate"])
def test_page_is_self_contained_with_every_section(
    directories: dict[str, Path], pages: dict[str, str], kind: str
) -> None:
    assert detect_kind(directories[kind]) == kind
    text = pages[kind]
    page = _Page(text)
    assert page.images, "no image"
    for src in page.images:
        assert _pixels(src).var() > 0, "blank image"
    # nothing outside the page: no scripts, no stylesheets, only in-page links
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert all(r.startswith("#") for r in page.references), page.references
    assert "url(" not in text and "@import" not in text and "http" not in text.lower()
    for section in SECTIONS[kind]:
        assert any(section in h for h in page.headings), (section, page.headings)


def test_run_page_shows_one_curve_per_task_and_the_settings(pages: dict[str, str]) -> None:
    text = pages["run"]
    page = _Page(text)
    curves = [s for s in re.findall(r'<img alt="([^"]*)"', text) if s.startswith("learning curve")]
    assert len(curves) == len(TASKS)
    assert "architecture: mmoe" in text  # the config, as YAML
    assert "torch" in text and "polytask fit" in text  # versions, equivalent command
    assert len(page.images) == len(TASKS) + 2  # curves, balancer weights, gate weights


def test_comparison_table_has_delta_m_intervals_and_verdicts(
    directories: dict[str, Path], pages: dict[str, str]
) -> None:
    result = json.loads((directories["compare"] / "comparison.json").read_text())
    text = pages["compare"]
    assert "Δm = " in text and "95% CI" in text
    for name, task in result["tasks"].items():
        assert f"<td>{name}</td>" in text
        assert task["verdict"] in text
    assert "polytask compare" in text and "--seeds 2" in text


def test_plan_page_lists_the_choice_per_task(
    directories: dict[str, Path], pages: dict[str, str]
) -> None:
    plan = json.loads((directories["plan"] / "plan.json").read_text())
    text = pages["plan"]
    for name, choice in plan["choice"].items():
        assert f"<td>{name}</td><td>" in text and choice["reason"] in text
    assert "plan vs all-in-one: Δm" in text and "--candidate per_task" in text


def test_text_from_files_is_escaped(directories: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "compare"
    shutil.copytree(directories["compare"], folder)
    result = json.loads((folder / "comparison.json").read_text())
    result["summary"] = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    (folder / "comparison.json").write_text(json.dumps(result))
    text = render_report(folder)
    page = _Page(text)
    assert "script" not in page.tags and all(s.startswith("data:") for s in page.images)
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img" in text


def test_command_writes_the_page_and_names_a_wrong_directory(
    directories: dict[str, Path], tmp_path: Path
) -> None:
    app = typer.Typer()
    app.command(name="report")(report_command)
    app.command(name="noop")(lambda: None)  # two commands: Typer keeps "report" a subcommand
    out = tmp_path / "pages" / "relate.html"
    result = CliRunner().invoke(app, ["report", str(directories["relate"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "relate report written" in result.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert isinstance(result.exception, pt.RunError)
    assert "holds no run, comparison, plan or relatedness files" in str(result.exception)


# ---- headless Chromium ----------------------------------------------------------------------
#: Added to a copy of the page: draws every image on a canvas and writes, into the DOM,
#: whether it decoded, its size and its pixel variance (the page itself has no script).
PROBE = """<script>
window.addEventListener("load", () => {
  const rows = [];
  for (const img of document.images) {
    const w = img.naturalWidth, h = img.naturalHeight;
    const state = img.complete && w > 0 && h > 0 ? "decoded" : "undecodable";
    let variance = 0;
    if (w > 0 && h > 0) {
      const canvas = document.createElement("canvas");
      canvas.width = w; canvas.height = h;
      const g = canvas.getContext("2d");
      g.drawImage(img, 0, 0);
      const d = g.getImageData(0, 0, w, h).data;
      let s = 0, s2 = 0;
      for (let i = 0; i < d.length; i += 4) {
        const v = d[i] + d[i + 1] + d[i + 2];
        s += v; s2 += v * v;
      }
      const n = d.length / 4;
      variance = s2 / n - (s / n) * (s / n);
    }
    rows.push(state + " " + w + "x" + h + " " + variance.toFixed(3));
  }
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = rows.join("\\n") + "\\nend";
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    reason = (
        "no headless browser (chromium, chromium-browser or google-chrome) on PATH; "
        ".ci/run installs Debian's chromium"
    )
    if os.environ.get("CI"):
        pytest.fail(reason + ", yet CI is set: the browser check must run in CI")
    print(f"SKIPPED: {reason}")
    pytest.skip(reason)


def _render_in_browser(browser: str, page: Path) -> tuple[str, list[str]]:
    """The DOM after load, and the console lines Chromium logged (page errors included)."""
    result = subprocess.run(
        [
            browser,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            f"--user-data-dir={page.parent / 'profile'}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [
        line for line in result.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
    ]
    return result.stdout, console


def _probe(dom: str) -> list[str]:
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, "the probe did not run"
    rows = found.group(1).strip().splitlines()
    assert rows[-1] == "end"
    return rows[:-1]


def _probed_copy(text: str, path: Path) -> Path:
    path.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    return path


def test_the_probe_catches_a_broken_image_and_a_console_error(tmp_path: Path) -> None:
    """The browser check itself: a broken image, a blank one and a script error are seen."""
    browser = _browser()
    blank = io.BytesIO()
    Image.new("RGB", (20, 10), "white").save(blank, format="PNG")
    bad = (
        "<!DOCTYPE html><html><body>"
        '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA">'
        f'<img src="data:image/png;base64,{base64.b64encode(blank.getvalue()).decode()}">'
        "<script>notDefined();</script></body></html>"
    )
    dom, console = _render_in_browser(browser, _probed_copy(bad, tmp_path / "bad.html"))
    rows = _probe(dom)
    assert rows[0].startswith("undecodable 0x0")
    assert rows[1] == "decoded 20x10 0.000"
    assert any("Uncaught ReferenceError" in line for line in console), console


@pytest.mark.parametrize("kind", ["run", "compare", "plan", "relate"])
def test_page_renders_in_headless_chromium(
    directories: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    browser = _browser()
    text = write_report(directories[kind], tmp_path / f"{kind}.html").read_text()
    dom, console = _render_in_browser(browser, _probed_copy(text, tmp_path / "probed.html"))
    assert console == [], console
    rows = _probe(dom)
    assert len(rows) == len(_Page(text).images) > 0
    for row in rows:
        state, size, variance = row.split()
        width, height = map(int, size.split("x"))
        assert state == "decoded" and width > 0 and height > 0, row
        assert float(variance) > 0, f"blank image in the browser: {row}"
    assert dom.count("data:image/png;base64,") == len(rows)
