"""No module-level switch in feq_lab/models changes what a forward pass computes.

Implementations are chosen at construction (`ModelOptions`, `compile_for_inference`), so:
- no module-level boolean exists in feq_lab/models (a boolean at module level is a switch);
- the module-level numbers are constants (facts such as BN_EPS, or thresholds of the compiler's
  choices): nothing in the package, its tests or benches assigns one from outside
  (`module.NAME = ...`), nor rebinds one inside its module (`global NAME`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import feq_lab

PACKAGE = Path(feq_lab.__file__).parent
MODELS = PACKAGE / "models"
REPO = PACKAGE.parent


def _module_constants(path: Path) -> dict[str, object]:
    """Module-level names bound to a bool/int/float literal (possibly negated)."""
    out: dict[str, object] = {}
    for node in ast.parse(path.read_text()).body:
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        if isinstance(value, ast.UnaryOp):
            value = value.operand
        if isinstance(value, ast.Constant) and isinstance(value.value, (bool, int, float)):
            out.update({t.id: value.value for t in targets if isinstance(t, ast.Name)})
    return out


def _model_sources() -> list[Path]:
    return sorted(MODELS.rglob("*.py"))


def test_no_module_level_booleans_in_models():
    switches = [
        f"{path.relative_to(REPO)}: {name} = {value}"
        for path in _model_sources()
        for name, value in _module_constants(path).items()
        if isinstance(value, bool)
    ]
    assert not switches, "module-level switches: " + ", ".join(switches)


def test_module_level_numbers_are_never_reassigned():
    names = {name for path in _model_sources() for name in _module_constants(path)}
    assert "BN_EPS" in names  # the scan sees the constants it guards
    offenders = []
    for folder in ("feq_lab", "tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    offenders += [
                        f"{path.relative_to(REPO)}:{node.lineno} .{t.attr}"
                        for t in targets
                        if isinstance(t, ast.Attribute) and t.attr in names
                    ]
                elif isinstance(node, ast.Global) and MODELS in path.parents:
                    offenders += [
                        f"{path.relative_to(REPO)}:{node.lineno} global {n}"
                        for n in node.names
                        if n in names
                    ]
                elif (  # monkeypatch.setattr(module, "NAME", ...)
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "setattr"
                    and len(node.args) >= 2
                    and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in names
                ):
                    offenders.append(
                        f"{path.relative_to(REPO)}:{node.lineno} setattr {node.args[1].value}"
                    )
    assert not offenders, "module constants of feq_lab/models reassigned: " + ", ".join(offenders)
