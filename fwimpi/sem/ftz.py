"""Flush-to-zero: subnormal floats are treated as zero by the CPU (as SPECFEM2D does).

A wave field that starts from rest and later decays holds, ahead of its numerical front and
in its tail, many values below the smallest normal double (``2.2250738585072014e-308``).
Many x86 processors (Intel's cores in particular) compute with such subnormal (denormal)
operands and results in microcode assists, up to ~100 times slower than with normal ones; a
time loop slows down by that much at the points that hold them.

``flush_denormals()`` sets, for the calling thread, the FTZ bit (results that would be
subnormal become 0) and the DAZ bit (subnormal inputs are read as 0) of MXCSR, bits 15 and 6
on x86-64; on aarch64 the FZ bit (24) of FPCR, which does both. It needs no C compiler: the
register is read and written through LLVM intrinsics (``llvm.x86.sse.stmxcsr`` /
``llvm.x86.sse.ldmxcsr``, ``llvm.aarch64.get.fpcr`` / ``llvm.aarch64.set.fpcr``) in a tiny
numba function. On any other platform it does nothing and returns False.

The state belongs to the thread and lasts until changed: numpy, Python floats and every
numba kernel called afterwards from the same thread flush (numba's compiler does not reset
it; threads started afterwards inherit it on Linux). ``WaveSolver`` calls it when it is
built, so each rank's time loops run with it.

Effect on results: a value whose magnitude would lie below ~2.2e-308 becomes 0, so results
change only there, far below the round-off of any value that matters: forward traces with and
without flushing are equal to round-off (differences ~1e-298 on traces of size ~100 in
``tests/test_ftz.py``, where the run without flushing holds hundreds of subnormal points).

Effect on speed (``scripts/bench_forward.py``, full 2 s of the tutorial, one core): the
2-core test machine is an AMD EPYC (Zen 4), whose FPU handles subnormals at almost full
speed: a run holds them only ahead of the numerical front during its first ~1300 steps (up to
~2% of the points of the 4x-refined mesh), and rates with and without flushing are equal
within the run-to-run noise (tutorial mesh ~225 M, refined mesh ~133 M point-updates/s,
either way). The refined mesh's lower rate there comes from its working set (~40 MB of point
arrays, beyond the caches): the rate falls smoothly with the mesh size (225, 196, 166, 141 M
for refinements 1 to 4). On Intel cores a subnormal operand or result costs a microcode
assist of ~100+ cycles; there the flags remove that cost.

Side effect for the whole thread: arithmetic no longer produces or reads subnormal numbers,
e.g. ``5e-324 * 1e300 == 0.0`` (constants and copies keep them). On a platform where the
register cannot be set (or numba fails to compile the intrinsic) nothing changes and
``flush_denormals`` returns False.
"""

from __future__ import annotations

import platform
from types import MappingProxyType

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: MXCSR (x86-64): flush-to-zero (bit 15) and denormals-are-zero (bit 6)
MXCSR_FTZ, MXCSR_DAZ = 1 << 15, 1 << 6
#: FPCR (aarch64): flush-to-zero (bit 24), for inputs and results alike
FPCR_FZ = 1 << 24

_MACHINE = platform.machine().lower()
if _MACHINE in ("x86_64", "amd64"):
    ARCH = "x86_64"
    _BITS = MXCSR_FTZ | MXCSR_DAZ
elif _MACHINE in ("aarch64", "arm64"):
    ARCH = "aarch64"
    _BITS = FPCR_FZ
else:
    ARCH = None
    _BITS = 0


# ---------------------------------------------------------------- the register, per platform

def _x86_read(builder) -> ir.Value:
    """MXCSR (i32) through a stack slot: ``stmxcsr`` stores it there."""
    i32 = ir.IntType(32)
    slot = cgutils.alloca_once(builder, i32)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t]),
        "llvm.x86.sse.stmxcsr")
    builder.call(fn, [builder.bitcast(slot, cgutils.voidptr_t)])
    return builder.zext(builder.load(slot), ir.IntType(64))


def _x86_write(builder, value: ir.Value) -> None:
    i32 = ir.IntType(32)
    slot = cgutils.alloca_once(builder, i32)
    builder.store(builder.trunc(value, i32), slot)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t]),
        "llvm.x86.sse.ldmxcsr")
    builder.call(fn, [builder.bitcast(slot, cgutils.voidptr_t)])


def _aarch64_read(builder) -> ir.Value:
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.IntType(64), []), "llvm.aarch64.get.fpcr")
    return builder.call(fn, [])


def _aarch64_write(builder, value: ir.Value) -> None:
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(64)]),
        "llvm.aarch64.set.fpcr")
    builder.call(fn, [value])


_READ = MappingProxyType({"x86_64": _x86_read, "aarch64": _aarch64_read})
_WRITE = MappingProxyType({"x86_64": _x86_write, "aarch64": _aarch64_write})


@intrinsic
def _read_register(typingctx):
    """The floating-point control register (MXCSR or FPCR) as uint64."""
    def codegen(context, builder, signature, args):
        return _READ[ARCH](builder)
    return types.uint64(), codegen


@intrinsic
def _write_register(typingctx, value):
    """Load ``value`` (uint64) into the floating-point control register."""
    if not isinstance(value, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        _WRITE[ARCH](builder, context.cast(builder, args[0], signature.args[0], types.uint64))
        return context.get_dummy_value()
    return types.none(value), codegen


@numba.njit(cache=True)
def _get_register():
    return _read_register()


@numba.njit(cache=True)
def _set_bits(bits, on):
    """Set (``on``) or clear ``bits`` of the control register; returns its new value."""
    value = _read_register()
    value = (value | bits) if on else (value & ~bits)
    _write_register(value)
    return _read_register()


# ---------------------------------------------------------------- the API

def flush_denormals(enabled: bool = True) -> bool:
    """Set (or with ``enabled=False`` clear) flush-to-zero and denormals-are-zero for the
    calling thread. True when the platform supports it (x86-64, aarch64) and the bits are
    now as asked; False (nothing changed) elsewhere."""
    if ARCH is None:
        return False
    try:
        value = int(_set_bits(numba.uint64(_BITS), bool(enabled)))
    except Exception:  # noqa: BLE001 - an LLVM without the intrinsic: a no-op, never fatal
        return False
    return (value & _BITS == _BITS) if enabled else (value & _BITS == 0)


def denormals_flushed() -> bool:
    """True when the calling thread flushes subnormals to zero (all of the platform's bits
    set); False when not, or on a platform without support."""
    value = control_register()
    return value is not None and value & _BITS == _BITS


def control_register() -> int | None:
    """The raw MXCSR (x86-64) or FPCR (aarch64) of the calling thread; None elsewhere."""
    if ARCH is None:
        return None
    try:
        return int(_get_register())
    except Exception:  # noqa: BLE001 - as in flush_denormals
        return None
