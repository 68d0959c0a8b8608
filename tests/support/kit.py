"""The read-only kit handed to the project, laid beside the checkout as ``../shared``."""

from pathlib import Path

KIT_DIR = Path(__file__).resolve().parents[3] / "shared"
PIXI_SCHEMA = KIT_DIR / "pixi" / "manifest.schema.json"
