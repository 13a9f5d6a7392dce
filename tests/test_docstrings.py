"""Every public function of service/ says what it returns and what it refuses (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[1] / "service"


def undocumented(root: Path) -> list[str]:
    """``path:line name`` of each function or method under ``root`` whose name does not start
    with ``_`` and that has no docstring, nested functions and properties included."""
    missing = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and not node.name.startswith("_")
                and ast.get_docstring(node) is None
            ):
                missing.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.name}")
    return missing


def test_every_public_service_function_has_a_docstring() -> None:
    missing = undocumented(SERVICE)
    assert not missing, "public functions without a docstring:\n" + "\n".join(missing)


def test_the_check_finds_a_missing_docstring(tmp_path: Path) -> None:
    package = tmp_path / "service"
    package.mkdir()
    (package / "m.py").write_text(
        'def told() -> None:\n    """Why."""\n\n\n'
        "def untold() -> None:\n    pass\n\n\n"
        "def _private() -> None:\n    pass\n\n\n"
        "class C:\n    @property\n    def size(self) -> int:\n        return 1\n"
    )
    assert undocumented(package) == ["service/m.py:5 untold", "service/m.py:15 size"]
