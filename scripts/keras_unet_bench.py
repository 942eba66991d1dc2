#!/usr/bin/env python3
"""The comparison for `pocusd bench train`: a plain Keras U-Net (the seed workflow's stack) trained
on the CPU, timed per step.

usage: keras_unet_bench.py [--input 128x128] [--batch 8] [--width 16] [--depth 4] [--steps 10]

Conv-BN-ReLU x2 per level, 2x2 max pooling, Conv2DTranspose upsampling, sigmoid head, Adam,
Dice + BCE; augmentation (flips, rotation, zoom, brightness/contrast, noise) inside the step as
Keras preprocessing layers, so both sides pay for it. Prints one JSON object like pocusd's:
{"images_per_s": .., "step_ms_median": ..}.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers


def unet(h, w, width, depth):
    x = inp = keras.Input((h, w, 1))
    skips = []
    for level in range(depth):
        c = width << level
        for _ in range(2):
            x = layers.Conv2D(c, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        skips.append(x)
        x = layers.MaxPool2D()(x)
    for _ in range(2):
        x = layers.Conv2D(width << depth, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    for level in reversed(range(depth)):
        c = width << level
        x = layers.Conv2DTranspose(c, 2, strides=2)(x)
        x = layers.Concatenate()([x, skips[level]])
        for _ in range(2):
            x = layers.Conv2D(c, 3, padding="same", use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
    out = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inp, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default="128x128")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    w, h = (int(v) for v in a.input.split("x"))
    model = unet(h, w, a.width, a.depth)
    aug = keras.Sequential([
        layers.RandomFlip("horizontal_and_vertical"),
        layers.RandomRotation(10 / 360),
        layers.RandomZoom(0.1),
    ])
    photo = keras.Sequential([layers.RandomBrightness(0.1, value_range=(0, 1)), layers.RandomContrast(0.15),
                              layers.GaussianNoise(0.03)])
    opt = keras.optimizers.Adam(1e-3)
    bce = keras.losses.BinaryCrossentropy()

    @tf.function
    def step(x, y):
        both = aug(tf.concat([x, y], axis=-1), training=True)
        x2 = photo(both[..., :1], training=True)
        y2 = tf.cast(both[..., 1:] > 0.5, tf.float32)
        with tf.GradientTape() as tape:
            p = model(x2, training=True)
            inter = tf.reduce_sum(p * y2, axis=[1, 2, 3])
            dice = (2 * inter + 1) / (tf.reduce_sum(p, axis=[1, 2, 3]) + tf.reduce_sum(y2, axis=[1, 2, 3]) + 1)
            loss = tf.reduce_mean(1 - dice) + bce(y2, p)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(7)
    x = rng.random((a.batch, h, w, 1), dtype=np.float32)
    y = (rng.random((a.batch, h, w, 1)) > 0.8).astype(np.float32)
    times = []
    for i in range(a.steps + 2):
        t0 = time.perf_counter()
        step(x, y).numpy()
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"images_per_s": a.batch * 1e3 / med, "step_ms_median": med, "batch": a.batch,
                      "input": [w, h], "width": a.width, "depth": a.depth, "steps": a.steps,
                      "tensorflow": tf.__version__, "threads": os.cpu_count()}))


if __name__ == "__main__":
    main()
