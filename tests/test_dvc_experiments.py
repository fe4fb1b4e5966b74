"""DVC on a tiny project: a queued parameter sweep, and `dvc plots show` pages that render offline
with the project's template (.dvc/plots/offline.html, built by scripts/build_plots_template.py)."""
from __future__ import annotations

import configparser
import importlib.util
import io
import json
import shutil
import subprocess
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from tests.servers import dvc, experiments, tiny_dvc_repo


def load_builder():
    spec = importlib.util.spec_from_file_location("build_plots_template", PROJECT_ROOT / "scripts" / "build_plots_template.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Tags(HTMLParser):
    """Every start tag with its attributes; script bodies are data, so URLs inside code are not tags."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if self.lasttag == "script":
            self.scripts.append(data)


def test_queued_sweep_lists_both_experiments(tmp_path):
    repo = tiny_dvc_repo(tmp_path / "repo")
    for p in (1, 2):
        dvc(repo, "exp", "run", "--queue", "-S", f"p={p}", "--name", f"sweep-{p}")
    run = dvc(repo, "exp", "run", "--run-all", check=False)  # starts a queue worker and waits for it
    assert run.returncode == 0, run.stdout + run.stderr
    found = experiments(repo)
    assert {name: (e["params"]["p"], e["metrics"]["score"]) for name, e in found.items() if name.startswith("sweep-")} \
        == {"sweep-1": (1, 10), "sweep-2": (2, 20)}
    assert (repo / "params.yaml").read_text() == "p: 1\n"  # queued runs leave the workspace alone
    dvc(repo, "queue", "stop", check=False)


def test_plots_template_builder(tmp_path):
    """Bundles come from the packages' CDN entry; `</script` is escaped; DVC's placeholders are kept."""
    builder = load_builder()

    def package(name, source):
        path = tmp_path / f"{name}-1.0.0.tgz"
        with tarfile.open(path, "w:gz") as tar:
            for member, text in (("package/package.json", json.dumps({"name": name, "version": "1.0.0",
                                                                        "jsdelivr": f"build/{name}.min.js"})),
                                 (f"package/build/{name}.min.js", source)):
                data = text.encode()
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    tarballs = [package("vega-embed", 'var e="</script>";\n//# sourceMappingURL=x.map'),
                package("vega", "var vega=1;"), package("vega-lite", "var vl=1;")]
    page = builder.build(tmp_path / "offline.html", tarballs).read_text()
    assert page.index("var vega=1") < page.index("var vl=1") < page.index("<\\/script>")  # load order
    assert "{plot_divs}" in page and "{refresh_tag}" in page and "{scripts}" not in page
    assert "sourceMappingURL" not in page
    with pytest.raises(SystemExit, match="placeholder"):
        builder.build(tmp_path / "bad.html", [package("vega", "x='{plot_divs}'"), *tarballs[:1], *tarballs[2:]])


def test_dvc_plots_show_renders_offline(tmp_path):
    """With the project's template and config line, the page has no external script or link: the three
    libraries are inline (and, where Chromium is installed, the chart is drawn with no network)."""
    config = configparser.ConfigParser()
    config.read(PROJECT_ROOT / ".dvc" / "config")
    setting = config["plots"]["html_template"]  # relative to .dvc/
    template = PROJECT_ROOT / ".dvc" / setting
    assert template.is_file(), "run scripts/build_plots_template.py"
    assert template.stat().st_size < 2e6

    repo = tiny_dvc_repo(tmp_path / "repo")
    (repo / ".dvc" / setting).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, repo / ".dvc" / setting)
    dvc(repo, "config", "plots.html_template", setting)
    (repo / "loss.csv").write_text("step,loss\n1,0.5\n2,0.3\n3,0.2\n")
    with open(repo / "dvc.yaml", "a") as fh:
        fh.write("plots:\n  - loss.csv:\n      x: step\n      y: loss\n")
    dvc(repo, "plots", "show", "-o", "plots")
    html = (repo / "plots" / "index.html").read_text()

    parser = Tags()
    parser.feed(html)
    external = [(tag, attrs) for tag, attrs in parser.tags for key in ("src", "href")
                if (attrs.get(key) or "").strip().lower().startswith(("http:", "https:", "//"))]
    assert external == []
    assert [attrs for tag, attrs in parser.tags if tag == "script" and "src" in attrs] == []
    assert not [attrs for tag, attrs in parser.tags if tag == "link"]
    inline = [s for s in parser.scripts if len(s) > 10000]
    assert len(inline) == 3 and "vegaEmbed" in html and "loss.csv" in html

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:
        dom = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", str(repo / "plots" / "index.html")],
                             capture_output=True, text=True, timeout=120).stdout
        assert 'class="marks"' in dom  # vega drew the chart
