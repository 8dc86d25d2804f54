"""The package type-checks strictly (mypy, [tool.mypy] in pyproject.toml), and so does a user's code written against
it: the README's ten-line example is checked in the same run, under the same strict settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .test_packaging import ten_line_example

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_and_the_readme_example_type_check_strictly(tmp_path: Path) -> None:
    example = tmp_path / "readme_example.py"
    example.write_text(ten_line_example())
    done = subprocess.run([sys.executable, "-m", "mypy", "src/retain", str(example)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]
    assert "Success" in done.stdout
