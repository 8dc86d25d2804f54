"""Write the API reference pages (docs/reference/) and mkdocs.yml's reference nav from the packages' ``__all__``.

Every package or module of ``retain`` that defines ``__all__`` gets one page with one ``::: path`` block per
public name. ``__all__`` is read statically with griffe (nothing is imported: no torch); ``retain.strategies``
builds the rest of its ``__all__`` at import from its files, so its method classes are found the way
``retain.strategies.discover`` finds them: a ``Strategy`` subclass defined in one of the package's modules that
sets its own ``name``. Those blocks name the class where it is defined (``retain.strategies.replay.Replay``):
griffe cannot see a name that only exists after the import.

    python docs/gen_reference.py            # write the pages and the nav
    python docs/gen_reference.py --check    # exit 1, naming the files, if what is committed differs
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
MKDOCS = ROOT / "mkdocs.yml"
NAV_BEGIN = "  # begin reference pages: written by docs/gen_reference.py"
NAV_END = "  # end reference pages"
STRATEGY_BASE = "retain.strategies.base.Strategy"
FAMILY_TITLES = {
    "baseline": "Baselines",
    "replay": "Experience replay",
    "regularization": "Regularization",
    "gradient_projection": "Gradient projection",
    "prototype": "Prototypes",
    "architecture": "Dynamic architecture",
}


@dataclass
class Page:
    """One reference page: a module and the blocks it shows, in sections."""

    module: str
    summary: str
    sections: list[tuple[str | None, list[str]]] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return REFERENCE / f"{self.module}.md"


def load() -> griffe.Module:
    """The ``retain`` package as griffe reads it from ``src/`` (statically)."""
    extensions = griffe.load_extensions(str(DOCS / "griffe_retain.py"))  # as the site reads it (mkdocs.yml)
    package = griffe.load("retain", search_paths=[str(ROOT / "src")], extensions=extensions, resolve_aliases=True,
                          resolve_external=False)
    assert isinstance(package, griffe.Module)
    return package


def modules(module: griffe.Module) -> list[griffe.Module]:
    """``module`` and every module under it, packages before their modules, by name."""
    found = [module]
    for name in sorted(module.modules):
        sub = module.modules[name]
        if not sub.is_alias:
            found.extend(modules(sub))
    return found


def strategy_classes(package: griffe.Module) -> list[griffe.Class]:
    """The method classes ``retain.strategies.discover`` registers, found statically."""
    strategies = package["strategies"]
    base = package[STRATEGY_BASE.removeprefix("retain.")]
    found = []
    for name in sorted(strategies.modules):
        for cls in strategies.modules[name].classes.values():
            if cls.is_alias or "name" not in cls.members:
                continue
            if base in cls.mro():
                found.append(cls)
    return found


def family(cls: griffe.Class) -> str:
    """The ``family`` a strategy class sets or inherits."""
    for owner in [cls, *cls.mro()]:
        if "family" in owner.members:
            value = owner.members["family"].value
            return str(value).strip("'\"")
    raise ValueError(f"{cls.path} has no family")


def public_names(package: griffe.Module) -> dict[str, list[str]]:
    """Every module's public names: its ``__all__`` (for ``retain.strategies`` with the method classes)."""
    names: dict[str, list[str]] = {}
    for module in modules(package):
        if module.exports is None:
            continue
        names[module.path] = [str(name) for name in module.exports]
        if module.path == "retain.strategies":
            names[module.path] += sorted(cls.name for cls in strategy_classes(package))
    return names


def pages(package: griffe.Module) -> list[Page]:
    """One page per module with ``__all__``."""
    found = []
    for module in modules(package):
        if module.exports is None:
            continue
        summary = " ".join(module.docstring.value.strip().split("\n\n")[0].split()) if module.docstring else ""
        page = Page(module.path, summary)
        page.sections.append((None, [f"{module.path}.{name}" for name in module.exports]))
        if module.path == "retain.strategies":
            by_family: dict[str, list[griffe.Class]] = {}
            for cls in strategy_classes(package):
                by_family.setdefault(family(cls), []).append(cls)
            for key, title in FAMILY_TITLES.items():
                classes = sorted(by_family.pop(key, []), key=lambda c: c.name)
                if classes:
                    page.sections.append((title, [cls.path for cls in classes]))
            if by_family:
                raise ValueError(f"strategy families without a title here: {', '.join(by_family)}")
        found.append(page)
    return found


def render_page(page: Page) -> str:
    lines = [f"# `{page.module}`", "", "<!-- Written by docs/gen_reference.py from the module's __all__. -->", ""]
    lines += [f"::: {page.module}", "    options:", "      members: false", "      show_root_heading: false",
              "      show_root_toc_entry: false", ""]
    for title, targets in page.sections:
        level = 2
        if title is not None:
            lines += [f"## {title}", ""]
            level = 3
        for target in targets:
            lines.append(f"::: {target}")
            if level != 2:
                lines += ["    options:", f"      heading_level: {level}"]
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def render_index(found: list[Page]) -> str:
    lines = ["# API reference", "",
             "One page per package or module that declares its public names (`__all__`), written from the",
             "docstrings by `docs/gen_reference.py`. What is not listed here is internal and may change.", "",
             "| module | what it holds |", "| --- | --- |"]
    for page in found:
        summary = page.summary.replace("|", "\\|")
        lines.append(f"| [`{page.module}`]({page.module}.md) | {summary} |")
    return "\n".join(lines) + "\n"


def render_nav(found: list[Page], config: str) -> str:
    """mkdocs.yml with the lines between the reference markers written from the pages."""
    if NAV_BEGIN + "\n" not in config or NAV_END + "\n" not in config:
        raise SystemExit(f"mkdocs.yml: the API reference's nav must sit between the lines {NAV_BEGIN!r} and "
                         f"{NAV_END!r}")
    head, rest = config.split(NAV_BEGIN + "\n", 1)
    _, tail = rest.split(NAV_END + "\n", 1)
    entries = ["      - Overview: reference/index.md"]
    entries += [f"      - {page.module}: reference/{page.module}.md" for page in found]
    return head + NAV_BEGIN + "\n" + "\n".join(entries) + "\n" + NAV_END + "\n" + tail


def render(package: griffe.Module | None = None) -> dict[Path, str]:
    """Every file this script writes, with its text."""
    found = pages(package or load())
    files = {page.path: render_page(page) for page in found}
    files[REFERENCE / "index.md"] = render_index(found)
    files[MKDOCS] = render_nav(found, MKDOCS.read_text())
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    args = parser.parse_args(argv)
    files = render()
    stale = sorted(str(path.relative_to(ROOT)) for path, text in files.items()
                   if not path.exists() or path.read_text() != text)
    written = {path for path in files}
    extra = sorted(str(path.relative_to(ROOT)) for path in REFERENCE.glob("*.md") if path not in written)
    if args.check:
        for name in stale + extra:
            print(f"out of date: {name} (run python docs/gen_reference.py)", file=sys.stderr)
        return 1 if stale or extra else 0
    REFERENCE.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text)
    for name in extra:
        (ROOT / name).unlink()
    print(f"{len(files) - 1} reference files under docs/reference/, nav in mkdocs.yml"
          + (f"; removed {', '.join(extra)}" if extra else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
