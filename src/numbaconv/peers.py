"""The implementations numbaconv is measured against, each behind one small interface.

A :class:`Peer` turns a problem and its arrays into a zero-argument callable that computes the
convolution (operands converted beforehand, outside the timing) and a function that brings its
result back as a NumPy array. Peers whose package is missing report why and are skipped.

* ``numpy-im2col``: what a NumPy user writes: sliding windows, one ``matmul`` per group
  (transposed: ``matmul`` then a scatter-add of the kernel taps).
* ``torch``, ``torch-cl``: ``torch.nn.functional`` on NCHW tensors, and on channels_last tensors
  (activations and weights converted before timing, as a channels_last model keeps them).
* ``onnxruntime``: a one-node ONNX model (Conv or ConvTranspose) in an InferenceSession.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


class Peer:
    name = ""

    def unavailable(self):
        """None if usable here, else why not."""
        return None

    def prepare(self, problem, x, w, b, threads):
        """``(run, to_numpy)``: ``run()`` computes the convolution; ``to_numpy(run())`` is it."""
        raise NotImplementedError


# ------------------------------------------------------------------------------------ NumPy

def numpy_conv2d(problem, x, w, b):
    """Forward convolution by im2col (sliding windows) and one matmul per group."""
    (pt, pb), (pl, pr) = problem.padding
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = problem.kernel_size
    (sh, sw), (dh, dw) = problem.stride, problem.dilation
    oh, ow = problem.out_size
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    windows = sliding_window_view(xp, span, axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    windows = windows[:, :, :oh, :ow]
    n, g = problem.batch, problem.groups
    cin_g, cout_g = problem.in_channels // g, problem.out_channels // g
    # (N, G, Cin_g * kh * kw, OH * OW): the copy into this layout is the im2col
    cols = windows.reshape(n, g, cin_g, oh, ow, kh, kw).transpose(0, 1, 2, 5, 6, 3, 4)
    cols = cols.reshape(n, g, cin_g * kh * kw, oh * ow)
    # (G, 1, Cout_g, K) @ (G, N, K, P) -> (G, N, Cout_g, P)
    out = np.matmul(w.reshape(g, 1, cout_g, cin_g * kh * kw), cols.swapaxes(0, 1))
    out = out.swapaxes(0, 1).reshape(n, problem.out_channels, oh, ow)
    if b is not None:
        out += b[:, None, None]
    return out


def numpy_conv_transpose2d(problem, x, w, b):
    """Transposed convolution: per group, ``W^T @ x`` gives every tap's contribution, which a
    strided slice-add per kernel tap scatters onto the output."""
    n, g = problem.batch, problem.groups
    cin_g, cout_g = problem.in_channels // g, problem.out_channels // g
    h, wd = problem.in_size
    kh, kw = problem.kernel_size
    (sh, sw), (dh, dw) = problem.stride, problem.dilation
    (pt, _), (pl, _) = problem.padding
    oh, ow = problem.out_size
    full_h = max((h - 1) * sh + dh * (kh - 1) + 1, pt + oh)
    full_w = max((wd - 1) * sw + dw * (kw - 1) + 1, pl + ow)
    full = np.zeros((n, problem.out_channels, full_h, full_w), x.dtype)
    for gi in range(g):
        wg = w[gi * cin_g:(gi + 1) * cin_g].reshape(cin_g, cout_g * kh * kw)
        xg = x[:, gi * cin_g:(gi + 1) * cin_g].reshape(n, cin_g, h * wd)
        taps = np.matmul(wg.T, xg).reshape(n, cout_g, kh, kw, h, wd)
        block = full[:, gi * cout_g:(gi + 1) * cout_g]
        for ky in range(kh):
            for kx in range(kw):
                block[:, :, ky * dh: ky * dh + (h - 1) * sh + 1: sh,
                      kx * dw: kx * dw + (wd - 1) * sw + 1: sw] += taps[:, :, ky, kx]
    out = full[:, :, pt:pt + oh, pl:pl + ow]
    if b is not None:
        out = out + b[:, None, None]
    return out


class NumpyIm2col(Peer):
    name = "numpy-im2col"

    def prepare(self, problem, x, w, b, threads):
        fn = numpy_conv_transpose2d if problem.transposed else numpy_conv2d
        return (lambda: fn(problem, x, w, b)), np.asarray


# ------------------------------------------------------------------------------------ torch

class Torch(Peer):
    name = "torch"
    channels_last = False

    def unavailable(self):
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed (pip install numbaconv[peers])"
        return None

    def prepare(self, problem, x, w, b, threads):
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        tb = None if b is None else torch.from_numpy(b)
        if self.channels_last:
            tx = tx.contiguous(memory_format=torch.channels_last)
            tw = tw.contiguous(memory_format=torch.channels_last)
        (pt, pb), (pl, pr) = problem.padding
        if problem.transposed:
            if (pt, pl) != (pb, pr):
                raise NotImplementedError("torch has no asymmetric transposed padding")

            def run():
                with torch.inference_mode():
                    return F.conv_transpose2d(tx, tw, tb, problem.stride, (pt, pl),
                                              problem.output_padding, problem.groups,
                                              problem.dilation)
        else:
            pad = (pt, pl) if (pt, pl) == (pb, pr) else None
            if pad is None:
                tx = F.pad(tx, (pl, pr, pt, pb))
                pad = 0

            def run():
                with torch.inference_mode():
                    return F.conv2d(tx, tw, tb, problem.stride, pad, problem.dilation,
                                    problem.groups)
        return run, lambda y: y.contiguous().numpy()


class TorchChannelsLast(Torch):
    name = "torch-cl"
    channels_last = True


# ------------------------------------------------------------------------------ ONNX Runtime

class OnnxRuntime(Peer):
    name = "onnxruntime"

    def unavailable(self):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime/onnx are not installed (pip install numbaconv[peers])"
        return None

    def prepare(self, problem, x, w, b, threads):
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        if x.dtype != np.float32:
            raise NotImplementedError("onnxruntime's CPU convolutions are float32 only")
        elem = TensorProto.FLOAT
        (pt, pb), (pl, pr) = problem.padding
        inits = [numpy_helper.from_array(w, "W")]
        inputs = ["X", "W"]
        if b is not None:
            inits.append(numpy_helper.from_array(b, "B"))
            inputs.append("B")
        attrs = dict(kernel_shape=list(problem.kernel_size), strides=list(problem.stride),
                     dilations=list(problem.dilation), group=problem.groups,
                     pads=[pt, pl, pb, pr])
        if problem.transposed:
            if any(a >= s for a, s in zip(problem.output_padding, problem.stride)):
                raise NotImplementedError("onnxruntime needs output_padding < stride")
            attrs["output_padding"] = list(problem.output_padding)
        node = helper.make_node("ConvTranspose" if problem.transposed else "Conv", inputs, ["Y"],
                                **attrs)
        graph = helper.make_graph(
            [node], "conv", [helper.make_tensor_value_info("X", elem, list(x.shape))],
            [helper.make_tensor_value_info("Y", elem, list(problem.output_shape))], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = min(model.ir_version, 9)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        feed = {"X": x}
        return (lambda: session.run(None, feed)[0]), np.asarray


PEERS = (NumpyIm2col(), Torch(), TorchChannelsLast(), OnnxRuntime())
