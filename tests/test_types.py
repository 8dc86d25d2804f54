"""The package type-checks (mypy, configured in pyproject.toml), and so does a user's code written against it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .test_packaging import ten_line_example

ROOT = Path(__file__).resolve().parents[1]


def mypy(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mypy", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=900)


def test_the_package_type_checks() -> None:
    done = mypy(cwd=ROOT)  # files, strictness and the untyped third-party packages: [tool.mypy] in pyproject.toml
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]


def test_the_readme_example_type_checks_strictly_as_user_code(tmp_path: Path) -> None:
    (tmp_path / "example.py").write_text(ten_line_example())
    done = mypy("--strict", "--follow-imports=silent", "--cache-dir", tmp_path / "cache", "example.py", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-5000:]
