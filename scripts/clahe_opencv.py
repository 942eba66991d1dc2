#!/usr/bin/env python3
"""Reference CLAHE by OpenCV, for pocusd's comparison tests and golden files.

Usage:
  clahe_opencv.py run CASES.json
      CASES.json: [{"input": "a.png", "clip_limit": 2.0, "tiles": [C, R], "output": "a.bin"}, ...]
      Writes each result as raw 8-bit pixels (rows top to bottom) to "output".
  clahe_opencv.py golden DIR
      Writes small numpy-made inputs and OpenCV's outputs (PNG) plus manifest.json into DIR.
  clahe_opencv.py bench IMAGE [IMAGE...] [--iters N]
      Prints one JSON line per image and thread setting: median and p99 ms of cv2 CLAHE (2.0, 8x8).

The OpenCV version is pinned by scripts/setup.sh; the manifest records the version used.
"""
import json
import os
import sys
import time

import cv2
import numpy as np


def run(cases_path):
    with open(cases_path) as f:
        cases = json.load(f)
    cache = {}
    for c in cases:
        src = cache.get(c["input"])
        if src is None:
            src = cv2.imread(c["input"], cv2.IMREAD_GRAYSCALE)
            if src is None:
                sys.exit(f"cannot read {c['input']}")
            cache = {c["input"]: src}
        cx, cy = c["tiles"]
        out = cv2.createCLAHE(clipLimit=float(c["clip_limit"]), tileGridSize=(int(cx), int(cy))).apply(src)
        out.astype(np.uint8).tofile(c["output"])
    print(json.dumps({"cases": len(cases), "opencv": cv2.__version__}))


def golden(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(20261129)
    inputs = {}
    # Odd sizes, speckle-like texture over a gradient, a bright band and dark corners.
    for name, (w, h) in {"g61x47": (61, 47), "g50x37": (50, 37), "g33x17": (33, 17), "g7x5": (7, 5), "g64x48": (64, 48)}.items():
        y, x = np.mgrid[0:h, 0:w]
        base = 40 + 120 * x / max(w - 1, 1) + 30 * np.sin(y / 3.0)
        speckle = rng.rayleigh(0.8, size=(h, w))
        img = base * speckle
        img[h // 3 : h // 3 + max(h // 10, 1), :] += 90
        img[: h // 4, : w // 5] = 3
        img = np.clip(img, 0, 255).astype(np.uint8)
        path = os.path.join(out_dir, f"{name}.png")
        cv2.imwrite(path, img)
        inputs[name] = img
    cases = []
    for name, img in inputs.items():
        for clip in [0.0, 0.5, 2.0, 40.0]:
            for cx, cy in [(1, 1), (8, 8), (3, 5), (16, 16)]:
                out = cv2.createCLAHE(clipLimit=clip, tileGridSize=(cx, cy)).apply(img)
                out_name = f"{name}_c{clip:g}_t{cx}x{cy}.png"
                cv2.imwrite(os.path.join(out_dir, out_name), out)
                cases.append({"input": f"{name}.png", "clip_limit": clip, "tiles": [cx, cy], "output": out_name})
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump({"opencv": cv2.__version__, "cases": cases}, f, indent=1)
    print(f"wrote {len(cases)} golden cases to {out_dir}")


def bench(paths, iters):
    for path in paths:
        img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        for threads in (1, -1):
            cv2.setNumThreads(threads)
            clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
            for _ in range(max(iters // 10, 1)):
                clahe.apply(img)
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                clahe.apply(img)
                times.append((time.perf_counter() - t0) * 1e3)
            print(json.dumps({
                "width": img.shape[1], "height": img.shape[0], "threads": cv2.getNumThreads(),
                "median_ms": float(np.median(times)), "p99_ms": float(np.percentile(times, 99)),
            }))


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "run":
        run(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "golden":
        golden(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "bench":
        args = sys.argv[2:]
        iters = 500
        if "--iters" in args:
            i = args.index("--iters")
            iters = int(args[i + 1])
            del args[i : i + 2]
        bench(args, iters)
    else:
        sys.exit(__doc__)
