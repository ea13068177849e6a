"""Threshold expressions over a unit's registry values: ``max(110, 100 + 7500 / rated_load_kg)``.

A catalogue threshold that depends on the unit is written as arithmetic an inspector can read,
not hidden in code. Allowed: numbers, the registry columns of :data:`UNIT_ATTRS`, ``+ - * /``,
``min(...)``, ``max(...)`` and ``first(a, b, ...)`` (the first value that is known). An unknown
registry value makes the whole expression unknown, and the rule's ``default`` is used instead
(the alert then says so). Expressions are evaluated once per unit, never per reading.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from sesmon.contract.registry import RATED_PARAMETERS

#: Registry columns a threshold may use (DESIGN.md §3 rated parameters, plus per-boiler limits).
UNIT_ATTRS: tuple[str, ...] = tuple(RATED_PARAMETERS)
FUNCS = ("min", "max", "first")
_BINOPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class ExprError(ValueError):
    """The expression uses something other than numbers, unit attributes and the allowed functions."""


def parse(text: str) -> ast.expr:
    """Parse and check an expression; raises :class:`ExprError` naming what is not allowed."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise ExprError(f"cannot parse {text!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in UNIT_ATTRS and node.id not in FUNCS:
                raise ExprError(f"unknown unit attribute {node.id!r} (known: {', '.join(UNIT_ATTRS)})")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCS or node.keywords:
                raise ExprError(f"only {', '.join(FUNCS)}(...) may be called in {text!r}")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise ExprError(f"{node.value!r} is not a number")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise ExprError(f"operator {type(node.op).__name__} is not allowed (use + - * /)")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise ExprError("only unary minus is allowed")
        elif not isinstance(node, ast.expr_context | ast.operator | ast.unaryop):
            raise ExprError(f"{type(node).__name__} is not allowed in {text!r}")
    return tree


def names(text: str) -> set[str]:
    """Unit attributes an expression reads."""
    return {n.id for n in ast.walk(parse(text)) if isinstance(n, ast.Name) and n.id in UNIT_ATTRS}


def evaluate(tree: ast.expr, unit: Any) -> float | None:
    """Value of a parsed expression for ``unit`` (None when a value it needs is unknown)."""
    if isinstance(tree, ast.Constant):
        return float(tree.value)
    if isinstance(tree, ast.Name):
        raw = getattr(unit, tree.id, None) if unit is not None else None
        return None if raw is None else float(raw)
    if isinstance(tree, ast.UnaryOp):
        x = evaluate(tree.operand, unit)
        return None if x is None else (-x if isinstance(tree.op, ast.USub) else x)
    if isinstance(tree, ast.BinOp):
        a, b = evaluate(tree.left, unit), evaluate(tree.right, unit)
        if a is None or b is None or (isinstance(tree.op, ast.Div) and b == 0):
            return None
        return _BINOPS[type(tree.op)](a, b)
    if isinstance(tree, ast.Call):
        assert isinstance(tree.func, ast.Name)
        args = [evaluate(a, unit) for a in tree.args]
        if tree.func.id == "first":
            return next((a for a in args if a is not None), None)
        if any(a is None for a in args) or not args:
            return None
        return min(args) if tree.func.id == "min" else max(args)  # type: ignore[type-var]
    raise ExprError(f"cannot evaluate {ast.dump(tree)}")
