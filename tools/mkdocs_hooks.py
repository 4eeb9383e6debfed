"""MkDocs hooks of the docs site (mkdocs.yml): pages made from files outside docs/ and from the packages' API.

- ``index.md`` is README.md, its links into ``docs/`` made relative to the site's root;
- ``figures/`` (the theory figures and their index, drawn by ``qtm figures``) is copied in as it is;
- ``api/PACKAGE.md`` documents each name of ``PACKAGE.__all__`` (mkdocstrings), under its defining module.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("qtm", "chain", "validate")


def _api_page(package: str) -> str:
    module = importlib.import_module(package)
    lines = [f"# `{package}`", "", f"::: {package}", "    options:", "      members: false",
             "      show_root_heading: false", ""]
    for name in module.__all__:
        home = getattr(module, name).__module__
        lines += [f"::: {home}.{name}", ""]
    return "\n".join(lines)


def on_files(files, config):
    readme = (REPO / "README.md").read_text()
    readme = re.sub(r"\]\(docs/", "](", readme)
    files.append(File.generated(config, "index.md", content=readme))
    for path in sorted((REPO / "figures").glob("*")):
        if path.suffix in (".png", ".md"):
            files.append(File.generated(config, f"figures/{path.name}", abs_src_path=str(path)))
    for package in PACKAGES:
        files.append(File.generated(config, f"api/{package}.md", content=_api_page(package)))
    return files
