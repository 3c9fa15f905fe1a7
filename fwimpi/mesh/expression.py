"""Safe arithmetic expressions in the coordinates, e.g. ``"1500.0 - y"`` for a model field.

The coordinates are ``x``, ``y`` in 2D and ``x``, ``y``, ``z`` in 3D (``COORDINATES``; in 3D
z is vertical, up); ``z`` in a 2D expression is an unknown name like any other.

The text is parsed with ``ast.parse(text, mode="eval")``, checked against a whitelist and turned
into a tree of numpy closures; it is never passed to ``eval``, ``exec`` or ``compile``. Literals
become float64, so no Python big-integer arithmetic ever runs. Coordinates are in metres; the
expression's value is in whatever unit the field has (m/s for VP, kg/m^3 for RHO).
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field as dc_field
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from fwimpi.errors import ConfigError

MAX_LENGTH = 1000
MAX_DEPTH = 50
MAX_CONSTANT_EXPONENT = 64.0

CONSTANTS = MappingProxyType({"pi": math.pi, "e": math.e})
#: The coordinate names (variables) of expressions on a mesh of each dimension.
COORDINATES = MappingProxyType({2: ("x", "y"), 3: ("x", "y", "z")})


def coordinate_names(dimension: int) -> tuple[str, ...]:
    """``("x", "y")`` for 2 and ``("x", "y", "z")`` for 3; ValueError otherwise."""
    try:
        return COORDINATES[dimension]
    except (KeyError, TypeError):
        raise ValueError(f"dimension must be 2 or 3, got {dimension!r}") from None


def _logical(a: np.ndarray) -> np.ndarray:
    return np.not_equal(a, 0.0)


def _as_float(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


# name -> (number of arguments, numpy implementation)
FUNCTIONS: Mapping[str, tuple[int, Callable]] = MappingProxyType({
    "sqrt": (1, np.sqrt),
    "exp": (1, np.exp),
    "log": (1, np.log),
    "log10": (1, np.log10),
    "sin": (1, np.sin),
    "cos": (1, np.cos),
    "tan": (1, np.tan),
    "tanh": (1, np.tanh),
    "arctan": (1, np.arctan),
    "abs": (1, np.abs),
    "floor": (1, np.floor),
    "ceil": (1, np.ceil),
    "min": (2, np.minimum),
    "max": (2, np.maximum),
    "where": (3, lambda c, a, b: np.where(_logical(c), a, b)),
    "clip": (3, lambda a, lo, hi: np.minimum(np.maximum(a, lo), hi)),
})

BINARY = MappingProxyType({
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.Pow: np.power,
    ast.Mod: np.mod,
})
UNARY = MappingProxyType({ast.UAdd: np.positive, ast.USub: np.negative})
COMPARE = MappingProxyType({
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
})

# Friendly names of constructs that are refused, for the error message.
_REFUSED = MappingProxyType({
    ast.Attribute: "attribute access",
    ast.Subscript: "a subscript",
    ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.JoinedStr: "an f-string",
    ast.FormattedValue: "an f-string",
    ast.NamedExpr: "an assignment expression (:=)",
    ast.Starred: "a starred argument",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Set: "a set",
    ast.Dict: "a dict",
    ast.Slice: "a slice",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
})


# The whitelist of node types; each has a builder method ``_<TypeName>`` below.
_NODES = frozenset({ast.Constant, ast.Name, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp,
                    ast.IfExp, ast.Call})

_SYMBOLS = MappingProxyType({
    ast.FloorDiv: "//", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^",
    ast.LShift: "<<", ast.RShift: ">>", ast.Invert: "~", ast.Is: "is", ast.IsNot: "is not",
    ast.In: "in", ast.NotIn: "not in"})


def _op_name(op: ast.AST) -> str:
    return f"operator '{_SYMBOLS.get(type(op), type(op).__name__)}'"


def _short(text: str, limit: int = 80) -> str:
    """One-line excerpt of ``text`` for an error message."""
    one = "".join(c if c.isprintable() else " " for c in text)
    one = " ".join(one.split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


@dataclass(frozen=True)
class _Node:
    """A compiled subexpression: ``fn(env)`` evaluates it; ``const`` is set when it has no
    variables (then it was folded at compile time)."""

    fn: Callable[[dict], np.ndarray]
    const: float | None = None


def _constant(value: float) -> _Node:
    v = np.float64(value)
    return _Node(lambda env: v, float(v))


class _Compiler:
    """Validates an AST against the whitelist and builds closures over numpy."""

    def __init__(self, text: str, field: str, variables: tuple[str, ...]):
        self.text, self.field, self.variables = text, field, variables
        self.used: set[str] = set()

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.field}: {what} in expression '{_short(self.text)}'")

    def build(self, node: ast.AST) -> _Node:
        if type(node) not in _NODES:
            what = _REFUSED.get(type(node), type(node).__name__)
            raise self.fail(f"{what} is not allowed")
        out = getattr(self, "_" + type(node).__name__)(node)
        if out.const is None and self._all_const(node):
            # Fold constant subexpressions now (float64 only, so cheap and bounded).
            with np.errstate(all="ignore"):
                out = _constant(_as_float(out.fn({})))
        return out

    def _all_const(self, node: ast.AST) -> bool:
        return not any(isinstance(n, ast.Name) and n.id in self.variables
                       for n in ast.walk(node))

    def _Constant(self, node: ast.Constant) -> _Node:
        v = node.value
        if type(v) not in (int, float):
            kind = {str: "strings", bytes: "bytes", bool: "booleans"}.get(type(v))
            raise self.fail(f"{kind or f'constant {v!r}'} {'are' if kind else 'is'} not allowed")
        try:
            return _constant(float(v))
        except OverflowError:
            raise self.fail(f"literal {_short(str(v), 20)} is too large") from None

    def _Name(self, node: ast.Name) -> _Node:
        if node.id in self.variables:
            self.used.add(node.id)
            name = node.id
            return _Node(lambda env: env[name])
        if node.id in CONSTANTS:
            return _constant(CONSTANTS[node.id])
        allowed = ", ".join(self.variables + tuple(CONSTANTS))
        raise ConfigError(f"{self.field}: name '{node.id}' is not allowed; use {allowed}")

    def _BinOp(self, node: ast.BinOp) -> _Node:
        op = BINARY.get(type(node.op))
        if op is None:
            raise self.fail(f"{_op_name(node.op)} is not allowed")
        left, right = self.build(node.left), self.build(node.right)
        if op is np.power and right.const is not None and not (
                abs(right.const) <= MAX_CONSTANT_EXPONENT):
            raise self.fail(f"exponent {right.const:g} is too large "
                            f"(at most {MAX_CONSTANT_EXPONENT:g})")
        lf, rf = left.fn, right.fn
        return _Node(lambda env: op(lf(env), rf(env)))

    def _UnaryOp(self, node: ast.UnaryOp) -> _Node:
        f = self.build(node.operand).fn
        if isinstance(node.op, ast.Not):
            return _Node(lambda env: _as_float(np.logical_not(_logical(f(env)))))
        op = UNARY.get(type(node.op))
        if op is None:
            raise self.fail(f"{_op_name(node.op)} is not allowed")
        return _Node(lambda env: op(f(env)))

    def _Compare(self, node: ast.Compare) -> _Node:
        ops = []
        for o in node.ops:
            if type(o) not in COMPARE:
                raise self.fail(f"{_op_name(o)} is not allowed")
            ops.append(COMPARE[type(o)])
        fns = [self.build(n).fn for n in [node.left, *node.comparators]]

        def run(env):
            vals = [f(env) for f in fns]
            out = ops[0](vals[0], vals[1])
            for k in range(1, len(ops)):
                out = np.logical_and(out, ops[k](vals[k], vals[k + 1]))
            return _as_float(out)

        return _Node(run)

    def _BoolOp(self, node: ast.BoolOp) -> _Node:
        fns = [self.build(n).fn for n in node.values]
        op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or

        def run(env):
            out = _logical(fns[0](env))
            for f in fns[1:]:
                out = op(out, _logical(f(env)))
            return _as_float(out)

        return _Node(run)

    def _IfExp(self, node: ast.IfExp) -> _Node:
        c, a, b = (self.build(n).fn for n in (node.test, node.body, node.orelse))
        return _Node(lambda env: np.where(_logical(c(env)), a(env), b(env)))

    def _Call(self, node: ast.Call) -> _Node:
        if not isinstance(node.func, ast.Name):
            what = _REFUSED.get(type(node.func), "a call of a computed function")
            raise self.fail(f"{what} is not allowed")
        name = node.func.id
        if name not in FUNCTIONS:
            raise self.fail(f"function '{name}' is not allowed (allowed: "
                            f"{', '.join(FUNCTIONS)})")
        if node.keywords:
            raise self.fail(f"keyword arguments to '{name}' are not allowed")
        nargs, fn = FUNCTIONS[name]
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail("a starred argument is not allowed")
        if len(node.args) != nargs:
            raise self.fail(f"'{name}' takes {nargs} argument(s), got {len(node.args)}")
        args = [self.build(a).fn for a in node.args]
        return _Node(lambda env: fn(*(a(env) for a in args)))


def _depth(tree: ast.AST) -> int:
    """Nesting depth of expression nodes, computed without recursion."""
    deepest, stack = 0, [(tree, 0)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, ast.expr):
            d += 1
            deepest = max(deepest, d)
        stack.extend((child, d) for child in ast.iter_child_nodes(node))
    return deepest


@dataclass(frozen=True)
class Expression:
    """A validated expression; call it with coordinate arrays (metres) as keywords.

    ``expr(x=x, y=y)`` returns a float64 array of the broadcast shape of the given arrays.
    """

    text: str
    field: str
    variables_used: frozenset
    variables: tuple = ("x", "y")
    _root: _Node = dc_field(default=None, repr=False, compare=False)

    def __reduce__(self):
        """Pickled as its text: compiled again (and checked again) when unpickled."""
        return compile_expression, (self.text, self.field, self.variables)

    def __call__(self, **arrays) -> np.ndarray:
        unknown = set(arrays) - set(self.variables)
        if unknown:
            raise TypeError(f"unknown variable(s) {sorted(unknown)}; expected {self.variables}")
        missing = self.variables_used - set(arrays)
        if missing:
            raise TypeError(f"{self.field}: expression '{_short(self.text)}' needs "
                            f"{', '.join(sorted(missing))}")
        env = {k: _as_float(v) for k, v in arrays.items()}
        shape = np.broadcast_shapes(*(v.shape for v in env.values()))
        with np.errstate(all="ignore"):
            out = np.array(np.broadcast_to(_as_float(self._root.fn(env)), shape),
                           dtype=np.float64)
        bad = ~np.isfinite(out)
        if bad.any():
            where = ""
            if env:
                i = np.unravel_index(np.argmax(bad), shape)
                at = ", ".join(f"{k}={np.broadcast_to(env[k], shape)[i]:.6g}"
                               for k in self.variables if k in env)
                where = f" (e.g. at {at})"
            raise ConfigError(f"{self.field}: expression '{_short(self.text)}' gives "
                              f"non-finite values{where}")
        return out

    def at(self, points: np.ndarray) -> np.ndarray:
        """Values ``(P,)`` at ``points (P, k)`` whose columns are ``variables`` in order
        (``(P, 2)`` for x, y; ``(P, 3)`` for x, y, z), metres. ValueError on another shape."""
        p = np.asarray(points, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.variables):
            raise ValueError(f"{self.field}: points must have shape (n, {len(self.variables)}) "
                             f"for {', '.join(self.variables)}, got {p.shape}")
        return self(**{k: p[:, a] for a, k in enumerate(self.variables)})


def compile_expression(text: str, field: str,
                       variables: tuple[str, ...] = ("x", "y")) -> Expression:
    """Parse and validate ``text`` (see module docstring); errors are ConfigError naming field.

    ``variables``: the names the expression may use, ``coordinate_names(dim)`` for a model
    or region of interest on a mesh of dimension ``dim`` (x, y by default).

    A constant expression that is non-finite (``"1/0"``) is refused here; others are checked
    for non-finite values when called.
    """
    if not isinstance(text, str):
        raise ConfigError(f"{field}: expression must be a string such as '1500.0 - y', "
                          f"got {type(text).__name__} {_short(repr(text), 40)}")
    if len(text) > MAX_LENGTH:
        raise ConfigError(f"{field}: expression is {len(text)} characters long "
                          f"(at most {MAX_LENGTH})")
    stripped = text.strip()
    if not stripped:
        raise ConfigError(f"{field}: expression is empty")
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        raise ConfigError(f"{field}: invalid expression '{_short(stripped)}': "
                          f"{exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        reason = str(exc) or type(exc).__name__
        raise ConfigError(f"{field}: invalid expression '{_short(stripped)}': "
                          f"{reason}") from None
    if _depth(tree.body) > MAX_DEPTH:
        raise ConfigError(f"{field}: expression '{_short(stripped)}' is nested deeper "
                          f"than {MAX_DEPTH} levels")
    compiler = _Compiler(stripped, field, tuple(variables))
    root = compiler.build(tree.body)
    if root.const is not None and not math.isfinite(root.const):
        raise ConfigError(f"{field}: expression '{_short(stripped)}' gives non-finite "
                          f"value {root.const}")
    return Expression(stripped, field, frozenset(compiler.used), tuple(variables), root)
