"""The package as a user installs it: the wheel with the light core only, in a fresh virtual environment.

One test, about a minute: it builds the wheel and sdist, installs the wheel without extras next to torch
2.13.0 (the CPU wheel make installs), runs ``retain --help``, ``--version`` and the README's ten-line
example there, and checks that each feature of a missing extra names it in one line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import retain

ROOT = Path(__file__).resolve().parents[1]
PIP = ["-m", "pip", "install", "-q", "--disable-pip-version-check"]
EXTRAS = {"serve", "tune", "postgres", "text", "vision", "audio", "llm", "parquet", "hf", "export", "all"}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Pillow comes with matplotlib, a core package, so the vision extra's Pillow is there anyway.
PULLED_BY_CORE = {"pillow"}


def dist_name(requirement: str) -> str:
    """The distribution a requirement names, as pip spells it: ``"uvicorn[standard]>=0.29"`` -> ``"uvicorn"``."""
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def ten_line_example() -> str:
    """The README's ten-line example, as a user would paste it."""
    found = re.search(r"## Library in ten lines\n\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert found, "README.md lost its '## Library in ten lines' example"
    return found.group(1)


def run(*command: str | Path, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=out)
    return out


def test_the_core_wheel_installs_alone_and_runs_the_readme_example(dist: Path, tmp_path: Path) -> None:
    wheel, = dist.glob("retain-*.whl")
    sdist, = dist.glob("retain-*.tar.gz")
    assert wheel.name == f"retain-{retain.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zipped:
        names = set(zipped.namelist())
        metadata = zipped.read(f"retain-{retain.__version__}.dist-info/METADATA").decode()
    assert {"retain/py.typed", "retain/service/static/dashboard.js"} <= names
    assert set(re.findall(r"^Provides-Extra: (\S+)$", metadata, re.M)) >= EXTRAS
    core = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)[^;\n]*$", metadata, re.M)  # no "; extra == ..." marker
    assert {"torch", "numpy", "pydantic", "pyyaml", "safetensors", "matplotlib", "tqdm"} <= {c.lower() for c in core}
    assert not {"fastapi", "optuna", "transformers", "psycopg", "pyarrow"} & {c.lower() for c in core}
    with tarfile.open(sdist) as tar:
        assert f"retain-{retain.__version__}/src/retain/py.typed" in tar.getnames()

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python, cli = venv / "bin" / "python", venv / "bin" / "retain"
    run(python, *PIP, "torch==2.13.0", cwd=tmp_path)  # the CPU wheel on this disk, as make installs it
    run(python, *PIP, wheel, cwd=tmp_path)

    extras_only = {dist_name(r) for extra, reqs in PROJECT["optional-dependencies"].items() if extra != "dev"
                   for r in reqs if not r.startswith("retain[")} - {dist_name(r) for r in PROJECT["dependencies"]}
    installed = run(python, "-c", "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in "
                    "m.distributions()))", cwd=tmp_path).stdout.lower().replace("_", "-").split()
    assert extras_only - PULLED_BY_CORE, "no extra holds a package of its own"
    assert not (extras_only - PULLED_BY_CORE) & set(installed), "the core install pulled extras' packages"
    assert "usage: retain" in run(cli, "--help", cwd=tmp_path).stdout
    assert run(cli, "--version", cwd=tmp_path).stdout.strip() == f"retain {retain.__version__}"

    (tmp_path / "example.py").write_text(ten_line_example())
    accuracies = run(python, "example.py", cwd=tmp_path).stdout.strip().splitlines()[-1]
    values = [float(v) for v in accuracies.strip("[]").split(",")]
    assert len(values) == 5 and all(0.0 <= v <= 1.0 for v in values)
    assert (tmp_path / "model").is_dir()

    # A model store on the core alone: its own data, the default gate (label check included), an update.
    run(cli, "export", "digits", "csv", "--format", "csv", cwd=tmp_path)
    (tmp_path / "loop.yaml").write_text("model: {hidden: [64]}\ntraining: {lr: 0.05, epochs: 5}\n"
                                        "strategies: [{name: replay, memory_size: 200}]\n")
    run(cli, "init", "loop.yaml", "--data", "csv/00/train.csv", "--store", "store", cwd=tmp_path)
    run(cli, "update", "store", "--data", "csv/01/train.csv", cwd=tmp_path)
    assert "2" in run(cli, "versions", "store", cwd=tmp_path).stdout

    for command, extra in ((["serve", "store"], "serve"), (["tune", "config.yaml"], "tune")):
        done = run(cli, *command, cwd=tmp_path, ok=False)
        assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
        assert f"pip install 'retain[{extra}]'" in done.stderr
    imported = run(python, "-c", "import retain.service", cwd=tmp_path, ok=False)
    assert imported.returncode != 0
    assert imported.stderr.strip().splitlines()[-1].endswith("fastapi is not installed: pip install 'retain[serve]'")
