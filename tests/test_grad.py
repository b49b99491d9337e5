"""Gradients: exact adjoint identities on integer data, the weight-gradient kernel against the
reference, torch.autograd on random data within forward error bounds, determinism, errors."""

import numpy as np
import pytest

import numbaconv
from numbaconv import grad, reference

from cases import all_cases, forward_corner_cases, transposed_corner_cases

CASES = forward_corner_cases() + transposed_corner_cases() + all_cases(40)[29:]


def _forward(case, x, w, b=None):
    fn = numbaconv.conv_transpose2d if case.transposed else numbaconv.conv2d
    return fn(x, w, b, **case.kwargs)


def _grads(case, x, w, g, **kw):
    if case.transposed:
        return (grad.conv_transpose2d_input(x.shape, w, g, **case.kwargs, **kw),
                grad.conv_transpose2d_weight(x, w.shape, g, **case.kwargs, **kw))
    return (grad.conv2d_input(x.shape, w, g, **case.kwargs, **kw),
            grad.conv2d_weight(x, w.shape, g, **case.kwargs, **kw))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_adjoint_identities_are_exact(case, rng):
    """<conv(x, w), g> == <x, dx(g, w)> == <w, dw(x, g)>, exactly, on integer data."""
    x, w, _ = case.arrays(rng)
    y = _forward(case, x, w)
    g = rng.integers(-4, 5, y.shape).astype(y.dtype)
    dx, dw = _grads(case, x, w, g)
    assert dx.shape == x.shape and dw.shape == w.shape
    assert dx.dtype == dw.dtype == y.dtype
    inner = np.sum(y.astype(np.float64) * g)
    assert np.sum(x.astype(np.float64) * dx) == inner
    assert np.sum(w.astype(np.float64) * dw) == inner


@pytest.mark.parametrize("case", CASES, ids=str)
def test_weight_kernel_equals_the_reference(case, rng):
    x, w, _ = case.arrays(rng)
    g = rng.integers(-4, 5, _forward(case, x, w).shape).astype(x.dtype)
    fn = grad.conv_transpose2d_weight if case.transposed else grad.conv2d_weight
    fast = fn(x, w.shape, g, **case.kwargs)
    slow = fn(x, w.shape, g, **case.kwargs, algorithm="reference")
    assert np.array_equal(fast, slow)


@pytest.mark.parametrize("algorithm", ["direct", "gemm", "reference"])
def test_input_gradient_algorithms_agree(algorithm, rng):
    for case in forward_corner_cases():
        x, w, _ = case.arrays(rng)
        g = rng.integers(-4, 5, _forward(case, x, w).shape).astype(x.dtype)
        dx = grad.conv2d_input(x.shape, w, g, **case.kwargs, algorithm=algorithm)
        assert np.array_equal(dx, grad.conv2d_input(x.shape, w, g, **case.kwargs))


def test_unbatched_and_1d(rng):
    x = rng.integers(-4, 5, (3, 17)).astype(np.float32)
    w = rng.integers(-4, 5, (4, 3, 3)).astype(np.float32)
    kw = dict(stride=2, padding=((2, 0),), dilation=2)
    y = numbaconv.conv1d(x, w, **kw)
    g = rng.integers(-4, 5, y.shape).astype(np.float32)
    dx, dw, db = grad.conv1d_vjp(x, w, g, **kw)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (4,)
    inner = np.sum(y * g, dtype=np.float64)
    assert np.sum(x * dx, dtype=np.float64) == inner == np.sum(w * dw, dtype=np.float64)
    assert np.array_equal(db, g.sum(axis=1))
    # transposed 1-d, batched
    xt = rng.integers(-4, 5, (2, 3, 9)).astype(np.float64)
    wt = rng.integers(-4, 5, (3, 2, 4)).astype(np.float64)
    yt = numbaconv.conv_transpose1d(xt, wt, stride=3, padding=1, output_padding=2)
    gt = rng.integers(-4, 5, yt.shape).astype(np.float64)
    dxt, dwt, dbt = grad.conv_transpose1d_vjp(xt, wt, gt, stride=3, padding=1, output_padding=2)
    assert np.sum(xt * dxt) == np.sum(yt * gt) == np.sum(wt * dwt)
    assert np.array_equal(dbt, gt.sum(axis=(0, 2)))


def _torch_grads(case, x, w, b, g):
    """torch.autograd's gradients in float64. Asymmetric padding, which torch lacks, is an
    explicit zero pad of the input (forward) or a crop of the unpadded result (transposed)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    tb = None if b is None else torch.tensor(b, dtype=torch.float64, requires_grad=True)
    p = case.problem
    hp = dict(stride=p.stride, dilation=p.dilation, groups=p.groups)
    (t, bo), (le, r) = p.padding
    if case.transposed:
        full = F.conv_transpose2d(tx, tw, None, padding=0, output_padding=p.output_padding, **hp)
        y = full[:, :, t:t + p.out_size[0], le:le + p.out_size[1]]
    else:
        y = F.conv2d(F.pad(tx, (le, r, t, bo)), tw, None, padding=0, **hp)
    if tb is not None:
        y = y + tb[:, None, None]
    y.backward(torch.tensor(g, dtype=torch.float64))
    return tx.grad.numpy(), tw.grad.numpy(), None if tb is None else tb.grad.numpy()


@pytest.mark.parametrize("case", CASES, ids=str)
def test_against_torch_autograd_within_the_error_bound(case, rng):
    """Random data: |ours - exact| <= 2 * k * u * (the same sums over absolute values), with
    torch in float64 standing in for the exact gradients."""
    x, w, b = case.arrays(rng, kind="normal")
    g = rng.standard_normal(_forward(case, x, w).shape).astype(x.dtype)
    want = _torch_grads(case, x, w, b, g)
    dx, dw = _grads(case, x, w, g)
    u = np.finfo(x.dtype).eps
    ax, aw = _grads(case, np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                    np.abs(g).astype(np.float64))
    p = case.problem
    k_in = p.out_channels // p.groups * int(np.prod(p.kernel_size))
    k_w = p.batch * int(np.prod(p.out_size if not p.transposed else p.in_size))
    assert np.all(np.abs(dx - want[0]) <= 2 * k_in * u * ax + 1e-300)
    assert np.all(np.abs(dw - want[1]) <= 2 * k_w * u * aw + 1e-300)
    if b is not None:
        db = grad.bias_grad(g)
        assert np.allclose(db, want[2], rtol=0, atol=2 * k_w * u * np.abs(g).sum() + 1e-300)


def test_results_do_not_depend_on_the_thread_count(rng):
    x = rng.standard_normal((3, 24, 19, 21)).astype(np.float32)
    w = rng.standard_normal((40, 12, 3, 3)).astype(np.float32)
    g = rng.standard_normal((3, 40, 10, 11)).astype(np.float32)
    kw = dict(stride=2, padding=1, groups=2)
    runs = []
    for threads in (1, 2, 2):
        with numbaconv.num_threads(threads):
            runs.append((grad.conv2d_input(x.shape, w, g, **kw), grad.conv2d_weight(x, w.shape, g, **kw)))
    for dx, dw in runs[1:]:
        assert np.array_equal(dx, runs[0][0]) and np.array_equal(dw, runs[0][1])


@pytest.mark.parametrize("cin, cout, k, size, stride", [
    (128, 128, 3, 28, 1), (256, 256, 3, 14, 1), (64, 256, 1, 28, 1), (96, 40, 3, 17, 2)])
def test_weight_gradient_tasks_share_the_work_evenly_and_keep_the_bits(cin, cout, k, size,
                                                                      stride, rng):
    """The weight gradient's tasks (blocks of output channels x im2col rows) on integer data
    (exact in any order) and their split: within the columns there are, at least four tasks
    when the shape has them, and prange's two contiguous halves within 5% of each other
    (cut by a fixed width, 3x3 C128's 1152 columns split 640 against 544, C256's 5 tasks
    against 4)."""
    from numbaconv.kernels import gemm, weight_grad
    x = rng.integers(-4, 5, (2, cin, size, size)).astype(np.float32)
    w_shape = (cout, cin, k, k)
    kw = dict(stride=stride, padding=k // 2)
    g = rng.integers(-4, 5, reference.conv2d(x, np.zeros(w_shape, np.float32), **kw).shape)
    g = g.astype(np.float32)
    got = grad.conv2d_weight(x, w_shape, g, **kw)
    assert np.array_equal(got, grad.conv2d_weight(x, w_shape, g, **kw, algorithm="reference"))

    nr = gemm.NV * (gemm._VBYTES // 4)
    cols = cin * k * k
    ct, n_cb, kt, n_kb = weight_grad._blocks(1, cols, cout, nr, 2 * g.shape[2] * g.shape[3])
    assert kt % nr == 0 and kt <= max(nr, -(-cols // nr) * nr) and n_kb == -(-cols // kt)
    assert n_cb == -(-cout // ct) and n_cb * n_kb >= min(4, n_cb * -(-cols // nr))
    work = [min(ct, cout - c * ct) * min(kt, cols - j * kt) for c in range(n_cb)
            for j in range(n_kb)]
    half = -(-len(work) // 2)
    assert max(sum(work[:half]), sum(work[half:])) <= 1.05 * sum(work) / 2, work


_ROWS_CASES = [  # (batch, C_in, C_out, kernel, size, (pad_top, pad_left), dilation, groups)
    (3, 32, 40, 3, 11, (1, 1), 1, 1),      # a partial panel of output channels
    (2, 64, 32, 3, 9, (2, 2), 2, 1),       # dilated
    (2, 40, 64, 5, 10, (2, 1), 1, 1),      # uneven padding; rows runs of 40 (not 8-aligned)
    (2, 64, 64, 3, 12, (1, 1), 1, 2),      # groups
    (2, 48, 96, 1, 13, (0, 0), 1, 1),      # 1x1
    (2, 32, 32, 3, 16, (0, 0), 1, 1),      # no padding: output smaller than the input
]


@pytest.mark.parametrize("case", _ROWS_CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_gradient_reading_the_input_in_place_keeps_the_bits(case, dtype, monkeypatch,
                                                                   rng):
    """The stride-1 path that reads the padded input in place: on integer data the
    reference's values, on random data the im2col path's bits (same sums in the same order),
    also when the images are taken a few at a time, with 1 and 2 threads."""
    from numbaconv.kernels import weight_grad, weight_grad_rows
    nb, cin, cout, k, size, (pt, pl), d, groups = case
    w_shape = (cout, cin // groups, k, k)
    oh = size + 2 * pt - d * (k - 1)
    ow = size + 2 * pl - d * (k - 1)

    def rows(x, g):
        return weight_grad_rows.conv2d_weight_grad_rows(x, g, w_shape, pt, pl, d, d, groups)

    x = rng.integers(-4, 5, (nb, cin, size, size)).astype(dtype)
    g = rng.integers(-4, 5, (nb, cout, oh, ow)).astype(dtype)
    want = reference.conv2d_weight_grad(x, g, w_shape, (1, 1), (pt, pl), (d, d), groups)
    assert np.array_equal(rows(x, g), want)

    x = rng.standard_normal(x.shape).astype(dtype)
    g = rng.standard_normal(g.shape).astype(dtype)
    monkeypatch.setattr(weight_grad._rows, "pays", lambda *args: False)
    im2col = weight_grad.conv2d_weight_grad(x, g, w_shape, 1, 1, pt, pl, d, d, groups)
    assert np.array_equal(rows(x, g), im2col)
    # the last rows and columns of the output gradient dropped (a cropped gradient)
    im2col_crop = weight_grad.conv2d_weight_grad(x, g[:, :, :-1, :-2].copy(), w_shape, 1, 1, pt,
                                                 pl, d, d, groups)
    assert np.array_equal(weight_grad_rows.conv2d_weight_grad_rows(
        x, g[:, :, :-1, :-2].copy(), w_shape, pt, pl, d, d, groups), im2col_crop)
    monkeypatch.setattr(weight_grad_rows, "_GROUP_BYTES", 1)      # one image at a time
    for threads in (1, 2):
        with numbaconv.num_threads(threads):
            assert np.array_equal(rows(x, g), im2col)


def test_weight_gradient_in_place_hands_non_finite_inputs_to_im2col(rng):
    """Its padding pixels multiply zeros by input values: an Inf input would turn them into
    NaN, so such inputs take the im2col path, whose NaN/Inf pattern is the reference's."""
    from numbaconv.kernels import weight_grad_rows
    x = rng.integers(-4, 5, (2, 32, 12, 12)).astype(np.float32)
    g = rng.integers(-4, 5, (2, 32, 12, 12)).astype(np.float32)
    x[1, 3, 5, 11] = np.inf
    w_shape = (32, 32, 3, 3)
    assert weight_grad_rows.conv2d_weight_grad_rows(x, g, w_shape, 1, 1, 1, 1, 1) is None
    got = grad.conv2d_weight(x, w_shape, g, padding=1)
    want = reference.conv2d_weight_grad(x, g, w_shape, (1, 1), (1, 1), (1, 1), 1)
    assert np.array_equal(got, want, equal_nan=True)
    # an unpadded 1x1 kernel transposes the input's own rows (no pixels past the output)
    x[0, 7, 2, 2] = -np.inf
    got = grad.conv2d_weight(x, (32, 32, 1, 1), g)
    want = reference.conv2d_weight_grad(x, g, (32, 32, 1, 1), (1, 1), (0, 0), (1, 1), 1)
    assert np.isnan(want).any() and np.isinf(want).any()
    assert np.array_equal(got, want, equal_nan=True)


@pytest.mark.parametrize("cin, cout, groups, batch", [(64, 256, 1, 1), (48, 40, 1, 3),
                                                      (64, 96, 2, 2), (33, 17, 1, 2)])
def test_pointwise_weight_gradient_transposes_the_input_rows(cin, cout, groups, batch,
                                                             monkeypatch, rng):
    """Unpadded stride-1 1x1 layers transpose the input's own rows into the GEMM's panels (no
    im2col copy): the reference's values on integer data, the copying path's bits on random
    data (a last row of 1x1 shapes kept wider than the gradient takes the copying path)."""
    from numbaconv.kernels import weight_grad
    w_shape = (cout, cin // groups, 1, 1)
    x = rng.integers(-4, 5, (batch, cin, 20, 17)).astype(np.float32)    # two pixel chunks
    g = rng.integers(-4, 5, (batch, cout, 20, 17)).astype(np.float32)
    want = reference.conv2d_weight_grad(x, g, w_shape, (1, 1), (0, 0), (1, 1), groups)
    assert np.array_equal(weight_grad.conv2d_weight_grad(x, g, w_shape, 1, 1, 0, 0, 1, 1,
                                                         groups), want)
    x = rng.standard_normal((batch, cin, 22, 18)).astype(np.float32)
    g = rng.standard_normal((batch, cout, 20, 17)).astype(np.float32)
    monkeypatch.setattr(weight_grad._rows, "pays", lambda *args: False)
    copied = weight_grad.conv2d_weight_grad(x, g, w_shape, 1, 1, 0, 0, 1, 1, groups)
    # the input's own rows, also with rows below the (cropped) gradient's
    for rows in (20, 22):
        same = weight_grad.conv2d_weight_grad(np.ascontiguousarray(x[:, :, :rows, :17]), g,
                                              w_shape, 1, 1, 0, 0, 1, 1, groups)
        assert np.array_equal(same, copied)


@pytest.mark.parametrize("c, cg, m, k, size, stride, pads, d, batch", [
    (6, 1, 1, (3, 3), (13, 13), (1, 1), (1, 1), 1, 2),
    (4, 1, 2, (3, 3), (11, 40), (1, 1), (2, 0), 2, 3),
    (5, 1, 1, (5, 5), (9, 70), (1, 1), (2, 2), 1, 1),
    (3, 1, 3, (2, 2), (8, 8), (1, 1), (0, 1), 1, 2),
    (3, 1, 1, (7, 7), (12, 150), (1, 1), (3, 3), 1, 1),
    (4, 1, 1, (3, 3), (15, 57), (2, 2), (1, 1), 1, 2),
    (2, 1, 2, (5, 3), (17, 100), (3, 2), (2, 1), 1, 1),
    (3, 1, 1, (3, 7), (9, 35), (2, 1), (1, 3), 2, 1),
    (2, 1, 1, (1, 1), (6, 33), (2, 2), (0, 0), 1, 2),
    (2, 1, 1, (3, 9), (7, 30), (1, 1), (1, 4), 1, 1),      # 9 wide: the im2col path
    (2, 1, 1, (3, 3), (9, 20), (3, 3), (1, 1), 1, 1),      # column stride 3: the im2col path
    (8, 4, 4, (3, 3), (10, 21), (1, 1), (1, 1), 1, 2),     # ResNeXt-like groups of 4
    (6, 2, 3, (3, 3), (9, 35), (2, 2), (1, 1), 1, 1),
    (9, 3, 1, (5, 5), (8, 18), (1, 1), (2, 2), 2, 1),
    (10, 5, 2, (3, 3), (7, 9), (1, 1), (1, 1), 1, 2)])     # 5 per group: the GEMM path
def test_narrow_group_weight_gradient(c, cg, m, k, size, stride, pads, d, batch, rng):
    """Depthwise layers and narrow groups (``c`` input channels, ``cg`` per group, ``m`` output
    channels per group): the reference's values on integer data (channel multipliers, strides,
    dilation, uneven padding, cropped gradients, rows of several vectors, kernels of several
    passes; the other paths at the rule's edges); Inf inputs and output gradients give the
    reference's NaN/Inf pattern; random data gives the same bits on 1 and 2 threads."""
    from numbaconv.kernels import weight_grad
    pt, pl = pads
    sh, sw = stride
    groups = c // cg
    w_shape = (groups * m, cg) + k
    oh = (size[0] + 2 * pt - d * (k[0] - 1) - 1) // sh + 1
    ow = (size[1] + 2 * pl - d * (k[1] - 1) - 1) // sw + 1
    x = rng.integers(-4, 5, (batch, c) + size).astype(np.float32)

    def ours(x, g):
        return weight_grad.conv2d_weight_grad(x, g, w_shape, sh, sw, pt, pl, d, d, groups)

    cout = groups * m
    for g_shape in ((batch, cout, oh, ow), (batch, cout, max(1, oh - 1), max(1, ow - 2))):
        g = rng.integers(-4, 5, g_shape).astype(np.float32)
        want = reference.conv2d_weight_grad(x, g, w_shape, stride, pads, (d, d), groups)
        assert np.array_equal(ours(x, g), want)
    # Inf in the input, and in dY at pixels whose taps meet the padding (0 * Inf: NaN there)
    x[batch - 1, c - 1, size[0] // 2, 0] = x[0, 0, size[0] - 1, size[1] - 1] = np.inf
    g = rng.integers(-4, 5, (batch, cout, oh, ow)).astype(np.float32)
    g[0, 0, 0, 0] = g[batch - 1, cout - 1, oh - 1, ow // 2] = np.inf
    want = reference.conv2d_weight_grad(x, g, w_shape, stride, pads, (d, d), groups)
    assert np.array_equal(ours(x, g), want, equal_nan=True)
    x = rng.standard_normal(x.shape).astype(np.float32)
    g = rng.standard_normal(g.shape).astype(np.float32)
    with numbaconv.num_threads(1):
        one = ours(x, g)
    with numbaconv.num_threads(2):
        assert ours(x, g).tobytes() == one.tobytes()


@pytest.mark.parametrize("shape, in_place", [
    ((64, 64, 3, 56, 1), True), ((128, 128, 3, 28, 1), True), ((64, 256, 1, 56, 1), True),
    ((256, 256, 3, 33, 2), False), ((256, 256, 3, 14, 1), False), ((512, 512, 3, 7, 1), False),
    ((4, 4, 3, 56, 1), False), ((1, 32, 5, 512, 1), False)])
def test_which_weight_gradients_read_the_input_in_place(shape, in_place):
    """Measured (see weight_grad_rows._MAX_EXTRA): the in-place read pays where padding adds
    under 8% pixels and the channels fill the register tiles (per group: ResNeXt's 4)."""
    from numbaconv.kernels import weight_grad_rows
    cg, cog, k, ow, d = shape
    assert weight_grad_rows.pays(cg, cog, ow, k, d, 4) == in_place


def test_inputs_are_not_modified(rng):
    x = rng.standard_normal((2, 4, 9, 9))
    w = rng.standard_normal((6, 4, 3, 3))
    g = rng.standard_normal((2, 6, 9, 9))
    copies = [a.copy() for a in (x, w, g)]
    grad.conv2d_vjp(x, w, g, padding="same")
    assert all(np.array_equal(a, c) for a, c in zip((x, w, g), copies))


def test_reference_weight_gradient_by_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    g = np.ones((1, 1, 2, 2))
    dw = reference.conv2d_weight_grad(x, g, (1, 1, 2, 2), (1, 1), (0, 0), (1, 1), 1)
    assert dw[0, 0].tolist() == [[0 + 1 + 3 + 4, 1 + 2 + 4 + 5], [3 + 4 + 6 + 7, 4 + 5 + 7 + 8]]


@pytest.mark.parametrize("call, rule", [
    (lambda: grad.conv2d_input((1, 3, 8, 8), np.ones((4, 3, 3, 3)), np.ones((1, 4, 5, 6))),
     "grad_output must have the shape of the forward output"),
    (lambda: grad.conv2d_input([1, 3, 8.0, 8], np.ones((4, 3, 3, 3)), np.ones((1, 4, 6, 6))),
     "input_size must be a tuple of ints"),
    (lambda: grad.conv2d_input((3, 8), np.ones((4, 3, 3, 3)), np.ones((1, 4, 6, 6))),
     "input_size must have 4 entries"),
    (lambda: grad.conv2d_weight(np.ones((1, 3, 8, 8)), (4, 3, 3, 3), np.ones((1, 4, 6, 6)),
                                algorithm="fast"), "algorithm must be 'auto' or one of"),
    (lambda: grad.conv2d_weight(np.ones((1, 3, 8, 8)), (4, 2, 3, 3), np.ones((1, 4, 6, 6))),
     "expects 2 input channels"),
    (lambda: grad.conv2d_weight(np.ones((1, 3, 8, 8)), (4, 3, 3, 3), np.ones((1, 4, 6, 6)),
                                groups=2), "divisible by groups"),
    (lambda: grad.bias_grad(np.ones((4, 6))), "grad_output must be batched"),
])
def test_errors_name_the_rule(call, rule):
    with pytest.raises((ValueError, TypeError), match=rule):
        call()


def test_layer_backward_matches_the_functions(rng):
    layer = numbaconv.Conv2d(3, 5, 3, stride=2, padding=1, rng=rng)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    y = layer(x)
    g = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = layer.backward(g)
    want = grad.conv2d_vjp(x, layer.weight, g, stride=2, padding=1)
    for a, b in zip((dx, dw, db), want):
        assert np.array_equal(a, b)
    up = numbaconv.ConvTranspose2d(5, 2, 4, stride=2, padding=1, bias=False, rng=rng)
    z = up(y)
    dz = rng.standard_normal(z.shape).astype(np.float32)
    dy, dwt, dbt = up.backward(dz, y)
    assert dbt is None and dy.shape == y.shape and dwt.shape == up.weight.shape


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_layer_backward_through_padding_modes(mode, rng):
    torch = pytest.importorskip("torch")
    layer = numbaconv.Conv2d(2, 3, 3, padding=(2, 1), padding_mode=mode, dtype=np.float64,
                             rng=rng)
    x = rng.standard_normal((2, 2, 7, 6))
    y = layer(x)
    g = rng.standard_normal(y.shape)
    dx, dw, db = layer.backward(g)
    tl = torch.nn.Conv2d(2, 3, 3, padding=(2, 1), padding_mode=mode, dtype=torch.float64)
    tl.load_state_dict({k: torch.tensor(v) for k, v in layer.state_dict().items()})
    tx = torch.tensor(x, requires_grad=True)
    tl(tx).backward(torch.tensor(g))
    assert np.allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert np.allclose(dw, tl.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    assert np.allclose(db, tl.bias.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_backward_without_a_forward_call_says_so():
    layer = numbaconv.Conv2d(1, 1, 3)
    with pytest.raises(ValueError, match="no input"):
        layer.backward(np.ones((1, 1, 2, 2)))


def test_training_example_learns():
    """A short run of examples/train_cnn.py: loss falls and accuracy beats chance clearly."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "examples" / "train_cnn.py"
    spec = importlib.util.spec_from_file_location("train_cnn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    acc, losses = module.train(epochs=3, train_count=3000, test_count=500, log=lambda *a: None)
    assert acc > 0.3
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


@pytest.mark.parametrize("cg, kw, stride, narrow", [
    (1, 3, 1, True), (4, 3, 2, True), (4, 7, 1, True), (5, 3, 1, False), (1, 9, 1, False),
    (1, 4, 1, False),
    (2, 3, 3, False)])
def test_which_grouped_weight_gradients_take_the_narrow_kernel(cg, kw, stride, narrow,
                                                                monkeypatch):
    """Up to NARROW_GROUP input channels per group (measured against the GEMM path), kernels 1,
    3, 5 or 7 wide, column stride 1 or 2."""
    from numbaconv.kernels import weight_grad
    calls = []
    real = weight_grad._narrow.conv2d_narrow_weight_grad
    monkeypatch.setattr(weight_grad._narrow, "conv2d_narrow_weight_grad",
                        lambda *a: calls.append(a) or real(*a))
    x = np.ones((1, 2 * cg, 12, 12), np.float32)
    ow = (12 + 2 - kw) // stride + 1
    g = np.ones((1, 4, 12 + 2 - 3 + 1, ow), np.float32)
    weight_grad.conv2d_weight_grad(x, g, (4, cg, 3, kw), 1, stride, 1, 1, 1, 1, 2)
    assert bool(calls) == narrow
