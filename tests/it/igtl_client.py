"""OpenIGTLink client side of the protocols test: pyigtl (the Slicer community's client) against a
running `pocusd run`, plus one raw socket that checks the header bytes and the CRC-64 with
pyigtl's own CRC function, and one that connects and never reads.

Usage: igtl_client.py PORT. Prints one JSON object per phase on stdout:
  phase 1 ("received"): what two pyigtl clients got, the raw header check, how many distinct
  frames the reading client saw while the stalled one never read; then it closes the second
  client and the stalled socket and waits for a line on stdin;
  phase 2 ("last"): after the test paused the daemon, the newest Measurement's seq and its
  verdict (quality, doubt).
"""

import json
import socket
import struct
import sys
import time

import numpy as np
import pyigtl
from pyigtl.messages import CRC64

PORT = int(sys.argv[1])
DEADLINE_S = 60


def raw_check():
    """Reads three whole messages from a plain socket: header version, CRC, device names."""
    s = socket.create_connection(("127.0.0.1", PORT), timeout=DEADLINE_S)

    def read(n):
        b = b""
        while len(b) < n:
            chunk = s.recv(n - len(b))
            if not chunk:
                raise RuntimeError("connection closed")
            b += chunk
        return b

    out = []
    for _ in range(3):
        h = read(58)
        version, kind, device, sec, frac, size, crc = struct.unpack("> H 12s 20s I I Q Q", h)
        body = read(size)
        ext_size, meta_header, meta_body, msg_id = struct.unpack("> H H I I", body[:12])
        out.append({
            "version": version,
            "type": kind.rstrip(b"\0").decode(),
            "device": device.rstrip(b"\0").decode(),
            "crc_ok": CRC64(body) == crc,
            "extended_header": ext_size,
            "metadata_bytes": meta_header + meta_body,
            "timestamp": sec + frac / 2**32,
        })
    s.close()
    return out


def spacing(m):
    return [float(np.linalg.norm(m.ijk_to_world_matrix[0:3, i])) for i in range(3)]


def main():
    raw = raw_check()
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", PORT))
    c1 = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=PORT)
    c2 = pyigtl.OpenIGTLinkClient(host="127.0.0.1", port=PORT)
    got = {}
    for name, c in (("c1", c1), ("c2", c2)):
        img = c.wait_for_message("Image", timeout=DEADLINE_S)
        pred = c.wait_for_message("Prediction", timeout=DEADLINE_S)
        meas = c.wait_for_message("Measurement", timeout=DEADLINE_S)
        got[name] = None if img is None or pred is None or meas is None else {
            "image_shape": list(img.image.shape),
            "image_dtype": str(img.image.dtype),
            "image_spacing": spacing(img),
            "image_mean": float(img.image.mean()),
            "image_seq": img.metadata.get("seq"),
            "prediction_shape": list(pred.image.shape),
            "prediction_spacing": spacing(pred),
            "prediction_values": sorted(int(v) for v in np.unique(pred.image)),
            "prediction_ones": int((pred.image == 1).sum()),
            "measurement": json.loads(meas.string),
            "measurement_timestamp": meas.timestamp,
            "header_version": meas.header_version,
        }
    # c1 keeps reading for 5 s while the stalled socket never reads.
    seqs = set()
    values = {}
    t_end = time.time() + 5
    while time.time() < t_end:
        m = c1.wait_for_message("Measurement", timeout=1)
        if m is not None:
            rec = json.loads(m.string)
            seqs.add(rec["seq"])
            values[rec["seq"]] = rec["values"]
    got["c1_distinct_frames_while_one_stalls"] = len(seqs)
    got["raw"] = raw
    print(json.dumps({"phase": "received", **got}), flush=True)
    c2.stop()
    stalled.close()
    sys.stdin.readline()
    # The daemon is paused now: the newest Measurement is the last frame processed.
    time.sleep(1.0)
    last = max(seqs) if seqs else None
    while True:
        m = c1.wait_for_message("Measurement", timeout=1.5)
        if m is None:
            break
        rec = json.loads(m.string)
        last = rec["seq"]
        values[last] = rec["values"]
    v = values.get(last, {})
    print(json.dumps({"phase": "last", "seq": last, "quality": v.get("quality"),
                      "doubt": v.get("doubt")}), flush=True)
    c1.stop()


main()
