"""Packages depend one way: ``collector/`` (servers, queues, storage, CLI) builds on
``processors/`` (redaction, sampling, cardinality, span metrics, and the types and units
they share), never the reverse. Checked on the source, so a new import fails here first."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_processors_never_import_collector() -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if m.split(".")[0] == "collector")
                 for path in sorted((ROOT / "processors").rglob("*.py"))}  # fmt: skip
    offenders = {path: modules for path, modules in offenders.items() if modules}
    assert not offenders, f"processors/ imports collector/: {offenders}"


def test_the_check_sees_imports(tmp_path: Path) -> None:
    """The walk finds an import wherever it is written, so the test above can fail."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\ndef f():\n    from collector.config import Settings\n")
    assert imported_modules(sample) == {"os", "collector.config"}
