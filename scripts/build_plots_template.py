"""Build `.dvc/plots/offline.html`: DVC's plots page template with vega, vega-lite and vega-embed inlined.

`dvc plots show` fills a page template: `{plot_divs}` gets the plots, and `{scripts}` gets
`<script src="https://cdn.jsdelivr.net/...">` tags (dvc_render/vega.py), so by default the page is
blank offline. This template has no `{scripts}` placeholder (DVC then leaves the CDN tags out) and
carries the three libraries itself, taken from the npm registry's packages (`npm pack`).

    python scripts/build_plots_template.py                 # npm pack vega@5 vega-lite@5 vega-embed@6
    python scripts/build_plots_template.py --from DIR      # use .tgz files already in DIR (offline)

DVC reads it through `.dvc/config` (a path relative to `.dvc/`):

    [plots]
        html_template = plots/offline.html
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"vega": "vega@5", "vega-lite": "vega-lite@5", "vega-embed": "vega-embed@6"}  # load order
OUTPUT = ROOT / ".dvc" / "plots" / "offline.html"
# DVC substitutes these anywhere in the template (dvc_render/html.py); `{scripts}` is left out on purpose.
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- {versions}: inlined by scripts/build_plots_template.py so that the page renders offline -->
{inline_scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def npm_pack(specs: list[str], dest: Path) -> list[Path]:
    """Download the packages' tarballs from the npm registry into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["npm", "pack", *specs, "--json", "--pack-destination", str(dest)],
                         capture_output=True, text=True, check=True, timeout=300)
    return [dest / item["filename"] for item in json.loads(out.stdout)]


def read_bundle(tgz: Path) -> tuple[str, str, str]:
    """(package name, version, browser bundle source) from an npm tarball; the bundle is the file
    the package names for CDNs (`jsdelivr`/`unpkg` in package.json)."""
    with tarfile.open(tgz) as tar:
        meta = json.load(tar.extractfile("package/package.json"))
        entry = meta.get("jsdelivr") or meta.get("unpkg") or f"build/{meta['name']}.min.js"
        source = tar.extractfile(f"package/{entry.lstrip('./')}").read().decode("utf8")
    return meta["name"], meta["version"], source


def inline_script(name: str, source: str) -> str:
    # A literal "</script" would end the element early; "<\/script" is the same string in JS.
    source = source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    # Source maps are not shipped: drop the reference rather than have devtools look for it.
    source = re.sub(r"^//# sourceMappingURL=.*$", "", source, flags=re.MULTILINE)
    found = [p for p in PLACEHOLDERS if p in source]
    if found:  # DVC would substitute them inside the code
        raise SystemExit(f"{name}'s bundle contains DVC template placeholder(s) {found}")
    return f"    <script>\n{source}\n    </script>"


def render(bundles: list[tuple[str, str, str]]) -> str:
    order = list(PACKAGES)
    bundles = sorted(bundles, key=lambda b: order.index(b[0]) if b[0] in order else len(order))
    versions = ", ".join(f"{name} {version}" for name, version, _ in bundles)
    return PAGE.format(versions=versions, inline_scripts="\n".join(inline_script(name, src) for name, _, src in bundles),
                       refresh_tag="{refresh_tag}", plot_divs="{plot_divs}")


def build(output: Path = OUTPUT, tarballs: list[Path] | None = None, cache: Path = ROOT / ".cache" / "npm") -> Path:
    tarballs = tarballs or npm_pack(list(PACKAGES.values()), cache)
    bundles = [read_bundle(t) for t in tarballs]
    missing = set(PACKAGES) - {name for name, _, _ in bundles}
    if missing:
        raise SystemExit(f"missing package tarball(s): {sorted(missing)}")
    page = render(bundles)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page, encoding="utf8")
    return output


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUTPUT, help=f"template to write (default: {OUTPUT.relative_to(ROOT)})")
    p.add_argument("--from", dest="source", type=Path, default=None,
                   help="folder with vega, vega-lite and vega-embed .tgz files (default: download with npm pack)")
    args = p.parse_args(argv)
    tarballs = None
    if args.source:
        tarballs = [t for t in sorted(args.source.glob("*.tgz"))
                    if any(t.name.startswith(f"{name}-") and t.name[len(name) + 1].isdigit() for name in PACKAGES)]
    out = build(args.out, tarballs)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.exit(main())
