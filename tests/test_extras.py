"""A feature whose optional package is missing names the extra to install; a broken install is shown as it is."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retain.extras import MissingExtra, require, require_extra


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("retain_fake_")]:
        del sys.modules[name]


def test_a_missing_package_names_the_extra_in_one_line(packages: Path) -> None:
    with pytest.raises(MissingExtra, match=r"^retain_fake_absent is not installed: pip install 'retain\[tune\]'$"):
        require("retain_fake_absent.filter", "tune")
    with pytest.raises(MissingExtra, match=r"retain_fake_gone is not installed: pip install 'retain\[serve\]'"):
        require_extra("serve", "json", "retain_fake_gone")
    require_extra("serve", "json")  # present: nothing said


def test_an_installed_but_broken_package_is_not_called_missing(packages: Path) -> None:
    (packages / "retain_fake_old").mkdir()
    (packages / "retain_fake_old" / "__init__.py").write_text("raise ImportError('retain_fake_old needs numpy>=99')")
    with pytest.raises(ImportError, match="needs numpy>=99") as caught:
        require("retain_fake_old", "vision")
    assert not isinstance(caught.value, MissingExtra)

    (packages / "retain_fake_native").mkdir()
    (packages / "retain_fake_native" / "__init__.py").write_text("")
    (packages / "retain_fake_native" / "image.py").write_text("import retain_fake_native._compiled")
    with pytest.raises(ModuleNotFoundError) as caught:
        require("retain_fake_native.image", "vision")  # its compiled part is missing, not the package
    assert not isinstance(caught.value, MissingExtra) and caught.value.name == "retain_fake_native._compiled"
