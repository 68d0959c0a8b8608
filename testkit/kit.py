"""Reference data kept in the repository for the tests (see tests/data/pixi/README.md)."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"
PIXI_SCHEMA = DATA_DIR / "pixi" / "manifest.schema.json"
