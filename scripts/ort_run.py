#!/usr/bin/env python3
"""onnxruntime as the reference runtime for pocusd's ONNX files.

Usage:
  ort_run.py run MODEL INPUT.f32 OUTPUT.f32
      Runs MODEL on the raw little-endian float32 tensor in INPUT.f32 (shape taken from the model's
      input) and writes the first output, raw float32, to OUTPUT.f32.
  ort_run.py bench MODEL [--threads N] [--iters K]
      Prints {"runtime": "onnxruntime", "threads", "median_ms", "p99_ms", "input"} for MODEL.
"""
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def session(model, threads=1):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def shape_of(sess):
    return [d if isinstance(d, int) and d > 0 else 1 for d in sess.get_inputs()[0].shape]


def run(model, inp, out):
    sess = session(model)
    x = np.fromfile(inp, dtype="<f4").reshape(shape_of(sess))
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    y.astype("<f4").tofile(out)


def bench(model, threads, iters):
    sess = session(model, threads)
    shape = shape_of(sess)
    x = (np.arange(np.prod(shape)) * 37 % 255 / 255.0).astype(np.float32).reshape(shape)
    name = sess.get_inputs()[0].name
    for _ in range(max(iters // 10, 1)):
        sess.run(None, {name: x})
    t = []
    for _ in range(iters):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        t.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"runtime": "onnxruntime", "version": ort.__version__, "input": shape, "threads": threads,
                      "median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99))}))


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) == 4 and a[0] == "run":
        run(a[1], a[2], a[3])
    elif len(a) >= 2 and a[0] == "bench":
        threads = int(a[a.index("--threads") + 1]) if "--threads" in a else 1
        iters = int(a[a.index("--iters") + 1]) if "--iters" in a else 200
        bench(a[1], threads, iters)
    else:
        sys.exit(__doc__)
