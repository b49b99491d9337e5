"""conv3d / conv_transpose3d: the 2-D kernels batched per kernel depth offset, exact against the
3-D reference on integer data for every 2-D algorithm, within the error bound on random data."""

import numpy as np
import pytest

import numbaconv
from numbaconv import reference


def _random_case(rng, transposed):
    groups = int(rng.choice([1, 2]))
    cin, cout = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
    kernel = tuple(int(v) for v in rng.integers(1, 4, 3))
    stride = tuple(int(v) for v in rng.integers(1, 3, 3))
    dilation = tuple(int(v) for v in rng.choice([1, 1, 2], 3))
    size = tuple(int(v) for v in rng.integers(3, 9, 3))
    batch = int(rng.integers(1, 3))
    x_shape = (batch, cin) + size
    if transposed:
        w_shape = (cin, cout // groups) + kernel
        padding = tuple(int(v) for v in rng.integers(0, 2, 3))
        output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
        kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                  dilation=dilation)
    else:
        w_shape = (cout, cin // groups) + kernel
        padding = tuple((int(a), int(b)) for a, b in rng.integers(0, 3, (3, 2)))
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    return x_shape, w_shape, kw


def _cases(transposed, count, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        x_shape, w_shape, kw = _random_case(rng, transposed)
        fn = reference.conv_transpose3d if transposed else reference.conv3d
        try:
            fn(np.zeros(x_shape), np.zeros(w_shape), **kw)
        except ValueError:
            continue
        cases.append((x_shape, w_shape, kw))
    return cases


FORWARD = _cases(False, 25, 3) + [((1, 2, 5, 6, 7), (3, 2, 3, 3, 3), dict(padding="same")),
                                  ((1, 3, 4, 9, 9), (4, 3, 3, 3, 3), dict(stride=2,
                                                                          padding="same_tf"))]
TRANSPOSED = _cases(True, 20, 4)


@pytest.mark.parametrize("x_shape, w_shape, kw", FORWARD)
@pytest.mark.parametrize("algorithm", ["auto", "gemm", "direct", "im2col"])
def test_conv3d_exact(x_shape, w_shape, kw, algorithm, rng):
    x = rng.integers(-4, 5, x_shape).astype(np.float32)
    w = rng.integers(-4, 5, w_shape).astype(np.float32)
    b = rng.integers(-4, 5, w_shape[0]).astype(np.float32)
    y = numbaconv.conv3d(x, w, b, algorithm=algorithm, **kw)
    assert np.array_equal(y, reference.conv3d(x, w, b, **kw))


@pytest.mark.parametrize("x_shape, w_shape, kw", TRANSPOSED)
@pytest.mark.parametrize("algorithm", ["auto", "gemm", "direct"])
def test_conv_transpose3d_exact(x_shape, w_shape, kw, algorithm, rng):
    x = rng.integers(-4, 5, x_shape).astype(np.float64)
    w = rng.integers(-4, 5, w_shape).astype(np.float64)
    b = rng.integers(-4, 5, w_shape[1] * kw["groups"]).astype(np.float64)
    y = numbaconv.conv_transpose3d(x, w, b, algorithm=algorithm, **kw)
    assert np.array_equal(y, reference.conv_transpose3d(x, w, b, **kw))


@pytest.mark.parametrize("x_shape, w_shape, kw", FORWARD[:8] + TRANSPOSED[:8])
def test_against_torch_within_the_error_bound(x_shape, w_shape, kw, rng):
    torch = pytest.importorskip("torch")
    transposed = "output_padding" in kw
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    if transposed:
        y = numbaconv.conv_transpose3d(x, w, **kw)
        exact = torch.nn.functional.conv_transpose3d(torch.tensor(x, dtype=torch.float64),
                                                     torch.tensor(w, dtype=torch.float64), **kw)
        mag = reference.conv_transpose3d(np.abs(x).astype(np.float64), np.abs(w), **kw)
        k = w_shape[0] // kw["groups"] * int(np.prod(w_shape[2:]))
    else:
        pads = kw["padding"]
        flat = tuple(v for pair in reversed(pads) for v in pair) if isinstance(pads, tuple) \
            and isinstance(pads[0], tuple) else None
        tx = torch.tensor(x, dtype=torch.float64)
        if flat is not None:
            tx = torch.nn.functional.pad(tx, flat)
        hp = {key: v for key, v in kw.items() if key != "padding"}
        exact = torch.nn.functional.conv3d(tx, torch.tensor(w, dtype=torch.float64),
                                           padding=0 if flat is not None else pads, **hp)
        y = numbaconv.conv3d(x, w, **kw)
        mag = reference.conv3d(np.abs(x).astype(np.float64), np.abs(w), **kw)
        k = int(np.prod(w_shape[1:]))
    u = np.finfo(np.float32).eps
    assert np.all(np.abs(y - exact.numpy()) <= 2 * (k + 1) * u * mag + 1e-30)


def test_unbatched_out_threads_and_errors(rng):
    x = rng.standard_normal((3, 6, 7, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3, 3)).astype(np.float32)
    runs = []
    for threads in (1, 2):
        with numbaconv.num_threads(threads):
            runs.append(numbaconv.conv3d(x, w, padding=1))
    assert runs[0].shape == (4, 6, 7, 8) and np.array_equal(runs[0], runs[1])
    out = np.empty((1, 4, 6, 7, 8), np.float32)
    assert numbaconv.conv3d(x[None], w, padding=1, out=out) is out
    assert np.array_equal(out[0], runs[0])
    with pytest.raises(ValueError, match="weight must have 5 dimensions"):
        numbaconv.conv3d(x, w[0], padding=1)
    with pytest.raises(ValueError, match="input must have shape"):
        numbaconv.conv3d(x[0], w)
    with pytest.raises(ValueError, match="algorithm must be"):
        numbaconv.conv3d(x, w, algorithm="fastest")


@pytest.mark.parametrize("x_shape, w_shape, kw", FORWARD[:12] + TRANSPOSED[:10])
def test_3d_gradients_satisfy_the_adjoint_identities_exactly(x_shape, w_shape, kw, rng):
    from numbaconv import grad

    transposed = "output_padding" in kw
    x = rng.integers(-4, 5, x_shape).astype(np.float64)
    w = rng.integers(-4, 5, w_shape).astype(np.float64)
    fwd = numbaconv.conv_transpose3d if transposed else numbaconv.conv3d
    vjp = grad.conv_transpose3d_vjp if transposed else grad.conv3d_vjp
    y = fwd(x, w, **kw)
    g = rng.integers(-4, 5, y.shape).astype(np.float64)
    dx, dw, db = vjp(x, w, g, **kw)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (y.shape[1],)
    assert np.sum(x * dx) == np.sum(y * g) == np.sum(w * dw)
    weight_fn = grad.conv_transpose3d_weight if transposed else grad.conv3d_weight
    assert np.array_equal(dw, weight_fn(x, w.shape, g, **kw, algorithm="reference"))


def test_3d_gradients_against_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    from numbaconv import grad

    x = rng.standard_normal((2, 4, 5, 6, 7))
    w = rng.standard_normal((6, 2, 3, 2, 3))
    kw = dict(stride=(2, 1, 1), padding=(1, 1, 0), dilation=(1, 2, 1), groups=2)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    y = torch.nn.functional.conv3d(tx, tw, **kw)
    g = rng.standard_normal(tuple(y.shape))
    y.backward(torch.tensor(g))
    dx, dw, _ = grad.conv3d_vjp(x, w, g, **kw)
    ax, aw, _ = grad.conv3d_vjp(np.abs(x), np.abs(w), np.abs(g), **kw)
    u = np.finfo(np.float64).eps
    assert np.all(np.abs(dx - tx.grad.numpy()) <= 2 * 6 * 18 * u * ax + 1e-300)
    assert np.all(np.abs(dw - tw.grad.numpy()) <= 2 * y.numel() * u * aw + 1e-300)
