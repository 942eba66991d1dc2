#!/usr/bin/env python3
"""Checks an ONNX file written by pocusd with the reference tools.

usage: check_onnx.py MODEL.onnx [INPUT.f32]

Prints one JSON object: onnx.checker.check_model(full_check=True) verdict, the operators used, the
metadata, and with INPUT.f32 (raw little-endian float32 of the model's input shape) onnxruntime's
output for it, flattened. Exit status 1 when the checker or onnxruntime refuses the file.
"""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main() -> int:
    path = sys.argv[1]
    model = onnx.load(path)
    report = {"checker": "ok"}
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:  # the checker's own exception types vary by version
        report["checker"] = f"failed: {e}"
    report["ops"] = [n.op_type for n in model.graph.node]
    report["metadata"] = {p.key: p.value for p in model.metadata_props}
    report["opset"] = [o.version for o in model.opset_import]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    report["input_shape"] = inp.shape
    if len(sys.argv) > 2:
        x = np.fromfile(sys.argv[2], dtype="<f4").reshape(inp.shape)
        y = sess.run(None, {inp.name: x})[0]
        report["output"] = [float(v) for v in y.reshape(-1)]
    print(json.dumps(report))
    return 0 if report["checker"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
