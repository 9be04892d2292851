#!/usr/bin/env python3
"""Writes stage 5 of ResNet-50 (Keras ResNet50 v1 names conv5_block1..3) as ONNX, with
RANDOM weights in the real network's shapes, for timing graft's tail trainer on a
realistic top block without needing the real model.

    .venv/bin/python scripts/make_resnet50_stage5.py OUT.onnx [--batch-free] [--batch N]

Input `conv4_block6_out` [batch, 1024, 14, 14]. Block 1 has a projection shortcut
(Conv 1×1 1024→2048 stride 2) and puts the main path's stride on its first 1×1, as
Keras' ResNet50 v1 does: 1×1 1024→512 stride 2, 3×3 512→512 pad 1, 1×1 512→2048.
Blocks 2 and 3 have identity shortcuts (1×1 2048→512, 3×3 512→512, 1×1 512→2048).
Every Conv has a bias and is followed by BatchNormalization (epsilon 1.001e-5) and,
except the last of each path, Relu; each block ends with Add then Relu
(`conv5_block1_out`, `conv5_block2_out`, `conv5_block3_out`). GlobalAveragePool +
Flatten give `avg_pool` [batch, 2048].

Weights are He-normal from numpy's RNG with seed 0; BatchNormalization's running
statistics are plausible (mean near 0, variance around 1, scale around 1). The batch
dimension is fixed (--batch, default 2) unless --batch-free makes it the free
dimension "batch". The model is checked with onnx.checker and run once in
onnxruntime on a batch of 2 (or N), printing the output shape and the file size.
"""

import argparse
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)
EPSILON = 1.001e-5


def stage5(batch):
    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def conv_bn(x, name, cin, cout, k, stride=1, relu=True):
        """Keras `{name}_conv` (with bias) + `{name}_bn` [+ `{name}_relu`]."""
        w = RNG.normal(0, math.sqrt(2.0 / (cin * k * k)), size=(cout, cin, k, k))
        b = RNG.normal(0, 0.01, size=cout)
        pad = k // 2
        nodes.append(helper.make_node(
            "Conv", [x, init(f"{name}_conv_w", w), init(f"{name}_conv_b", b)], [f"{name}_conv"],
            name=f"{name}_conv", kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        stats = [init(f"{name}_bn_gamma", RNG.uniform(0.7, 1.3, cout)),
                 init(f"{name}_bn_beta", RNG.normal(0, 0.1, cout)),
                 init(f"{name}_bn_mean", RNG.normal(0, 0.1, cout)),
                 init(f"{name}_bn_var", RNG.uniform(0.5, 1.5, cout))]
        nodes.append(helper.make_node("BatchNormalization", [f"{name}_conv", *stats], [f"{name}_bn"],
                                      name=f"{name}_bn", epsilon=EPSILON))
        if not relu:
            return f"{name}_bn"
        nodes.append(helper.make_node("Relu", [f"{name}_bn"], [f"{name}_relu"], name=f"{name}_relu"))
        return f"{name}_relu"

    def block(x, name, cin, stride, projection):
        shortcut = conv_bn(x, f"{name}_0", cin, 2048, 1, stride, relu=False) if projection else x
        y = conv_bn(x, f"{name}_1", cin, 512, 1, stride)
        y = conv_bn(y, f"{name}_2", 512, 512, 3)
        y = conv_bn(y, f"{name}_3", 512, 2048, 1, relu=False)
        nodes.append(helper.make_node("Add", [shortcut, y], [f"{name}_add"], name=f"{name}_add"))
        nodes.append(helper.make_node("Relu", [f"{name}_add"], [f"{name}_out"], name=f"{name}_out"))
        return f"{name}_out"

    x = block("conv4_block6_out", "conv5_block1", 1024, 2, projection=True)
    x = block(x, "conv5_block2", 2048, 1, projection=False)
    x = block(x, "conv5_block3", 2048, 1, projection=False)
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["avg_pool_gap"], name="avg_pool_gap"))
    nodes.append(helper.make_node("Flatten", ["avg_pool_gap"], ["avg_pool"], name="avg_pool", axis=1))
    graph = helper.make_graph(
        nodes, "resnet50_stage5",
        [helper.make_tensor_value_info("conv4_block6_out", TensorProto.FLOAT, [batch, 1024, 14, 14])],
        [helper.make_tensor_value_info("avg_pool", TensorProto.FLOAT, [batch, 2048])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-free", action="store_true", help='a free batch dimension "batch"')
    parser.add_argument("--batch", type=int, default=2, help="the fixed batch size otherwise (default 2)")
    args = parser.parse_args()
    model = stage5("batch" if args.batch_free else args.batch)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, args.out)

    n = 2 if args.batch_free else args.batch
    x = np.maximum(np.random.default_rng(1).normal(0, 1, size=(n, 1024, 14, 14)), 0).astype(np.float32)
    names = ["conv5_block1_out", "conv5_block2_out", "conv5_block3_out", "avg_pool"]
    checked = onnx.load(args.out)
    checked.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in names[:-1])
    session = ort.InferenceSession(checked.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = dict(zip(names, session.run(names, {"conv4_block6_out": x})))
    for name in names[:-1]:
        assert outputs[name].shape == (n, 2048, 7, 7), (name, outputs[name].shape)
    pooled = outputs["avg_pool"]
    assert pooled.shape == (n, 2048) and np.isfinite(pooled).all()
    print(f"{args.out}: avg_pool {list(pooled.shape)} (mean {pooled.mean():.3f}, std {pooled.std():.3f}), "
          f"{args.out.stat().st_size / 2**20:.1f} MiB, batch {'free' if args.batch_free else args.batch}")


if __name__ == "__main__":
    main()
