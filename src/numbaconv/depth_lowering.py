"""3-D convolutions on the 2-D kernels: one batched 2-D convolution per kernel depth offset.

Forward: output depth ``od`` collects, for each kernel depth offset ``kd``, the 2-D convolution
of input depth slice ``id = od*s_d - p_d + kd*d_d`` (zeros outside the volume) with the weight
slice ``w[:, :, kd]``. For a fixed ``kd`` the slices of every ``od`` and image are stacked into
the batch of one 2-D call, so a 3x3x3 layer is three 2-D convolutions of ``N * D_out`` images.
Each output element is ``bias + c_0 + c_1 + ...`` (``c_kd`` the 2-D kernel's sum for offset
``kd``, added in ascending ``kd``): a fixed order, exact on integer data like the 2-D kernels,
independent of the thread count.

Transposed: every input depth slice, transposed-convolved in 2-D with ``w[:, :, kd]``, lands on
output depth ``id*s_d - p_d + kd*d_d`` (dropped outside the output), again one batched 2-D call per
``kd``. The zero-padding depth slices are convolved like data, so an Inf/NaN weight meets a zero
there and gives NaN exactly as in the reference.
"""

import numpy as np

from . import dispatch
from .problem import ConvProblem


def _plane_problem(problem, batch):
    """The 2-d problem of one depth offset: the height/width part of ``problem``, ``batch``
    images."""
    return ConvProblem(batch, problem.in_channels, problem.out_channels, problem.in_size[1:],
                       problem.kernel_size[1:], problem.stride[1:], problem.padding[1:],
                       problem.dilation[1:], problem.groups, problem.transposed,
                       problem.output_padding[1:] if problem.transposed else None,
                       problem.dtype, False)


def depth_slices(xt, out_depth, stride, pad, offset):
    """For every output depth ``od`` the input depth slice ``od*stride - pad + offset`` (zeros
    outside), stacked as a 2-d batch: ``xt`` (N, D, C, H, W) -> (N * out_depth, C, H, W)."""
    src = np.arange(out_depth) * stride - pad + offset
    ok = (src >= 0) & (src < xt.shape[1])
    slices = np.zeros((xt.shape[0], out_depth) + xt.shape[2:], dtype=xt.dtype)
    slices[:, ok] = xt[:, src[ok]]
    return slices.reshape((-1,) + xt.shape[2:])


def run(problem, x, w, b, out, algorithm, exact=False):
    """Compute the 3-d ``problem`` into ``out`` with the 2-d ``algorithm`` ('auto' or a name);
    arrays batched, C-contiguous, of ``problem.dtype``."""
    n = problem.batch
    (d_in, d_out) = problem.in_size[0], problem.out_size[0]
    k_d, s_d, dil_d = problem.kernel_size[0], problem.stride[0], problem.dilation[0]
    pad_d = problem.padding[0][0]
    transposed = problem.transposed
    plane = _plane_problem(problem, n * (d_in if transposed else d_out))
    chosen = dispatch.get(algorithm, plane, exact)
    # depth-major copies: (N, D, C, H, W), so one depth slice of every image is one 2-d batch
    xt = np.ascontiguousarray(x.transpose(0, 2, 1, 3, 4))
    acc = np.empty((n, d_out, problem.out_channels) + problem.out_size[1:], dtype=x.dtype)
    acc[...] = 0 if b is None else b[:, None, None]
    part = np.empty(plane.output_shape, dtype=x.dtype)
    for kd in range(k_d):
        w2 = np.ascontiguousarray(w[:, :, kd])
        if transposed:
            chosen.run(plane, xt.reshape(plane.input_shape), w2, None, part)
            od = np.arange(d_in) * s_d - pad_d + kd * dil_d
            ok = (od >= 0) & (od < d_out)
            acc[:, od[ok]] += part.reshape((n, d_in) + part.shape[1:])[:, ok]
        else:
            slices = depth_slices(xt, d_out, s_d, pad_d, kd * dil_d)
            chosen.run(plane, slices, w2, None, part)
            acc += part.reshape((n, d_out) + part.shape[1:])
    out[...] = acc.transpose(0, 2, 1, 3, 4)
