"""Driver of scripts/bench-igtl.sh (run inside dbus-run-session): starts `pocusd run` on the demo
(30 fps, screen furniture, both shipped models) with [igtl] on, measures SECONDS with no client,
then SECONDS with READERS plain-socket clients that read and parse every OpenIGTLink message
(CRC-64 checked with pyigtl's function) and one socket that connects and never reads. Prints the
daemon's fps, dropped frames and latency p99 in each phase (from /metrics and `pocusd status`), and
per reader the frames per second, bytes per frame and each frame's age on arrival (capture
timestamp to receipt).

Usage: igtl_bench.py BIN SECONDS READERS
"""

import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from pyigtl.messages import CRC64

BIN, SECONDS, READERS = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])


def reader(port, out):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    buf = bytearray()
    frames = bytes_in = bad_crc = 0
    ages = []
    t_end = time.time() + SECONDS
    while time.time() < t_end:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        buf += chunk
        bytes_in += len(chunk)
        while len(buf) >= 58:
            _, kind, _, sec, frac, size, crc = struct.unpack("> H 12s 20s I I Q Q", buf[:58])
            if len(buf) < 58 + size:
                break
            body = bytes(buf[58:58 + size])
            del buf[:58 + size]
            if CRC64(body) != crc:
                bad_crc += 1
            if kind.rstrip(b"\0") == b"STRING":
                frames += 1
                ages.append((time.time() - (sec + frac / 2**32)) * 1e3)
    s.close()
    ages.sort()
    out.append({
        "fps": frames / SECONDS,
        "kib_per_frame": bytes_in / max(frames, 1) / 1024,
        "bad_crc": bad_crc,
        "age_ms_p50": ages[len(ages) // 2] if ages else float("nan"),
        "age_ms_p99": ages[int(len(ages) * 0.99)] if ages else float("nan"),
    })


def main():
    tmp = tempfile.mkdtemp()
    env = dict(os.environ,
               POCUSD__STORAGE__DIR=os.path.join(tmp, "state"),
               POCUSD__HTTP__LISTEN="127.0.0.1:0",
               POCUSD__IGTL__ENABLED="true",
               POCUSD__IGTL__LISTEN="127.0.0.1:0")
    log = open(os.path.join(tmp, "log"), "w+")
    d = subprocess.Popen([BIN, "run", "--session-bus", "--source", "demo?fps=30&furniture=1",
                          "--extra-model", "models/fascicle.onnx"], env=env, stderr=log)
    try:
        port = http = None
        for _ in range(300):
            text = open(log.name).read()
            m1 = re.search(r"OpenIGTLink server on [0-9.]+:(\d+)", text)
            m2 = re.search(r"viewer at http://([^/]+)/", text)
            if m1 and m2:
                port, http = int(m1.group(1)), m2.group(1)
                break
            time.sleep(0.1)
        if port is None:
            sys.exit("the daemon did not start:\n" + open(log.name).read())
        time.sleep(3)

        def metrics():
            text = urllib.request.urlopen(f"http://{http}/metrics").read().decode()
            return {l.split()[0]: float(l.split()[1]) for l in text.splitlines()
                    if l and not l.startswith("#") and "{" not in l}

        def p99():
            o = subprocess.run([BIN, "status", "--session-bus", "--json"], capture_output=True,
                               text=True, check=True)
            return json.loads(o.stdout)["latency_ms"]["p99"]

        def phase(work):
            a = metrics()
            work()
            b = metrics()
            return ((b["pocusd_frames_total"] - a["pocusd_frames_total"]) / SECONDS,
                    int(b["pocusd_dropped_frames_total"] - a["pocusd_dropped_frames_total"]),
                    p99(), b)

        fps, dropped, lat, _ = phase(lambda: time.sleep(SECONDS))
        print(f"no client:            daemon {fps:5.1f} fps, {dropped} dropped, latency p99 {lat:.1f} ms")
        results = []

        def clients():
            stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stalled.connect(("127.0.0.1", port))
            ts = [threading.Thread(target=reader, args=(port, results)) for _ in range(READERS)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            stalled.close()

        fps, dropped, lat, m = phase(clients)
        print(f"{READERS} readers + 1 stalled: daemon {fps:5.1f} fps, {dropped} dropped, "
              f"latency p99 {lat:.1f} ms; frames not read by slow clients "
              f"{int(m.get('pocusd_igtl_frames_dropped_total', 0))}")
        for i, r in enumerate(results):
            print(f"  reader {i}: {r['fps']:5.1f} frames/s, {r['kib_per_frame']:.0f} KiB a frame, "
                  f"age on arrival p50 {r['age_ms_p50']:.1f} ms, p99 {r['age_ms_p99']:.1f} ms, "
                  f"bad CRC {r['bad_crc']}")
    finally:
        d.terminate()
        d.wait(timeout=30)


main()
