"""Forward error bounds the tolerance tiers check against.

``summation_bound``: any order of summing ``k`` products lies within ``gamma_k`` of the exact sum
(Higham, Accuracy and Stability of Numerical Algorithms, 3.1), so two orders differ by at most
``2 gamma_k sum |w||x|``.

``winograd_bound``: Winograd F(4x4, 3x3) computes ``A^T [sum_c U_c * V_c] A`` with
``U_c = G g_c G^T`` and ``V_c = B^T d_c B``. Every stage is a short sum of scaled terms, so to first
order its rounding error is at most (number of sequential operations) x ``u`` times the same
expression evaluated on absolute values: ``|Y - y| <= n u |A^T| (sum_c (|G||g_c||G^T|) *
(|B^T||d_c||B|)) |A| + |bias| u``, where ``n`` adds the stages' operation depths: the weight
transform (coefficients rounded to the dtype, then at most 3 + 3 terms), the input transform
(6 + 6), the products (1), the sum over ``C_in`` channels, the output transform (6 + 6) and the
bias (1). The test doubles it, as for the summation bound, for second-order terms.
"""

import numpy as np

from numbaconv import reference, stride1_lowering
from numbaconv.kernels import winograd


def summation_bound(case, x, w, b):
    problem = case.problem
    k = problem.in_channels // problem.groups * problem.kernel_size[0] * problem.kernel_size[1]
    k += 1 if b is not None else 0
    u = np.finfo(np.dtype(case.dtype)).eps / 2
    gamma = k * u / (1 - k * u)
    fn = reference.conv_transpose2d if case.transposed else reference.conv2d
    magnitude = fn(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                   None if b is None else np.abs(b).astype(np.float64), **case.kwargs)
    return 2 * gamma * magnitude


def winograd_magnitude(x, w, padding, out_hw, dilation=(1, 1)):
    """``|A^T| (sum_c (|G||g_c||G^T|) * (|B^T||d_c||B|)) |A|`` per output element (float64),
    tiles placed as the kernel places them (4x4 from the top-left output; with dilation, from the
    top-left of each phase, the outputs of one row and column residue)."""
    (pt, _), (pl, _) = padding
    dh, dw = dilation
    if (dh, dw) != (1, 1):
        oh, ow = out_hw
        rows, cols = dh * (-(-oh // dh) + 2), dw * (-(-ow // dw) + 2)
        padded = np.zeros(x.shape[:2] + (rows + x.shape[2] + pt, cols + x.shape[3] + pl))
        padded[:, :, pt:pt + x.shape[2], pl:pl + x.shape[3]] = np.abs(x)
        result = np.zeros(x.shape[:1] + w.shape[:1] + (oh, ow))
        for a in range(min(dh, oh)):
            for b in range(min(dw, ow)):
                size = (-(-(oh - a) // dh), -(-(ow - b) // dw))
                result[:, :, a::dh, b::dw] = winograd_magnitude(
                    padded[:, :, a::dh, b::dw], w, ((0, 0), (0, 0)), size)
        return result
    oh, ow = out_hw
    nty, ntx = -(-oh // 4), -(-ow // 4)
    ax = np.abs(x).astype(np.float64)
    rows, cols = 4 * nty + 2, 4 * ntx + 2
    padded = np.zeros(ax.shape[:2] + (rows, cols))
    # input row y sits at padded row y + pt; rows outside [0, rows) are never read
    ys, xs = slice(max(0, -pt), min(ax.shape[2], rows - pt)), slice(max(0, -pl),
                                                                     min(ax.shape[3], cols - pl))
    padded[:, :, ys.start + pt:ys.stop + pt, xs.start + pl:xs.stop + pl] = ax[:, :, ys, xs]
    patches = np.lib.stride_tricks.sliding_window_view(padded, (6, 6), axis=(2, 3))[:, :, ::4, ::4]
    bt, g, at = np.abs(winograd.B_T), np.abs(winograd.G), np.abs(winograd.A_T)
    v = np.einsum("ai,nctuij,bj->nctuab", bt, patches, bt)
    u = np.einsum("ai,kcij,bj->kcab", g, np.abs(w).astype(np.float64), g)
    m = np.einsum("nctuab,kcab->nktuab", v, u)
    y = np.einsum("ia,nktuab,jb->nktuij", at, m, at)
    y = y.transpose(0, 1, 2, 4, 3, 5).reshape(y.shape[0], y.shape[1], 4 * nty, 4 * ntx)
    return y[:, :, :oh, :ow]


def winograd_bound(case, x, w, b):
    problem = case.problem
    if problem.transposed:
        # a stride-1 transposed convolution runs as the forward one of the flipped weights
        problem = stride1_lowering.forward_problem(problem)
        w = np.ascontiguousarray(np.swapaxes(w, 0, 1)[:, :, ::-1, ::-1])
    u = np.finfo(np.dtype(case.dtype)).eps / 2
    n = problem.in_channels + (2 + 6) + (6 + 6) + 1 + (6 + 6) + 1
    bound = n * u * winograd_magnitude(x, w, problem.padding, problem.out_size, problem.dilation)
    if b is not None:
        bound += u * np.abs(b).astype(np.float64)[:, None, None]
    return 2 * bound


# The bound of every inexact algorithm, by name; a new inexact algorithm must add its own.
INEXACT_BOUNDS = {"winograd": winograd_bound}
