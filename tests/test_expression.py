"""Safe expressions: values against numpy, and refusal of everything outside the whitelist."""

import ast
import builtins
import os

import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.mesh.expression import Expression, compile_expression

FIELD = "model.vp"
X, Y = np.meshgrid(np.linspace(-500.0, 500.0, 7), np.linspace(-1000.0, 0.0, 5), indexing="ij")


def ev(text, **arrays):
    return compile_expression(text, FIELD)(**(arrays or {"x": X, "y": Y}))


@pytest.mark.parametrize("text, ref", [
    ("1500.0 - y", lambda x, y: 1500.0 - y),
    ("x + 2*y - 3/4 + x**2 % 7", lambda x, y: x + 2 * y - 3 / 4 + np.mod(x ** 2, 7)),
    ("-x + +y", lambda x, y: -x + y),
    ("2**-3 * x", lambda x, y: 0.125 * x),
    ("sqrt(abs(x)) + exp(y/1000) + log(1 + abs(y)) + log10(2 + x*x)",
     lambda x, y: np.sqrt(abs(x)) + np.exp(y / 1000) + np.log(1 + abs(y))
     + np.log10(2 + x * x)),
    ("sin(x) * cos(y) + tan(x/1000) + tanh(y) + arctan(x)",
     lambda x, y: np.sin(x) * np.cos(y) + np.tan(x / 1000) + np.tanh(y) + np.arctan(x)),
    ("floor(x/100) + ceil(y/300)", lambda x, y: np.floor(x / 100) + np.ceil(y / 300)),
    ("min(x, y) + max(x, 0)", lambda x, y: np.minimum(x, y) + np.maximum(x, 0)),
    ("clip(x, -100, 200)", lambda x, y: np.clip(x, -100, 200)),
    ("where(y < -500, 2000, 1500)", lambda x, y: np.where(y < -500, 2000.0, 1500.0)),
    ("3000 if y < -500 else 1500 + 0.5*x", lambda x, y: np.where(y < -500, 3000, 1500 + 0.5 * x)),
    ("pi * e", lambda x, y: np.full(np.shape(x), np.pi * np.e)),
])
def test_values_match_numpy(text, ref):
    out = ev(text)
    assert out.dtype == np.float64 and out.shape == X.shape
    np.testing.assert_allclose(out, ref(X, Y), rtol=1e-13, atol=1e-9)


def test_comparisons_and_logic_give_zero_one():
    np.testing.assert_array_equal(ev("y < -100.0"), (Y < -100.0).astype(float))
    np.testing.assert_array_equal(ev("-600 < y <= -250"), ((Y > -600) & (Y <= -250)) * 1.0)
    np.testing.assert_array_equal(ev("x == 0"), (X == 0) * 1.0)
    np.testing.assert_array_equal(ev("x != 0"), (X != 0) * 1.0)
    np.testing.assert_array_equal(ev("x >= 0 and y > -500"), ((X >= 0) & (Y > -500)) * 1.0)
    np.testing.assert_array_equal(ev("x > 0 or not y"), ((X > 0) | (Y == 0)) * 1.0)
    np.testing.assert_array_equal(ev("x and 7"), (X != 0) * 1.0)


def test_broadcast_shape_and_constant():
    expr = compile_expression("1500.0", FIELD)
    out = expr(x=np.zeros((3, 1)), y=np.zeros(4))
    assert out.shape == (3, 4) and (out == 1500.0).all() and out.flags.writeable
    assert expr().shape == () and expr() == 1500.0
    assert expr.variables_used == frozenset()
    assert compile_expression("x*y + x", FIELD).variables_used == {"x", "y"}
    assert compile_expression(" 1500.0 - y ", FIELD).text == "1500.0 - y"


def test_expression_is_frozen_and_custom_variables():
    expr = compile_expression("2*r", "f", variables=("r",))
    assert isinstance(expr, Expression) and expr.field == "f"
    np.testing.assert_array_equal(expr(r=np.arange(3.0)), [0.0, 2.0, 4.0])
    with pytest.raises(Exception):
        expr.text = "1"
    with pytest.raises(ConfigError, match=r"^f: name 'x' is not allowed; use r, pi, e$"):
        compile_expression("x", "f", variables=("r",))


def test_non_finite_values_are_reported_with_a_point():
    expr = compile_expression("1/(x-x)", FIELD)
    with pytest.raises(ConfigError) as exc:
        expr(x=np.array([1.0, 2.0]), y=np.array([3.0, 4.0]))
    msg = str(exc.value)
    assert msg.startswith("model.vp: expression '1/(x-x)' gives non-finite values")
    assert "(e.g. at x=1, y=3)" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="non-finite"):
        ev("sqrt(x)")  # negative x -> nan
    with pytest.raises(ConfigError, match=r"^model.vp: .*non-finite"):
        compile_expression("1/0", FIELD)  # constant: refused at compile time


PAYLOADS = [
    ("__import__('os').system('touch {marker}')", "attribute access"),
    ("__import__('os')", "function '__import__' is not allowed"),
    ("x.__class__", "attribute access"),
    ("(lambda: 1)()", "lambda"),
    ("[x for x in y]", "comprehension"),
    ("(x for x in y)", "comprehension"),
    ('"abc"', "strings"),
    ("b'abc'", "bytes"),
    ("f'{x}'", "f-string"),
    ("open('f')", "function 'open' is not allowed"),
    ("eval('1')", "function 'eval' is not allowed"),
    ("x[0]", "subscript"),
    ("9**9**9", "exponent"),
    ("2**1000", "exponent"),
    ("x**-100", "exponent"),
    ("z + 1", "name 'z' is not allowed; use x, y"),
    ("sin", "name 'sin' is not allowed"),
    ("1 +", "invalid expression"),
    ("", "expression is empty"),
    ("   ", "expression is empty"),
    ("x if", "invalid expression"),
    ("(y := 1)", "assignment expression"),
    ("sin(*x)", "starred"),
    ("min(x, y=1)", "keyword arguments"),
    ("sin(x, y)", "takes 1 argument"),
    ("x // 2", "operator '//'"),
    ("x @ y", "operator '@'"),
    ("x in y", "operator 'in'"),
    ("~x", "operator '~'"),
    ("True", "booleans"),
    ("1j", "constant 1j"),
    ("[x, y]", "list"),
    ("sin(x)(y)", "computed function"),
    ("1" * 400, "too large"),
    ("x\x00", "invalid expression"),
    ("sin(" * 60 + "x" + ")" * 60, "nested deeper than 50"),
    ("-" * 999 + "x", "nested deeper than 50"),
    ("+".join(["x"] * 60), "nested deeper than 50"),
    ("(" * 300 + "x" + ")" * 300, "invalid expression"),
    ("x + " * 500, "characters long"),
]


@pytest.mark.parametrize("text, reason", PAYLOADS)
def test_refused(text, reason, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    text = text.replace("{marker}", str(marker))
    calls = []
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(os, "system", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError) as exc:
        compile_expression(text, FIELD)(x=X, y=Y)
    msg = str(exc.value)
    assert msg.startswith("model.vp: ") and "\n" not in msg
    assert reason in msg
    assert not calls and not marker.exists()


def test_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        compile_expression(f"__import__('os').system('touch {marker}')", FIELD)
    assert not marker.exists()


def test_non_string_and_long_text():
    for bad in (1500, 1500.0, None, b"x"):
        with pytest.raises(ConfigError, match=r"^model.vp: expression must be a string"):
            compile_expression(bad, FIELD)
    with pytest.raises(ConfigError, match=r"^model.vp: expression is 2000 characters"):
        compile_expression("x" * 2000, FIELD)
    assert compile_expression("x" + " + 1" * 40, FIELD)(x=np.zeros(2)).tolist() == [40.0, 40.0]


def test_constant_exponents_within_limit_and_variable_exponents():
    np.testing.assert_allclose(ev("2**64 + 0*x"), np.full(X.shape, 2.0 ** 64))
    np.testing.assert_allclose(ev("(x/500)**-2", x=np.array([250.0, 500.0])), [4.0, 1.0])
    with pytest.raises(ConfigError, match="non-finite"):
        ev("10**(x*x)")  # a huge variable exponent overflows to inf: caught at evaluation


def test_no_eval_exec_or_compile_in_source():
    import fwimpi.mesh.expression as mod

    tree = ast.parse(open(mod.__file__).read())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not ({"eval", "exec", "compile", "__import__"} & (names | attrs))
