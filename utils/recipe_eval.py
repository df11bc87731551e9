"""Bounded arithmetic for recipe `eval(...)` expressions: SparseML's restricted eval computes 9**9**9 without limit.

Allowed: int/float literals, recipe variable names, + - * / // % and unary -/+, ** with |exponent| <= MAX_EXPONENT,
and abs/min/max/round/int/float with positional arguments. Every intermediate result must be finite and within
MAX_MAGNITUDE, and ** is refused *before* it is computed when its result would not be, so no expression can hang.
"""
from __future__ import annotations

import ast
import math
import operator
from typing import Any, Callable

MAX_CHARS = 500  # deeper nesting than this is not a schedule, and ast.parse recursion stays small
MAX_EXPONENT = 64
MAX_MAGNITUDE = 1e15
MAX_ROUND_DIGITS = 20  # round(5, -10**15) would build 10**(10**15)
FUNCTIONS: dict[str, Callable[..., Any]] = {"abs": abs, "float": float, "int": int, "min": min, "max": max,
                                            "round": round}
BINOPS: dict[type, Callable[[Any, Any], Any]] = {ast.Add: operator.add, ast.Sub: operator.sub,
                                                 ast.Mult: operator.mul, ast.Div: operator.truediv,
                                                 ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
ALLOWED = (f"numbers, recipe variables, + - * / // % and ** (|exponent| <= {MAX_EXPONENT}, results within "
           f"{MAX_MAGNITUDE:.0e}) and {'/'.join(FUNCTIONS)}")

Number = int | float


class ExpressionError(ValueError):
    """An eval(...) expression outside the bounded arithmetic recipes may use; the message says what is wrong."""


def bounded_eval(expr: str, lookup: Callable[[str], Number]) -> Number:
    """Value of `expr` (the text inside eval(...)); names resolve through `lookup`, which may raise for unknown ones."""
    text = str(expr).strip()
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"longer than {MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ExpressionError(f"not a valid expression ({e.msg})") from None
    return _eval(tree.body, lookup)


def _checked(value: Any) -> Number:
    """Refuse non-numbers, NaN/inf and magnitudes that further arithmetic could blow up."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ExpressionError(f"{value!r} is not a real number")
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise ExpressionError(f"value {value:.3g} is outside +/-{MAX_MAGNITUDE:.0e}")
    return value


def _power(base: Number, exp: Number) -> Number:
    """base ** exp, refused before computing when the exponent or the result would be too large."""
    if abs(exp) > MAX_EXPONENT:
        raise ExpressionError(f"exponent {exp} exceeds {MAX_EXPONENT}")
    if base not in (0, 1, -1) and exp * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ExpressionError(f"{base} ** {exp} exceeds {MAX_MAGNITUDE:.0e}")
    if base == 0 and exp < 0:
        raise ExpressionError("0 to a negative power")
    return _checked(base ** exp)


def _call(node: ast.Call, lookup: Callable[[str], Number]) -> Number:
    """One of the allowed functions with positional, bounded arguments."""
    name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
    if name not in FUNCTIONS:
        raise ExpressionError(f"function '{name}' is not allowed")
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ExpressionError(f"{name}() takes positional numbers only")
    args = [_eval(a, lookup) for a in node.args]
    if name == "round" and len(args) > 1 and abs(args[1]) > MAX_ROUND_DIGITS:
        raise ExpressionError(f"round() digits {args[1]} exceed {MAX_ROUND_DIGITS}")
    try:
        return _checked(FUNCTIONS[name](*args))
    except (TypeError, ValueError, OverflowError) as e:
        raise ExpressionError(f"{name}(): {e}") from None


def _eval(node: ast.AST, lookup: Callable[[str], Number]) -> Number:
    """Walk the tree, allowing only the nodes listed in the module docstring."""
    if isinstance(node, ast.Constant):
        return _checked(node.value)
    if isinstance(node, ast.Name):
        return _checked(lookup(node.id))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _eval(node.operand, lookup)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and (type(node.op) in BINOPS or isinstance(node.op, ast.Pow)):
        left, right = _eval(node.left, lookup), _eval(node.right, lookup)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        try:
            return _checked(BINOPS[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ExpressionError("division by zero") from None
    if isinstance(node, ast.Call):
        return _call(node, lookup)
    raise ExpressionError(f"unsupported syntax '{ast.unparse(node)}' ({type(node).__name__})")
