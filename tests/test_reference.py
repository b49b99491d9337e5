"""The reference implementation: hand-computed cases, the seed notes' example, and torch."""

import zlib

import numpy as np
import pytest

from numbaconv import reference

from cases import Case


def test_seed_example_three_channels_two_filters_stride_2_pad_1():
    # The cs231n-style example of the seed notes: its printed output, to the digit.
    w0 = [[[-1, -1, 0], [1, 1, 1], [1, 1, 0]],
          [[1, 1, -1], [0, 0, 0], [1, 1, -1]],
          [[0, -1, 0], [-1, 0, -1], [1, 0, 1]]]
    w1 = [[[-1, 0, 0], [1, 1, 1], [-1, -1, 0]],
          [[1, -1, -1], [-1, 1, -1], [1, -1, 0]],
          [[1, -1, 0], [0, 1, 1], [1, 0, 1]]]
    x = [[[1, 2, 0, 1, 2], [1, 0, 2, 2, 0], [2, 0, 0, 2, 2], [0, 0, 2, 2, 0], [2, 2, 2, 1, 2]],
         [[2, 0, 0, 1, 1], [1, 0, 2, 1, 2], [2, 0, 2, 2, 1], [0, 2, 0, 0, 1], [1, 2, 1, 2, 0]],
         [[0, 0, 2, 1, 2], [0, 1, 0, 2, 0], [1, 1, 0, 0, 2], [0, 0, 0, 1, 1], [0, 1, 2, 0, 2]]]
    out = reference.conv2d(np.array(x, np.float32)[None], np.array([w0, w1], np.float32),
                           np.array([1, 0], np.float32), stride=2, padding=1)
    expected = [[[7, 9, 10], [0, 6, 10], [2, 5, 2]],
                [[4, 4, 4], [5, 1, 2], [2, 6, 0]]]
    assert out.dtype == np.float32
    assert np.array_equal(out, np.array([expected], np.float32))


def test_hand_computed_small_cases():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    # 2x2 sum, stride 2: sums of the four 2x2 blocks
    assert np.array_equal(reference.conv2d(x, np.ones((1, 1, 2, 2)), stride=2),
                          [[[[10, 18], [42, 50]]]])
    # dilation 3 on a 4x4 picks the four corners: 0 + 3 + 12 + 15
    assert np.array_equal(reference.conv2d(x, np.ones((1, 1, 2, 2)), dilation=3), [[[[30]]]])
    # cross-correlation, not convolution: the kernel is not flipped
    w = np.zeros((1, 1, 3, 3))
    w[0, 0, 0, 0] = 1
    assert np.array_equal(reference.conv2d(x, w, padding=1)[0, 0, 1:, 1:], x[0, 0, :3, :3])
    # transposed: each input element stamps the kernel at stride 2
    t = reference.conv_transpose2d(np.array([[[[1.0, 2.0]]]]), np.ones((1, 1, 1, 3)), stride=2)
    assert np.array_equal(t, [[[[1, 1, 3, 2, 2]]]])
    # transposed conv is the adjoint of conv: <conv(x), y> == <x, conv_t(y)>
    rng = np.random.default_rng(0)
    xi = rng.integers(-4, 5, (2, 6, 9, 8)).astype(np.float64)
    wi = rng.integers(-4, 5, (4, 3, 3, 2)).astype(np.float64)
    y = reference.conv2d(xi, wi, stride=2, padding=1, dilation=(1, 2), groups=2)
    yi = rng.integers(-4, 5, y.shape).astype(np.float64)
    back = reference.conv_transpose2d(yi, wi, stride=2, padding=1, dilation=(1, 2), groups=2,
                                      output_size=xi.shape[2:])
    assert np.sum(y * yi) == np.sum(xi * back)


def test_bias_and_groups_hand_computed():
    x = np.ones((1, 4, 3, 3))
    w = np.stack([np.full((2, 1, 1), v) for v in (1.0, 2.0)])  # (2, 2, 1, 1): 2 groups
    out = reference.conv2d(x, w, np.array([10.0, 20.0]), groups=2)
    assert np.array_equal(out[0, 0], np.full((3, 3), 12.0))   # 1 + 1 + 10
    assert np.array_equal(out[0, 1], np.full((3, 3), 24.0))   # 2 + 2 + 20


def test_one_and_three_dimensions_lift_consistently():
    rng = np.random.default_rng(1)
    x = rng.integers(-4, 5, (2, 4, 11)).astype(np.float64)
    w = rng.integers(-4, 5, (6, 2, 3)).astype(np.float64)
    one = reference.conv1d(x, w, stride=2, padding=((1, 2),), groups=2)
    two = reference.conv2d(x[:, :, None], w[:, :, None], stride=(1, 2),
                           padding=((0, 0), (1, 2)), groups=2)
    three = reference.conv3d(x[:, :, None, None], w[:, :, None, None], stride=(1, 1, 2),
                             padding=((0, 0), (0, 0), (1, 2)), groups=2)
    assert np.array_equal(one, two[:, :, 0]) and np.array_equal(one, three[:, :, 0, 0])


# ---------------------------------------------------------------------------------- torch

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _torch_forward(case, x, w, b, nd):
    """torch's result, with asymmetric padding applied by F.pad first."""
    problem = case.problem
    pads = problem.padding
    symmetric = all(lo == hi for lo, hi in pads)
    tx = torch.from_numpy(x)
    if not symmetric:
        flat = [p for pair in reversed(pads) for p in pair]
        tx = F.pad(tx, flat)
    padding = tuple(lo for lo, _ in pads) if symmetric else 0
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    return conv(tx, torch.from_numpy(w), None if b is None else torch.from_numpy(b),
                problem.stride, padding, problem.dilation, problem.groups).numpy()


def _torch_transposed(case, x, w, b, nd):
    """torch's result; asymmetric padding by running with padding 0 and cropping."""
    problem = case.problem
    pads = problem.padding
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    # output_padding only extends the end, so give it to torch via the crop instead
    full = conv(torch.from_numpy(x), torch.from_numpy(w),
                None if b is None else torch.from_numpy(b), problem.stride, 0, 0,
                problem.groups, problem.dilation).numpy()
    index = [slice(None), slice(None)]
    for (lo, _), o in zip(pads, problem.out_size):
        index.append(slice(lo, lo + o))
    result = full[tuple(index)]
    if result.shape[2:] != problem.out_size:  # output_padding reaches past the full result
        padded = np.zeros(problem.output_shape, result.dtype)
        if b is not None:
            padded += b.reshape((1, -1) + (1,) * nd)
        padded[tuple(slice(0, s) for s in result.shape)] = result
        result = padded
    return result


def _random_case(rng, nd, transposed):
    groups = int(rng.choice([1, 1, 2, 3]))
    depthwise = rng.random() < 0.2
    cin_g = 1 if depthwise else int(rng.integers(1, 4))
    cout_g = int(rng.integers(1, 4))
    kernel = tuple(int(v) for v in rng.integers(1, 5, nd))
    stride = tuple(int(v) for v in rng.integers(1, 4, nd))
    dilation = tuple(int(v) for v in rng.integers(1, 4, nd))
    size = tuple(int(v) for v in rng.integers(3, 13 if nd < 3 else 7, nd))
    choice = rng.integers(0, 4)
    if choice == 0 and not transposed and all(s == 1 for s in stride):
        padding = "same"
    elif choice == 1:
        padding = tuple(tuple(int(p) for p in rng.integers(0, 3, 2)) for _ in range(nd))
    else:
        padding = tuple(int(p) for p in rng.integers(0, 3, nd))
    x_shape = (int(rng.integers(1, 4)), groups * cin_g) + size
    if transposed:
        w_shape = (groups * cin_g, cout_g) + kernel
        output_padding = tuple(int(rng.integers(0, max(s, d))) for s, d in zip(stride, dilation))
    else:
        w_shape = (groups * cout_g, cin_g) + kernel
        output_padding = 0
    return Case(x_shape, w_shape, bool(rng.random() < 0.7), stride, padding, dilation, groups,
                transposed, output_padding, str(rng.choice(["float32", "float64"])))


def _torch_cases(count, seed):
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        nd = int(rng.choice([1, 2, 2, 2, 3]))
        case = _random_case(rng, nd, transposed=bool(rng.random() < 0.4))
        try:
            case.problem
        except ValueError:
            continue
        cases.append((nd, case))
    return cases


TORCH_CASES = _torch_cases(600, seed=99)


def test_torch_grid_covers_what_the_issue_asks():
    problems = [c.problem for _, c in TORCH_CASES]
    assert len(problems) >= 500
    assert {s for p in problems for s in p.stride} >= {1, 2, 3}
    assert {d for p in problems for d in p.dilation} >= {1, 2, 3}
    assert any(p.is_depthwise and p.groups > 1 for p in problems)
    assert any(lo != hi for p in problems for lo, hi in p.padding)
    assert any(c.padding == "same" for _, c in TORCH_CASES)
    assert any(len(set(p.kernel_size)) > 1 for p in problems)
    assert any(len(set(p.in_size)) > 1 for p in problems)
    assert {p.batch for p in problems} == {1, 2, 3}
    assert {p.dtype for p in problems} == {"float32", "float64"}
    assert any(p.transposed for p in problems) and not all(p.transposed for p in problems)


@pytest.mark.parametrize("nd,case", TORCH_CASES, ids=[str(c) for _, c in TORCH_CASES])
def test_reference_equals_torch(nd, case):
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    # exact tier: integer data, computed by torch in float64, must match to the bit
    x, w, b = case.arrays(rng)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    ours_fn = {(1, False): reference.conv1d, (2, False): reference.conv2d,
               (3, False): reference.conv3d, (1, True): reference.conv_transpose1d,
               (2, True): reference.conv_transpose2d, (3, True): reference.conv_transpose3d}
    fn = ours_fn[nd, case.transposed]
    theirs = (_torch_transposed if case.transposed else _torch_forward)(case, x64, w64, b64, nd)
    ours = fn(x, w, b, **case.kwargs)
    assert ours.dtype == np.dtype(case.dtype)
    assert np.array_equal(ours, theirs), case
    # random data in the case's dtype: within twice the forward error bound of torch's float64
    x, w, b = case.arrays(rng, kind="normal")
    ours = fn(x, w, b, **case.kwargs)
    exact = (_torch_transposed if case.transposed else _torch_forward)(
        case, x.astype(np.float64), w.astype(np.float64),
        None if b is None else b.astype(np.float64), nd)
    magnitude = fn(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                   None if b is None else np.abs(b).astype(np.float64), **case.kwargs)
    problem = case.problem
    k = problem.in_channels // problem.groups * int(np.prod(problem.kernel_size)) + 1
    u = np.finfo(np.dtype(case.dtype)).eps / 2
    assert np.all(np.abs(ours - exact) <= 2 * k * u * magnitude + 1e-300), case
