"""numbaconv: fast CPU convolution for NumPy arrays, with torch.nn.functional semantics.

>>> import numpy as np, numbaconv
>>> y = numbaconv.conv2d(np.ones((1, 3, 32, 32), np.float32), np.ones((8, 3, 3, 3), np.float32))
>>> y.shape, y.dtype
((1, 8, 30, 30), dtype('float32'))
"""

from . import grad, reference, shapes, tuning
from ._compile import precompile
from ._threads import get_num_threads, num_threads, set_num_threads
from .dispatch import UnsupportedAlgorithm
from .functional import (algorithms, conv1d, conv2d, conv3d, conv_transpose1d,
                         conv_transpose2d, conv_transpose3d, explain)
from .layers import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from .plan import Conv2dPlan, plan_conv2d
from .plan_transposed import ConvTranspose2dPlan, plan_conv_transpose2d
from .problem import ConvProblem
from .summary import Summary, summary

__version__ = "0.1.0"

__all__ = [
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "explain", "algorithms", "plan_conv2d", "Conv2dPlan", "plan_conv_transpose2d",
    "ConvTranspose2dPlan",
    "ConvProblem", "UnsupportedAlgorithm", "reference", "shapes", "tuning", "grad",
    "set_num_threads", "get_num_threads", "num_threads", "precompile",
    "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "summary", "Summary",
]
