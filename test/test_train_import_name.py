"""The training module's sources live in the folder training/ but install as `densehybrid_training` (setup.py's
package_dir): nothing may import it, or run it, under the folder's generic name, which only resolves from the
repository root and would be a second copy of every module."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_nothing_imports_the_folder_name():
    offenders = []
    for folder in ("training", "test", "densehybrid_ros"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names
                              if n.split(".")[0] == "training"]
    assert offenders == []


def test_commands_run_the_installed_name():
    pattern = re.compile(r"-m\s+training\b|[\"']-m[\"'],\s*[\"']training[\"'.]")
    files = [*(ROOT / "training").rglob("*.py"), *(ROOT / "training" / "recipes").glob("*.sh"),
             *(ROOT / "densehybrid_ros").rglob("*.py"), *(ROOT / "test").glob("*.py"),
             ROOT / "Makefile", ROOT / "README.md", ROOT / "DEVELOPERS.md", ROOT / "models" / "README.md"]
    offenders = [f"{path.relative_to(ROOT)}:{i}" for path in files
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
