"""Train a small CNN in pure NumPy with numbaconv's convolutions and gradients.

The data are synthetic 16 x 16 images of ten kinds of strokes (horizontal, vertical, both
diagonals, a cross, an X, a box, a filled square, a ring, a dot), randomly shifted, scaled in
brightness and drowned in noise, so the classes are not separable by position or brightness.
The network: Conv2d(1, 8, 3, stride 2, padding 1) - ReLU - Conv2d(8, 16, 3, stride 2, padding 1)
- ReLU - Linear(256, 10), softmax cross-entropy, SGD with momentum. Chance is 10 %.

    python examples/train_cnn.py [--epochs 10] [--train 12000] [--seed 0]
"""

import argparse
import time

import numpy as np

import numbaconv

SIZE = 16
CLASSES = 10


def _stroke(kind, size=SIZE):
    img = np.zeros((size, size), np.float32)
    c, r = size // 2, size // 4
    ii, jj = np.mgrid[:size, :size]
    if kind == 0:
        img[c, c - r:c + r] = 1
    elif kind == 1:
        img[c - r:c + r, c] = 1
    elif kind in (2, 3, 5):
        d = np.arange(-r, r)
        if kind in (2, 5):
            img[c + d, c + d] = 1
        if kind in (3, 5):
            img[c + d, c - d] = 1
    elif kind == 4:
        img[c, c - r:c + r] = 1
        img[c - r:c + r, c] = 1
    elif kind == 6:
        img[c - r:c + r, [c - r, c + r - 1]] = 1
        img[[c - r, c + r - 1], c - r:c + r] = 1
    elif kind == 7:
        img[c - r // 2:c + r // 2, c - r // 2:c + r // 2] = 1
    elif kind == 8:
        dist = np.hypot(ii - c + 0.5, jj - c + 0.5)
        img[(dist > r - 1) & (dist < r)] = 1
    else:
        img[c - 1:c + 1, c - 1:c + 1] = 1
    return img


def make_data(count, rng):
    """``count`` images (N, 1, 16, 16) float32 and their labels."""
    labels = rng.integers(0, CLASSES, count)
    shifts = rng.integers(-3, 4, (count, 2))
    images = np.empty((count, 1, SIZE, SIZE), np.float32)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
        img = np.roll(_stroke(label), (dy, dx), axis=(0, 1)) * rng.uniform(0.5, 1.5)
        images[i, 0] = img + rng.normal(0, 0.35, (SIZE, SIZE))
    return images, labels


class Model:
    def __init__(self, rng):
        self.conv1 = numbaconv.Conv2d(1, 8, 3, stride=2, padding=1, rng=rng)
        self.conv2 = numbaconv.Conv2d(8, 16, 3, stride=2, padding=1, rng=rng)
        bound = 1 / np.sqrt(16 * 4 * 4)
        self.fc_w = rng.uniform(-bound, bound, (16 * 4 * 4, CLASSES)).astype(np.float32)
        self.fc_b = np.zeros(CLASSES, np.float32)
        self.params = [self.conv1.weight, self.conv1.bias, self.conv2.weight, self.conv2.bias,
                       self.fc_w, self.fc_b]
        self.velocity = [np.zeros_like(p) for p in self.params]

    def forward(self, x):
        self.a1 = np.maximum(self.conv1(x), 0)
        self.a2 = np.maximum(self.conv2(self.a1), 0)
        self.flat = self.a2.reshape(len(x), -1)
        return self.flat @ self.fc_w + self.fc_b

    def backward(self, dlogits):
        d_fc_w = self.flat.T @ dlogits
        d_fc_b = dlogits.sum(axis=0)
        d_a2 = (dlogits @ self.fc_w.T).reshape(self.a2.shape) * (self.a2 > 0)
        d_a1, d_w2, d_b2 = self.conv2.backward(d_a2)
        d_a1 *= self.a1 > 0
        _, d_w1, d_b1 = self.conv1.backward(d_a1)
        return [d_w1, d_b1, d_w2, d_b2, d_fc_w, d_fc_b]

    def step(self, grads, lr, momentum=0.9):
        for p, v, g in zip(self.params, self.velocity, grads):
            v *= momentum
            v -= lr * g
            p += v  # in place: the layers hold these arrays


def softmax_cross_entropy(logits, labels):
    """Mean loss and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(shifted)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -np.log(p[np.arange(n), labels] + 1e-12).mean()
    p[np.arange(n), labels] -= 1
    return loss, p / n


def accuracy(model, x, y, batch=500):
    hits = sum((model.forward(x[i:i + batch]).argmax(axis=1) == y[i:i + batch]).sum()
               for i in range(0, len(x), batch))
    return hits / len(x)


def train(epochs=10, train_count=12000, test_count=1000, batch=32, lr=0.05, seed=0, log=print):
    rng = np.random.default_rng(seed)
    x_train, y_train = make_data(train_count, rng)
    x_test, y_test = make_data(test_count, rng)
    model = Model(rng)
    history = []
    log(f"chance: {1 / CLASSES:.0%}; before training: test accuracy "
        f"{accuracy(model, x_test, y_test):.1%}")
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(train_count)
        losses = []
        for i in range(0, train_count, batch):
            idx = order[i:i + batch]
            loss, dlogits = softmax_cross_entropy(model.forward(x_train[idx]), y_train[idx])
            model.step(model.backward(dlogits), lr)
            losses.append(loss)
        history.extend(losses)
        log(f"epoch {epoch}: loss {np.mean(losses):.3f}, test accuracy "
            f"{accuracy(model, x_test, y_test):.1%} ({time.perf_counter() - start:.1f} s)")
    return accuracy(model, x_test, y_test), history


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--train", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.epochs, args.train, seed=args.seed)


if __name__ == "__main__":
    main()
