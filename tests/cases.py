"""Convolution cases for the algorithm tests: a hand-picked list of corner cases plus a seeded
random sample of the grid (kernel 1/2/3/4/5/7/11 and non-square, stride 1-4, padding int/pair/
'same'/asymmetric, dilation 1-3, groups 1/2/4/depthwise with multiplier 1 and 2, bias or not,
batch 1-3, odd and non-square inputs, float32 and float64), 3x3 stride-1 tiling cases and
stride-1 transposed cases (which run as forward convolutions)."""

from dataclasses import dataclass

import numpy as np

from numbaconv.problem import ConvProblem


@dataclass(frozen=True)
class Case:
    """Arguments of one conv2d / conv_transpose2d call, by shapes."""

    x_shape: tuple
    w_shape: tuple
    bias: bool = True
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    transposed: bool = False
    output_padding: object = 0
    dtype: str = "float32"

    @property
    def problem(self):
        if self.transposed:
            return ConvProblem.for_conv_transpose(
                self.x_shape, self.w_shape, bias=self.bias, stride=self.stride,
                padding=self.padding, output_padding=self.output_padding, groups=self.groups,
                dilation=self.dilation, dtype=self.dtype)
        return ConvProblem.for_conv(self.x_shape, self.w_shape, bias=self.bias,
                                    stride=self.stride, padding=self.padding,
                                    dilation=self.dilation, groups=self.groups, dtype=self.dtype)

    @property
    def kwargs(self):
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                  groups=self.groups)
        if self.transposed:
            kw["output_padding"] = self.output_padding
        return kw

    def __str__(self):
        return str(self.problem)

    def arrays(self, rng, kind="int"):
        """(x, w, b): integer-valued in [-4, 4] (``kind='int'``) or standard normal."""
        dtype = np.dtype(self.dtype)

        def draw(shape):
            if kind == "int":
                return rng.integers(-4, 5, size=shape).astype(dtype)
            return rng.standard_normal(shape).astype(dtype)

        out_channels = self.problem.out_channels
        return (draw(self.x_shape), draw(self.w_shape),
                draw((out_channels,)) if self.bias else None)


def _valid(case):
    try:
        case.problem
    except ValueError:
        return False
    return True


def forward_corner_cases():
    c = Case
    return [
        c((1, 1, 1, 1), (1, 1, 1, 1)),
        c((2, 3, 5, 7), (4, 3, 1, 1)),                                   # 1x1 plain GEMM
        c((1, 3, 8, 8), (5, 3, 1, 1), stride=2),                         # strided 1x1
        c((1, 3, 8, 8), (5, 3, 1, 1), padding=1),                        # padded 1x1
        c((1, 2, 7, 9), (3, 2, 3, 3), padding="same"),
        c((1, 2, 7, 9), (3, 2, 4, 2), padding="same", dilation=(1, 3)),  # even kernel, extra pad
        c((1, 2, 6, 6), (3, 2, 3, 3), padding=((0, 2), (3, 1))),         # asymmetric
        c((1, 2, 3, 3), (3, 2, 3, 3), padding=5),                        # padding > kernel
        c((1, 2, 4, 20), (3, 2, 3, 11), padding=(1, 5)),                 # kernel > height
        c((3, 4, 11, 13), (8, 1, 3, 3), padding=1, groups=4),            # depthwise x2
        c((1, 4, 9, 9), (4, 1, 5, 5), padding=2, groups=4, stride=2),    # depthwise s2
        c((1, 4, 9, 9), (4, 1, 3, 3), padding=2, groups=4, dilation=2),  # depthwise dilated
        c((1, 8, 10, 10), (8, 2, 3, 3), padding=1, groups=4),            # grouped
        c((2, 3, 224 // 8, 224 // 8), (16, 3, 11, 11), stride=4, padding=2),
        c((1, 1, 40, 33), (1, 1, 7, 7), padding=3),                      # single channel
        c((1, 1, 17, 17), (6, 1, 5, 5), padding=2),
        c((1, 40, 5, 5), (70, 40, 3, 3), padding=1),                     # channel remainders
        c((1, 33, 12, 12), (17, 33, 3, 3), stride=(1, 2), dilation=(2, 1), padding=(2, 1)),
        c((2, 16, 15, 15), (16, 16, 1, 1), bias=False),
    ]


def transposed_corner_cases():
    c = Case
    return [
        c((1, 1, 1, 1), (1, 1, 1, 1), transposed=True),
        c((1, 3, 2, 2), (3, 1, 2, 2), stride=2, transposed=True),
        c((1, 4, 6, 6), (4, 2, 3, 3), stride=2, padding=1, output_padding=1, transposed=True),
        c((2, 4, 5, 7), (4, 3, 4, 4), stride=2, padding=1, transposed=True),
        c((1, 6, 5, 5), (6, 2, 3, 3), stride=3, padding=2, output_padding=2, groups=3,
          transposed=True),
        c((1, 4, 5, 5), (4, 1, 3, 3), stride=2, groups=4, transposed=True),   # depthwise
        c((1, 2, 5, 6), (2, 3, 3, 2), stride=(2, 3), dilation=(2, 1),
          padding=((1, 3), (0, 2)), output_padding=(1, 2), transposed=True),
        c((1, 3, 4, 4), (3, 5, 5, 5), dilation=3, padding=4, output_padding=2, transposed=True),
        c((1, 40, 3, 3), (40, 33, 4, 4), stride=2, padding=1, transposed=True),
        c((1, 8, 4, 4), (8, 8, 1, 1), transposed=True, bias=False),
        # runs of work items that start inside an image, a group and a channel block, and
        # revisit channel blocks of later images (rows and weight blocks copied on first use)
        c((3, 4, 9, 18), (4, 20, 3, 3), stride=2, padding=1, groups=2, transposed=True),
    ]


def random_cases(count, transposed, seed):
    """``count`` valid random cases (seeded: the same list on every run)."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        kind = rng.choice(["dense", "grouped", "depthwise"], p=[0.5, 0.25, 0.25])
        if kind == "dense":
            groups, cin_g, cout_g = 1, int(rng.integers(1, 9)), int(rng.integers(1, 20))
        elif kind == "grouped":
            groups = int(rng.choice([2, 4]))
            cin_g, cout_g = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        else:
            groups = int(rng.integers(1, 9))
            cin_g, cout_g = 1, int(rng.choice([1, 2]))
        if rng.random() < 0.2:
            k = int(rng.choice([1, 2, 3, 4, 5, 7, 11]))
            kernel = (k, k)
        else:
            kernel = tuple(int(rng.choice([1, 2, 3, 4, 5])) for _ in range(2))
        stride = tuple(int(rng.integers(1, 5)) for _ in range(2))
        dilation = tuple(int(rng.choice([1, 1, 2, 3])) for _ in range(2))
        size = tuple(int(rng.integers(1, 24)) for _ in range(2))
        batch = int(rng.integers(1, 4))
        form = rng.integers(0, 5)
        if form == 0:
            padding = int(rng.integers(0, 4))
        elif form == 1:
            padding = tuple(int(rng.integers(0, 4)) for _ in range(2))
        elif form == 2 and not transposed and stride == (1, 1):
            padding = "same"
        else:
            padding = tuple(tuple(int(v) for v in rng.integers(0, 4, 2)) for _ in range(2))
        x_shape = (batch, groups * cin_g) + size
        if transposed:
            w_shape = (groups * cin_g, cout_g) + kernel
            output_padding = tuple(int(rng.integers(0, max(s, d)))
                                   for s, d in zip(stride, dilation))
        else:
            w_shape = (groups * cout_g, cin_g) + kernel
            output_padding = 0
        case = Case(x_shape, w_shape, bias=bool(rng.random() < 0.7), stride=stride,
                    padding=padding, dilation=dilation, groups=groups, transposed=transposed,
                    output_padding=output_padding,
                    dtype=str(rng.choice(["float32", "float64"])))
        if _valid(case):
            cases.append(case)
    return cases


def tile_cases():
    """3x3 stride-1 ungrouped cases for algorithms that cut the output into tiles (Winograd's
    4x4): sizes on and off the tile grid, one tile or many, paddings that leave partial tiles
    at any edge, several images and channel counts."""
    c = Case
    return [
        c((1, 1, 3, 3), (1, 1, 3, 3)),
        c((1, 1, 6, 6), (1, 1, 3, 3), bias=False),
        c((2, 3, 8, 8), (5, 3, 3, 3), padding=1),
        c((1, 4, 9, 13), (6, 4, 3, 3), padding=1, dtype="float64"),
        c((3, 2, 10, 7), (4, 2, 3, 3), padding=((0, 2), (3, 1))),
        c((1, 8, 17, 17), (8, 8, 3, 3), padding="same", bias=False),
        c((1, 5, 4, 30), (3, 5, 3, 3), padding=2),
        c((2, 16, 12, 12), (16, 16, 3, 3), padding=1, dtype="float64"),
        c((1, 33, 7, 5), (17, 33, 3, 3), padding=(2, 0)),
        c((1, 3, 20, 21), (2, 3, 3, 3), padding="valid"),
        c((4, 6, 11, 11), (9, 6, 3, 3), padding=1, bias=False),
        c((1, 2, 1, 40), (3, 2, 3, 3), padding=1),
        c((2, 7, 15, 3), (2, 7, 3, 3), padding=((1, 0), (0, 1)), dtype="float64"),
        c((1, 24, 9, 9), (40, 24, 3, 3), padding=3),
        c((1, 1, 25, 26), (1, 1, 3, 3), padding="same", dtype="float64"),
    ]


def stride1_transposed_cases(count=48, seed=20261205):
    """Stride-1 transposed cases, which the transposed algorithms may run as forward
    convolutions of the flipped weights: half 3x3 ungrouped (Winograd's), half depthwise (any
    kernel, multiplier 1 or 2), with paddings mostly within the kernel's reach (some beyond, which
    stay on the transposed kernels), dilation with output padding, odd sizes and batches."""
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < count:
        if len(cases) % 2 == 0:
            groups, cin_g, cout_g = 1, int(rng.integers(1, 12)), int(rng.integers(1, 20))
            kernel = (3, 3)
        else:
            groups, cin_g, cout_g = int(rng.integers(1, 9)), 1, int(rng.choice([1, 2]))
            kernel = tuple(int(rng.choice([1, 2, 3, 5])) for _ in range(2))
        dilation = tuple(int(rng.choice([1, 1, 2])) for _ in range(2))
        output_padding = tuple(int(rng.integers(0, d)) for d in dilation)
        reach = [d * (k - 1) for d, k in zip(dilation, kernel)]
        padding = tuple((int(rng.integers(0, r + 1 + (rng.random() < 0.1))),
                         int(rng.integers(0, r + a + 1))) for r, a in zip(reach, output_padding))
        case = Case((int(rng.integers(1, 4)), groups * cin_g) + tuple(
                        int(v) for v in rng.integers(1, 20, 2)),
                    (groups * cin_g, cout_g) + kernel, bias=bool(rng.random() < 0.7),
                    padding=padding, dilation=dilation, groups=groups, transposed=True,
                    output_padding=output_padding,
                    dtype=str(rng.choice(["float32", "float64"])))
        if _valid(case):
            cases.append(case)
    return cases


def all_cases(count=150):
    return (forward_corner_cases() + tile_cases() + transposed_corner_cases()
            + stride1_transposed_cases()
            + random_cases(count, False, seed=20261122)
            + random_cases(count, True, seed=20261123))
