"""Real network layers, shared by the tests, the benchmarks and ``numbaconv bench``.

Each :class:`Layer` names one convolution of a published network (batch 1, float32), as the
network's reference implementation (torchvision where it has one) defines it; ``_dgrad`` layers
are the input gradient of the layer of that name, the transposed convolution of ``dL/dy`` that
training computes (``torch.nn.grad.conv2d_input``).
"""

from dataclasses import dataclass, replace

from .problem import ConvProblem


@dataclass(frozen=True)
class Layer:
    """A named convolution: ``name`` says network, kernel, channels and input size."""

    name: str
    problem: ConvProblem

    def with_batch(self, batch):
        return Layer(f"{self.name}_b{batch}", replace(self.problem, batch=batch))

    def __str__(self):
        return self.name


def _conv(name, x, w, stride=1, padding=0, dilation=1, groups=1):
    return Layer(name, ConvProblem.for_conv(x, w, bias=True, stride=stride, padding=padding,
                                            dilation=dilation, groups=groups))


def _tconv(name, x, w, stride=1, padding=0, output_padding=0, groups=1, bias=True):
    return Layer(name, ConvProblem.for_conv_transpose(x, w, bias=bias, stride=stride,
                                                      padding=padding,
                                                      output_padding=output_padding,
                                                      groups=groups))


LAYERS = (
    _conv("resnet50_conv1_7x7s2", (1, 3, 224, 224), (64, 3, 7, 7), 2, 3),
    _conv("resnet50_3x3_c64_56", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
    _conv("resnet50_3x3_c128_28", (1, 128, 28, 28), (128, 128, 3, 3), 1, 1),
    _conv("resnet50_3x3_c256_14", (1, 256, 14, 14), (256, 256, 3, 3), 1, 1),
    _conv("resnet50_3x3s2_c128_56", (1, 128, 56, 56), (128, 128, 3, 3), 2, 1),
    _conv("resnet50_3x3_c512_7", (1, 512, 7, 7), (512, 512, 3, 3), 1, 1),
    _conv("resnet50_1x1_c64to256_56", (1, 64, 56, 56), (256, 64, 1, 1)),
    _conv("resnet50_1x1s2_c512to1024_28", (1, 512, 28, 28), (1024, 512, 1, 1), 2),
    _conv("vgg16_conv1_2_c64_224", (1, 64, 224, 224), (64, 64, 3, 3), 1, 1),
    _conv("alexnet_conv1_11x11s4", (1, 3, 224, 224), (64, 3, 11, 11), 4, 2),
    _conv("deeplab_3x3d2_c256_33", (1, 256, 33, 33), (256, 256, 3, 3), 1, 2, 2),
    _conv("mobilenetv2_dw3x3_c144_56", (1, 144, 56, 56), (144, 1, 3, 3), 1, 1, 1, 144),
    _conv("mobilenetv2_dw3x3s2_c96_112", (1, 96, 112, 112), (96, 1, 3, 3), 2, 1, 1, 96),
    _conv("mobilenetv2_1x1_c192to32_28", (1, 192, 28, 28), (32, 192, 1, 1)),
    _conv("resnext50_3x3g32_c128_56", (1, 128, 56, 56), (128, 4, 3, 3), 1, 1, 1, 32),
    _conv("image_5x5_c1to32_512", (1, 1, 512, 512), (32, 1, 5, 5), 1, 2),
    _conv("image_7x7_c1to1_2048", (1, 1, 2048, 2048), (1, 1, 7, 7), 1, 3),
    _tconv("dcgan_t4x4s2_c512to256_4", (1, 512, 4, 4), (512, 256, 4, 4), 2, 1),
    _tconv("dcgan_t4x4s2_c128to64_16", (1, 128, 16, 16), (128, 64, 4, 4), 2, 1),
    _tconv("unet_t2x2s2_c256to128_64", (1, 256, 64, 64), (256, 128, 2, 2), 2, 0),
    _tconv("t3x3s2_c32to16_128", (1, 32, 128, 128), (32, 16, 3, 3), 2, 1, 1),
    # input gradients (dL/dx) of three layers above: what a training step computes besides them
    _tconv("resnet50_3x3_c64_56_dgrad", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1, bias=False),
    _tconv("mobilenetv2_dw3x3_c144_56_dgrad", (1, 144, 56, 56), (144, 1, 3, 3), 1, 1,
           groups=144, bias=False),
    _tconv("mobilenetv2_dw3x3s2_c96_112_dgrad", (1, 96, 56, 56), (96, 1, 3, 3), 2, 1, 1,
           groups=96, bias=False),
)


def get(name):
    """The layer called ``name`` (a ``_b<N>`` suffix asks for batch N)."""
    base, _, batch = name.rpartition("_b")
    for layer in LAYERS:
        if layer.name == name:
            return layer
        if layer.name == base and batch.isdigit():
            return layer.with_batch(int(batch))
    raise KeyError(f"no layer {name!r}; known: {', '.join(l.name for l in LAYERS)}")
