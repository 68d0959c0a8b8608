"""``make screenshots`` (scripts/screenshots.py) run into a temporary folder: it makes the
pictures the README shows, at desktop and phone width, and writes nothing else."""

from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path

from testkit.processes import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "screenshots.py"
SHOWN = PROJECT_ROOT / "docs" / "ui"
WIDTHS = {"desktop": 1280, "phone": 390}
PICTURE = re.compile(r"docs/ui/[^)\s\]\"']+\.png")


def readme_pictures() -> list[str]:
    """The ``docs/ui/*.png`` the README names, by their names in the folder."""
    named = PICTURE.findall((PROJECT_ROOT / "README.md").read_text())
    return [name.removeprefix("docs/ui/") for name in named]


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (its IHDR chunk comes first)."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_make_screenshots_makes_every_picture_the_readme_shows(
    browser_available: None, tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
    assert spec is not None and spec.loader is not None
    screenshots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshots)

    assert screenshots.main(tmp_path) == 0
    made = sorted(path.name for path in tmp_path.iterdir())
    assert made == sorted(path.name for path in SHOWN.glob("*.png"))
    assert set(readme_pictures()) <= set(made)
    for name in made:
        page, _, label = name.removesuffix(".png").rpartition("-")
        width, height = png_size(tmp_path / name)
        assert width == WIDTHS[label] and height > 0, (page, label, width, height)
    pages = {name.removesuffix(".png").rpartition("-")[0] for name in made}
    assert {"sign-in", "environments", "environment", "job", "history"} <= pages
    assert len(made) == 2 * len(pages)  # each page at both widths


def test_every_picture_the_readme_names_is_in_docs_ui() -> None:
    named = readme_pictures()
    assert len(named) >= 2 * 9, named  # the README's table: 9 pages at both widths
    missing = [name for name in named if not (SHOWN / name).is_file()]
    assert not missing, f"README.md names pictures that docs/ui/ lacks: {missing}"
