"""mkdocs hook: every page in ``docs/bridges/`` joins the "Bridges" section of the nav, and the
``<!-- bridge-pages -->`` marker in ``bridges/index.md`` becomes a list of links to them.

The ``<!-- bridge-api -->`` marker in ``api.md`` becomes one mkdocstrings entry per public name of
``breccia.bridges`` (read from its ``_EXPORTS`` table), so the API reference follows the code.

Each bridge engineer writes ``docs/bridges/<bridge>.md``; nothing else has to change for it to appear.
The title of a page is its first ``# `` heading.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "<!-- bridge-pages -->"
API_MARKER = "<!-- bridge-api -->"


def _bridge_pages(docs_dir: Path) -> list[tuple[str, str]]:
    pages = []
    for path in sorted((docs_dir / "bridges").glob("*.md")):
        if path.name == "index.md":
            continue
        title = path.stem
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                title = line[2:].strip()
                break
        pages.append((title, f"bridges/{path.name}"))
    return pages


def on_config(config, **kwargs):
    pages = _bridge_pages(Path(config["docs_dir"]))
    for entry in config["nav"]:
        if isinstance(entry, dict) and "Bridges" in entry:
            entry["Bridges"] = [entry["Bridges"][0], *({title: page} for title, page in pages)]
    return config


def _bridge_api() -> str:
    from importlib.util import find_spec

    from breccia import bridges

    entries = []
    for name in sorted(bridges.__all__):
        module = bridges._EXPORTS[name]
        if find_spec(f"breccia.bridges.{module}") is None:  # announced but not written yet
            continue
        entries.append(
            f"::: breccia.bridges.{module}.{name}\n"
            "    options:\n"
            "      show_root_heading: true\n"
            "      show_root_full_path: false\n"
            "      heading_level: 3\n"
        )
    return "\n".join(entries) or "*(no bridges yet)*"


def on_page_markdown(markdown, page, config, files, **kwargs):
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, _bridge_api())
    if MARKER not in markdown:
        return markdown
    pages = _bridge_pages(Path(config["docs_dir"]))
    links = "\n".join(f"- [{title}]({Path(page).name})" for title, page in pages)
    return markdown.replace(MARKER, links or "*(no bridge pages yet)*")
