"""The documentation site builds, covers the public API, and the public API documents its arguments.

The site is built as ``make docs`` builds it (``mkdocs build --strict``: a broken link, a missing page or a
reference mkdocstrings cannot find fails). The reference pages are checked against ``docs/gen_reference.py``
and every name of every ``__all__``; the docstrings against the rule of the project's docstring sections
(read statically with griffe): ``Args`` for every parameter, ``Returns`` (or ``Yields``) for what a function
gives back, ``Attributes`` for a dataclass's or a pydantic model's fields.
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import griffe
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
README_LIMIT = 10_000


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gen = _generator()


@pytest.fixture(scope="module")
def package() -> griffe.Module:
    logging.getLogger("griffe").setLevel(logging.ERROR)  # the docstring rule below reports what matters
    return gen.load()


def test_site_builds_strictly(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    page = (tmp_path / "site" / "reference" / "retain.engine" / "index.html").read_text()
    assert 'id="retain.engine.Learner"' in page and "partial_fit" in page  # the API rendered from the source
    for html in (tmp_path / "site").rglob("*.html"):  # offline: no web font, no CDN
        text = html.read_text()
        for host in ("fonts.googleapis", "fonts.gstatic", "cdn.jsdelivr", "unpkg.com", "cdnjs"):
            assert host not in text, f"{html.relative_to(tmp_path)} loads {host}"


def test_reference_pages_are_what_the_generator_writes(package):
    stale = [str(path.relative_to(ROOT)) for path, text in gen.render(package).items()
             if not path.exists() or path.read_text() != text]
    assert stale == [], "run: python docs/gen_reference.py"
    written = {page.path for page in gen.pages(package)} | {gen.REFERENCE / "index.md"}
    assert sorted(set(gen.REFERENCE.glob("*.md")) - written) == []


def test_every_public_name_has_a_reference_entry(package):
    missing = []
    for module, names in gen.public_names(package).items():
        page = gen.REFERENCE / f"{module}.md"
        text = page.read_text() if page.exists() else ""
        shown = {line.split()[1].rsplit(".", 1)[-1] for line in text.splitlines() if line.startswith("::: ")}
        missing += [f"{module}.{name}" for name in names if name not in shown]
    assert missing == []


def test_strategy_classes_found_statically_are_the_registered_ones(package):
    import retain.strategies

    assert sorted(gen.public_names(package)["retain.strategies"]) == sorted(retain.strategies.__all__)


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text) <= README_LIMIT, f"README.md has {len(text)} characters (at most {README_LIMIT})"
    assert text.startswith("# retain\n") and text.index("make run") < text.index("make test") < text.index("## ")
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        if not (ROOT / target).exists():
            broken.append(target)
    assert broken == []
    assert any(target.startswith("docs/") for target in re.findall(r"\]\(([^)]+)\)", text))


def test_getting_started_names_every_extra():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    page = (ROOT / "docs" / "getting-started.md").read_text()
    assert [name for name in extras if name != "dev" and f"`{name}`" not in page] == []


# The docstring rule (docs: COMMON rule of the project, "Docstrings of the public API").

DATACLASS_DECORATORS = {"dataclass", "dataclasses.dataclass", "pydantic.dataclasses.dataclass", "params",
                        "retain.strategies.base.params"}
RECORD_BASES = {"BaseModel", "pydantic.BaseModel", "NamedTuple", "typing.NamedTuple", "TypedDict",
                "typing.TypedDict"}
# Methods of third-party base classes (griffe does not read torch or pydantic here) that a subclass overrides:
# their documentation is the base's.
EXTERNAL_OVERRIDES = {"forward", "extra_repr", "state_dict", "load_state_dict", "train", "eval", "reset_parameters",
                      "model_post_init"}
GENERATORS = ("Iterator", "Generator", "Iterable", "AsyncIterator", "AsyncGenerator")


def _sections(obj: griffe.Object) -> dict[str, set[str]]:
    """The docstring's sections by kind: the names they list (parameters, attributes) or {""}."""
    found: dict[str, set[str]] = {}
    if obj.docstring is None:
        return found
    for section in obj.docstring.parse(griffe.Parser.google):
        kind = section.kind.value
        if kind in ("parameters", "other parameters", "attributes"):
            names = {item.name.lstrip("*") for item in section.value}
            found.setdefault("attributes" if kind == "attributes" else "parameters", set()).update(names)
        else:
            found.setdefault(kind, set()).add("")
    return found


def _returns_value(func: griffe.Function) -> tuple[bool, bool]:
    """Whether ``func`` gives something back, and whether it yields."""
    annotation = str(func.returns) if func.returns is not None else None
    if annotation is not None:
        generator = annotation.split("[")[0].rsplit(".", 1)[-1] in GENERATORS
        return annotation != "None" and not annotation.startswith("NoReturn"), generator
    try:
        tree = ast.parse(textwrap.dedent(func.source))
    except (SyntaxError, OSError):
        return False, False
    body = tree.body[0]
    returns = yields = False
    stack = list(ast.iter_child_nodes(body))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            returns = True
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            yields = True
        stack.extend(ast.iter_child_nodes(node))
    return returns or yields, yields


def _check_function(func: griffe.Function, method: bool, extra: set[str] | None = None) -> list[str]:
    problems = []
    sections = _sections(func)
    documented = sections.get("parameters", set()) | (extra or set())
    params = [p.name for p in func.parameters]
    if method and params and params[0] in ("self", "cls") and "staticmethod" not in func.labels:
        params = params[1:]
    missing = [name for name in params if name not in documented]
    if missing:
        problems.append("Args: " + ", ".join(missing))
    gives, yields = _returns_value(func)
    if gives and not ({"returns", "yields"} & set(sections)):
        problems.append("Yields" if yields else "Returns")
    return problems


def _is_record(cls: griffe.Class) -> bool:
    for owner in [cls, *cls.mro()]:
        if "dataclass" in owner.labels:
            return True
        if any(d.callable_path in DATACLASS_DECORATORS or str(d.value) in DATACLASS_DECORATORS
               for d in owner.decorators):
            return True
        if any(str(base) in RECORD_BASES or getattr(base, "canonical_path", "") in RECORD_BASES
               for base in owner.bases):
            return True
    return False


def _fields(cls: griffe.Class) -> list[str]:
    """The fields ``cls`` declares itself: its body's annotated names, less class variables and private ones."""
    body = ast.parse(textwrap.dedent(cls.source)).body[0]
    assert isinstance(body, ast.ClassDef)
    return [node.target.id for node in body.body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and not node.target.id.startswith("_") and "ClassVar" not in ast.unparse(node.annotation)]


def _overrides(cls: griffe.Class, name: str) -> bool:
    try:
        bases = cls.mro()
    except ValueError:
        bases = []
    if any(name in base.members for base in bases):
        return True
    external = len(bases) < len(cls.bases) or any(not isinstance(b, str) and b.canonical_path.split(".")[0] != "retain"
                                                    for b in cls.bases if hasattr(b, "canonical_path"))
    return external and name in EXTERNAL_OVERRIDES


def _check_class(cls: griffe.Class) -> list[str]:
    problems = []
    if _is_record(cls):  # its fields are its __init__'s parameters too: either section will do
        listed = _sections(cls).get("attributes", set()) | _sections(cls).get("parameters", set())
        missing = [name for name in _fields(cls) if name not in listed]
        if missing:
            problems.append("Attributes: " + ", ".join(missing))
    elif "__init__" in cls.members and not cls.members["__init__"].is_alias:
        init = cls.members["__init__"]
        problems += [problem for problem in _check_function(init, True, _sections(cls).get("parameters", set()))
                     if problem.startswith("Args")]
    for name, member in cls.members.items():
        if (name.startswith("_") or member.is_alias or not member.is_function
                or "property" in member.labels or _overrides(cls, name)):
            continue
        problems += [f".{name}: {problem}" for problem in _check_function(member, True)]
    return problems


def docstring_problems(package: griffe.Module) -> dict[str, list[str]]:
    """Per module with ``__all__``: each public function or class missing a section, and what it misses."""
    exporters: dict[str, list[str]] = {}
    objects: dict[str, griffe.Object] = {}
    methods = {cls.name: cls for cls in gen.strategy_classes(package)}  # not in the static __all__
    for module, names in gen.public_names(package).items():
        for name in names:
            if module == "retain.strategies" and name in methods:
                obj: griffe.Object | griffe.Alias = methods[name]
            else:
                obj = package[f"{module}.{name}".removeprefix("retain").lstrip(".")]
            target = obj.final_target if obj.is_alias else obj
            exporters.setdefault(target.path, []).append(module)
            objects[target.path] = target
    problems: dict[str, list[str]] = {}
    for path, obj in sorted(objects.items()):
        if obj.is_class:
            found = _check_class(obj)
        elif obj.is_function:
            found = _check_function(obj, False)
        else:
            continue
        if obj.docstring is None:
            found = ["no docstring", *found]
        if found:
            owner = max(exporters[path], key=lambda m: (path.startswith(m + "."), len(m)))
            problems.setdefault(owner, []).extend(f"{path}: {problem}" for problem in found)
    return problems


def test_public_api_docstrings_have_their_sections(package):
    problems = docstring_problems(package)
    lines = []
    for module, found in problems.items():
        lines.append(f"{module}: {len({line.split(':')[0] for line in found})} names miss sections")
        lines += [f"    {line}" for line in found]
    assert not problems, "\n".join(lines)
