#!/usr/bin/env python3
"""Exports Keras applications.ResNet50 or Xception to ONNX and writes a checked manifest.

    python models/export_keras.py resnet50 --weights imagenet   # needs internet for the weights
    python models/export_keras.py xception --weights none       # random weights, works offline

Needs tensorflow-cpu, tf2onnx and onnx (`make keras-models` installs them in .venv-keras).
The manifest written beside the model names the input, the probabilities output, the
pooled-feature tensor (the GlobalAveragePool output) and the spatial map the pool reads (the
last activation, for localization) with its layout, as found in the exported graph; it
carries no sha256 because every export is a new file (the script prints the file's hash).
The export is then run once with onnxruntime when it is installed.
"""

import argparse
import hashlib
from pathlib import Path

SPECS = {
    # name: (keras constructor, input size, normalisation)
    "resnet50": ("ResNet50", 224, "caffe"),
    "xception": ("Xception", 299, "tf"),
}

MANIFEST = """description = "Keras applications.{cls} exported with models/export_keras.py (NHWC, {normalize} preprocessing)"
file = "{file}"

[input]
name = "input"
layout = "NHWC"
height = {size}
width = {size}
resize = "pad"
normalize = "{normalize}"

[output]
name = "{output}"
kind = "probabilities"
labels = "imagenet_classes.tsv"
features = "{features}"
# The last activation before global pooling, for localization heads.
spatial_features = "{spatial}"
spatial_layout = "{spatial_layout}"
"""


def pooling_node(model_proto):
    """The global-average-pool node (tf2onnx writes it as ReduceMean or GlobalAveragePool)."""
    candidates = [n for n in model_proto.graph.node
                  if n.op_type in ("GlobalAveragePool", "ReduceMean") and "avg_pool" in n.name]
    if len(candidates) != 1:
        raise SystemExit(f"expected one avg_pool node, found {[n.name for n in candidates]}")
    return candidates[0]


def map_layout(node, model_proto):
    """The layout of the pool's input: GlobalAveragePool reads NCHW; ReduceMean over axes 1 and 2
    reads NHWC, over 2 and 3 NCHW (the axes are an attribute before opset 18, an input after)."""
    if node.op_type == "GlobalAveragePool":
        return "NCHW"
    import onnx
    from onnx import numpy_helper
    axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
    if axes is None and len(node.input) > 1:
        init = {i.name: i for i in model_proto.graph.initializer}
        producer = {o: n for n in model_proto.graph.node for o in n.output}
        if node.input[1] in init:
            axes = numpy_helper.to_array(init[node.input[1]]).tolist()
        elif node.input[1] in producer and producer[node.input[1]].op_type == "Constant":
            value = next(a for a in producer[node.input[1]].attribute if a.name == "value")
            axes = numpy_helper.to_array(onnx.helper.get_attribute_value(value)).tolist()
    if sorted(axes or []) == [1, 2]:
        return "NHWC"
    if sorted(axes or []) == [2, 3]:
        return "NCHW"
    raise SystemExit(f"cannot tell the layout of the pool's input from axes {axes}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=sorted(SPECS))
    parser.add_argument("--weights", choices=["imagenet", "none"], default="imagenet")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()

    import onnx
    import tensorflow as tf
    import tf2onnx

    cls, size, normalize = SPECS[args.model]
    weights = None if args.weights == "none" else "imagenet"
    model = getattr(tf.keras.applications, cls)(weights=weights)
    spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input"),)
    path = args.out_dir / f"{args.model}.onnx"
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))

    output = proto.graph.output[0].name
    pool = pooling_node(proto)
    features, spatial, spatial_layout = pool.output[0], pool.input[0], map_layout(pool, proto)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = args.out_dir / f"{args.model}.toml"
    manifest.write_text(MANIFEST.format(cls=cls, file=path.name, size=size, normalize=normalize, output=output,
                                        features=features, spatial=spatial, spatial_layout=spatial_layout))
    onnx.checker.check_model(str(path))
    try:
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probs = session.run([output], {"input": np.zeros((1, size, size, 3), np.float32)})[0]
        assert probs.shape == (1, 1000) and abs(float(probs.sum()) - 1) < 1e-3, probs.shape
        print(f"onnxruntime check: output {output} {probs.shape}, sums to {probs.sum():.4f}")
    except ImportError:
        print("onnxruntime is not installed: skipped the run check (graft models check does it)")
    print(f"wrote {path} (sha256 {sha}) and {manifest} (features: {features}, map: {spatial} {spatial_layout})")


if __name__ == "__main__":
    main()
