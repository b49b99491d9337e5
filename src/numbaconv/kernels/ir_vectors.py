"""LLVM IR helpers for the kernels written as Numba intrinsics: one vector register's type for
an array's dtype (AVX-512: 16 float32 / 8 float64 lanes), lane masks, masked loads and stores,
shuffles, splats and fused multiply-adds; a switch over compiled variants of a code block."""

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba.core import cgutils

from numbaconv._jit import vector_bytes

_VBYTES = vector_bytes()

# The AVX-512 lane shift below is inline assembly, which LLVM must parse when it compiles it
# (Numba registers only the code generator; registering the parser has no other effect).
llvm.initialize_native_asmparser()


class Vectors:
    """IR helpers for one float array type: vector type, lane masks, addressed loads/stores."""

    def __init__(self, context, builder, arr_ty):
        self.builder = builder
        self.context = context
        self.fty = context.get_value_type(arr_ty.dtype)
        self.isz = context.get_abi_sizeof(self.fty)
        self.lanes = _VBYTES // self.isz
        self.vty = ir.VectorType(self.fty, self.lanes)
        self.sfx = "f32" if self.isz == 4 else "f64"
        self.i64 = ir.IntType(64)
        self.i32 = ir.IntType(32)

    def ptr(self, arr_ty, arr, off):
        data = self.context.make_array(arr_ty)(self.context, self.builder, arr).data
        return self.builder.gep(data, [self.as64(off)])

    def as64(self, v):
        if isinstance(v, int):
            return ir.Constant(self.i64, v)
        return self.builder.sext(v, self.i64) if v.type.width < 64 else v

    def mask(self, n_valid, width):
        """``<width x i1>``: lanes ``l`` with ``l < n_valid``."""
        b = self.builder
        if width <= 32 and _VBYTES == 64:
            # AVX-512: as the low bits of an integer, which reaches a mask register by kmov;
            # LLVM builds the compare form with a broadcast and a vector compare, two ops on the
            # pipes the FMAs need (depthwise rows: 5-7% faster this way). Without mask registers
            # the compare form is the direct one.
            n = self.as64(n_valid)
            zero, full = ir.Constant(self.i64, 0), ir.Constant(self.i64, width)
            n = b.select(b.icmp_signed("<", n, zero), zero, n)
            n = b.select(b.icmp_signed(">", n, full), full, n)
            one = ir.Constant(self.i64, 1)
            bits = b.trunc(b.sub(b.shl(one, n), one), ir.IntType(width))
            return b.bitcast(bits, ir.VectorType(ir.IntType(1), width))
        i32v = ir.VectorType(self.i32, width)
        n32 = b.trunc(self.as64(n_valid), self.i32)
        u = ir.Constant(i32v, ir.Undefined)
        spl = b.shuffle_vector(b.insert_element(u, n32, ir.Constant(self.i32, 0)), u,
                               ir.Constant(i32v, [0] * width))
        return b.icmp_signed("<", ir.Constant(i32v, list(range(width))), spl)

    def _masked(self, name, ty):
        i1v = ir.VectorType(ir.IntType(1), ty.count)
        key = "v%d%s" % (ty.count, self.sfx)
        if name == "load":
            fnty = ir.FunctionType(ty, [ty.as_pointer(), self.i32, i1v, ty])
        else:
            fnty = ir.FunctionType(ir.VoidType(), [ty, ty.as_pointer(), self.i32, i1v])
        return cgutils.get_or_insert_function(self.builder.module, fnty,
                                              "llvm.masked.%s.%s.p0" % (name, key))

    def load(self, p, mask=None, width=None):
        ty = ir.VectorType(self.fty, width or self.lanes)
        vp = self.builder.bitcast(p, ty.as_pointer())
        if mask is None:
            return self.builder.load(vp, align=self.isz)
        return self.builder.call(self._masked("load", ty),
                                 [vp, ir.Constant(self.i32, self.isz), mask,
                                  ir.Constant(ty, [0.0] * ty.count)])

    def store(self, v, p, mask):
        vp = self.builder.bitcast(p, v.type.as_pointer())
        self.builder.call(self._masked("store", v.type),
                          [v, vp, ir.Constant(self.i32, self.isz), mask])

    def shuffle(self, a, b, idx):
        return self.builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(self.i32, len(idx)),
                                                              idx))

    def align(self, lo, hi, n):
        """AVX-512 only: lanes ``n .. lanes - 1`` of ``lo`` followed by lanes ``0 .. n - 1`` of
        ``hi`` (a shift by ``n`` lanes through the pair), as one ``valignd``/``valignq``.

        LLVM lowers the equivalent shufflevector to ``vpermt2ps``, which on Zen 4 competes with
        FMAs for the same pipes (measured: 0.9 cycles extra per shift in a 3:1 mix of FMAs and
        shifts, against about 0 for ``valignd``)."""
        ins = "valignd" if self.isz == 4 else "valignq"
        fty = ir.FunctionType(self.vty, [self.vty, self.vty])
        return self.builder.asm(fty, "%s $$%d, $1, $2, $0" % (ins, n), "=v,v,v", [lo, hi],
                                False)

    def low(self, v, n):
        """The first ``n`` lanes of ``v`` (a subregister: no instruction)."""
        return self.shuffle(v, v, list(range(n)))

    def fma(self, a, b, c):
        """``a * b + c`` rounded once, elementwise."""
        fn = cgutils.get_or_insert_function(
            self.builder.module, ir.FunctionType(a.type, [a.type] * 3),
            "llvm.fma.v%d%s" % (a.type.count, self.sfx))
        return self.builder.call(fn, [a, b, c])

    def splat(self, s):
        b = self.builder
        i32v = ir.VectorType(self.i32, self.lanes)
        u = ir.Constant(self.vty, ir.Undefined)
        return b.shuffle_vector(b.insert_element(u, s, ir.Constant(self.i32, 0)), u,
                                ir.Constant(i32v, [0] * self.lanes))


def switch(builder, selectors, variants, name, emit):
    """IR: a switch on the runtime ints ``selectors`` (each below 16) to the code ``emit(*v)``
    writes for each tuple ``v`` of ``variants``. Any other combination is a bug of the caller:
    it traps rather than leave outputs unwritten."""
    b = builder
    i64 = ir.IntType(64)
    code = ir.Constant(i64, 0)
    for v in selectors:
        code = b.add(b.mul(code, ir.Constant(i64, 16)), b.sext(v, i64) if v.type.width < 64 else v)
    fn = b.function
    done = fn.append_basic_block(name + "_done")
    other = fn.append_basic_block(name + "_none")
    sw = b.switch(code, other)
    b.position_at_end(other)
    b.call(cgutils.get_or_insert_function(b.module, ir.FunctionType(ir.VoidType(), []),
                                          "llvm.trap"), [])
    b.unreachable()
    for variant in variants:
        key = 0
        for v in variant:
            key = key * 16 + v
        blk = fn.append_basic_block("%s_%s" % (name, "_".join(map(str, variant))))
        sw.add_case(ir.Constant(i64, key), blk)
        b.position_at_end(blk)
        emit(*variant)
        b.branch(done)
    b.position_at_end(done)


def lane_mask_table(wd, lanes, lo, hi, step=1):
    """Lane masks of vectors reading a row of ``wd`` elements from column ``j`` in ``[lo, hi)``
    (lane ``l`` at column ``j + step*l``): bit ``l`` set when that column is inside the row.
    Returns the table (one unsigned integer of ``max(lanes, 8)`` bits per ``j``; a kernel
    loads one to mask a vector instead of computing it) and the index of ``j = 0``."""
    j = np.arange(lo, hi)[:, None]
    col = j + step * np.arange(lanes)[None, :]
    valid = (col >= 0) & (col < wd)
    bits = (valid << np.arange(lanes)[None, :]).sum(axis=1)
    return bits.astype(np.uint16 if lanes > 8 else np.uint8), -lo


def mask_bits(builder, bits, lanes):
    """The ``<lanes x i1>`` mask of an integer of at least ``lanes`` bits (its low bits)."""
    if bits.type.width != lanes:
        bits = builder.trunc(bits, ir.IntType(lanes))
    return builder.bitcast(bits, ir.VectorType(ir.IntType(1), lanes))


def lane_sum(builder, v):
    """The sum of vector ``v``'s lanes, pairwise: (lane j) + (lane j + width/2), halving."""
    lanes = v.type.count
    i32v = ir.VectorType(ir.IntType(32), lanes)
    width = lanes
    while width > 1:
        width //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(i32v, list(range(width)) +
                                                      [0] * (lanes - width)))
        hi = builder.shuffle_vector(v, v, ir.Constant(i32v, list(range(width, 2 * width)) +
                                                      [0] * (lanes - width)))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))
