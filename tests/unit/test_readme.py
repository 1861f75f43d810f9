"""The README's configuration table is the one the code describes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from config_table import table  # noqa: E402


def test_readme_config_table_matches_the_flags() -> None:
    readme = (ROOT / "README.md").read_text()
    assert table() in readme, "regenerate the table with: python scripts/config_table.py"
