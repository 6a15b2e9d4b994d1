#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""Writes the graph files (nesa-graph(5)) of the vision models in ../shared/data:
the MNIST CNN (share/models/mnist/mnist.json) and the CIFAR-10 ResNets option A
(share/models/cifar/resnet20.json, resnet56.json).  Plain Python, no torch:
the architectures are those in the data folders' SOURCE.md files.

    python3 scripts/make_graphs.py [OUTDIR]      (default: share/models)
"""
import json
import os
import sys


def op(kind, inp, out, **kw):
    d = {"op": kind, "in": inp if isinstance(inp, list) else [inp], "out": out}
    d.update(kw)
    return d


def bn(prefix, x, out):
    return op("batchnorm", x, out, weight=prefix + ".weight", bias=prefix + ".bias",
              mean=prefix + ".running_mean", var=prefix + ".running_var", eps=1e-5)


def block(name, shape, ops, out="x"):
    return {"name": name, "inputs": [{"name": "x", "shape": shape}], "ops": ops, "outputs": [out]}


def mnist():
    # Raw pixels 0..255, as the weights were trained (SOURCE.md).
    blocks = [
        block("conv0", [1, 28, 28], [
            op("conv2d", "x", "x", weight="layers.0.weight", bias="layers.0.bias"),
            op("relu", "x", "x")]),
        block("conv2", [32, 24, 24], [
            op("conv2d", "x", "x", weight="layers.2.weight", bias="layers.2.bias"),
            op("relu", "x", "x"),
            bn("layers.4", "x", "x"),
            op("maxpool", "x", "x", kernel=2)]),
        block("conv6", [32, 10, 10], [
            op("conv2d", "x", "x", weight="layers.6.weight", bias="layers.6.bias"),
            op("relu", "x", "x"),
            op("conv2d", "x", "x", weight="layers.8.weight", bias="layers.8.bias"),
            op("relu", "x", "x"),
            bn("layers.10", "x", "x"),
            op("maxpool", "x", "x", kernel=2)]),
        block("classifier", [64, 3, 3], [
            op("flatten", "x", "x"),
            op("linear", "x", "logits", weight="layers.13.weight", bias="layers.13.bias")],
            out="logits"),
    ]
    return {"graph_version": 1, "name": "mnist-cnn", "arch": "cnn", "n_blocks": len(blocks),
            "weights": "mnist.safetensors", "blocks": blocks}


def resnet(depth):
    n = (depth - 2) // 6
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    # Pixels 0..255 -> (x / 255 - mean) / std, per channel.
    scale = [1.0 / (255.0 * s) for s in std]
    shift = [-m / s for m, s in zip(mean, std)]
    blocks = [block("stem", [3, 32, 32], [
        op("channel_affine", "x", "x", scale=scale, shift=shift),
        op("conv2d", "x", "x", weight="conv1.weight", padding=1),
        bn("bn1", "x", "x"),
        op("relu", "x", "x")])]
    c, hw = 16, 32
    for layer, planes in ((1, 16), (2, 32), (3, 64)):
        for i in range(n):
            stride = 2 if (layer > 1 and i == 0) else 1
            p = "layer%d.%d" % (layer, i)
            ops = [
                op("conv2d", "x", "h", weight=p + ".conv1.weight", stride=stride, padding=1),
                bn(p + ".bn1", "h", "h"),
                op("relu", "h", "h"),
                op("conv2d", "h", "h", weight=p + ".conv2.weight", padding=1),
                bn(p + ".bn2", "h", "h")]
            if stride != 1 or c != planes:
                # Option A: x[:, ::2, ::2] with planes/4 zero channels on each side.
                ops.append(op("pad_channels", "x", "s", stride=stride, pad=planes // 4))
                ops.append(op("add", ["h", "s"], "x"))
            else:
                ops.append(op("add", ["h", "x"], "x"))
            ops.append(op("relu", "x", "x"))
            blocks.append(block(p, [c, hw, hw], ops))
            c, hw = planes, hw // stride
    blocks.append(block("classifier", [64, 8, 8], [
        op("global_avgpool", "x", "x"),
        op("linear", "x", "logits", weight="linear.weight", bias="linear.bias")], out="logits"))
    return {"graph_version": 1, "name": "resnet%d" % depth, "arch": "cnn",
            "n_blocks": len(blocks), "weights": "resnet%d.safetensors" % depth, "blocks": blocks}


def write(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "share", "models")
    os.makedirs(os.path.join(out, "mnist"), exist_ok=True)
    os.makedirs(os.path.join(out, "cifar"), exist_ok=True)
    write(os.path.join(out, "mnist", "mnist.json"), mnist())
    write(os.path.join(out, "cifar", "resnet20.json"), resnet(20))
    write(os.path.join(out, "cifar", "resnet56.json"), resnet(56))


if __name__ == "__main__":
    main()
