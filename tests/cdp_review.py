#!/usr/bin/env python3
"""Drives the /review page in headless Chromium through the DevTools protocol (over
--remote-debugging-pipe: NUL-terminated JSON on fds 3 and 4, no extra packages): waits for the
snapshot to open, paints one stroke with real mouse or touch input (Input.dispatchMouseEvent or
Input.dispatchTouchEvent, which the page receives as pointer events), clicks Accept with the mouse,
waits for the answer and prints one JSON object: {"accepted", "width", "height", "radius_px",
"stroke": [[x, y], ...] in frame pixels}.

usage: cdp_review.py URL X0 Y0 X1 Y1 [mouse|touch]   (stroke end points in frame pixels)

With POCUSD_CDP_SPKI set, Chromium trusts the server certificate whose public key has that
base64 SHA-256 (--ignore-certificate-errors-spki-list); with POCUSD_CDP_TOKEN set, it first logs
in on the server's /login page by typing the token (see login()).
"""
import json
import os
import subprocess
import sys
import tempfile
import time


class Chromium:
    def __init__(self, extra_args=()):
        self.profile = tempfile.TemporaryDirectory()
        to_child_r, self.to_child_w = os.pipe()
        self.from_child_r, from_child_w = os.pipe()
        # The child reads commands on fd 3 and writes answers on fd 4.
        def fds():
            # Fresh copies first: a pipe end that already is fd 3 or 4 would stay close-on-exec
            # (dup2 onto itself does nothing).
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--hide-scrollbars", "--window-size=1280,800",
             "--remote-debugging-pipe", f"--user-data-dir={self.profile.name}", *extra_args,
             "about:blank"],
            # Not close_fds: it would close 3 and 4 after preexec_fn; every other descriptor of
            # this process is close-on-exec (os.pipe's are).
            close_fds=False, preexec_fn=fds,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self.buf = b""
        self.next_id = 0
        self.session = None

    def send(self, method, params=None, session=True):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.to_child_w, json.dumps(msg).encode() + b"\0")
        want = self.next_id
        while True:
            m = self.read()
            if m.get("id") == want:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})

    def read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_child_r, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\0", 1)
        return json.loads(line)

    def eval(self, expr):
        r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expr, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline:
            v = self.eval(expr)
            if v:
                return v
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {expr}")

    def close(self):
        self.proc.kill()
        self.proc.wait()

    def open(self, url):
        """A new tab on url, attached."""
        target = self.send("Target.createTarget", {"url": url}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]

    def login(self, origin, token, next_path="/"):
        """Opens origin/login?next=..., types the token into the form and presses Enter (real
        key events); waits for the redirect to next_path."""
        self.open(f"{origin}/login?next={next_path}")
        self.wait("document.getElementById('token') !== null", 30)
        self.eval("document.getElementById('token').focus()")
        self.send("Input.insertText", {"text": token})
        for t in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", {"type": t, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13, "text": "\r"})
        self.wait(f"location.pathname === {json.dumps(next_path)} && document.readyState === 'complete'", 30)


def browser_from_env():
    """A Chromium as POCUSD_CDP_SPKI asks."""
    spki = os.environ.get("POCUSD_CDP_SPKI")
    return Chromium([f"--ignore-certificate-errors-spki-list={spki}"] if spki else [])


def main():
    url = sys.argv[1]
    x0, y0, x1, y1 = (float(v) for v in sys.argv[2:6])
    kind = sys.argv[6] if len(sys.argv) > 6 else "mouse"
    c = browser_from_env()
    try:
        token = os.environ.get("POCUSD_CDP_TOKEN")
        if token:
            origin = "/".join(url.split("/")[:3])
            c.login(origin, token)
            c.send("Page.navigate", {"url": url})
        else:
            c.open(url)
        c.wait("window.reviewState && window.reviewState.ready", 30)
        geo = c.eval("""(() => { const r = document.getElementById('canvas').getBoundingClientRect();
            return {left: r.left, top: r.top, width: r.width, height: r.height,
                    w: document.getElementById('canvas').width, h: document.getElementById('canvas').height,
                    size: Number(document.getElementById('size').value)}; })()""")
        sx, sy = geo["width"] / geo["w"], geo["height"] / geo["h"]
        # Frame pixel (x, y) has its centre at CSS (left + (x + 0.5) * sx, top + (y + 0.5) * sy).
        css = lambda x, y: (geo["left"] + (x + 0.5) * sx, geo["top"] + (y + 0.5) * sy)
        steps = 12
        pts = [(x0 + (x1 - x0) * k / steps, y0 + (y1 - y0) * k / steps) for k in range(steps + 1)]
        if kind == "touch":
            for k, (x, y) in enumerate(pts):
                cx, cy = css(x, y)
                c.send("Input.dispatchTouchEvent", {"type": "touchStart" if k == 0 else "touchMove",
                                                    "touchPoints": [{"x": cx, "y": cy, "id": 1}]})
            c.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        else:
            cx, cy = css(*pts[0])
            c.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": cx, "y": cy})
            c.send("Input.dispatchMouseEvent", {"type": "mousePressed", "x": cx, "y": cy,
                                                "button": "left", "buttons": 1, "clickCount": 1})
            for x, y in pts[1:]:
                cx, cy = css(x, y)
                c.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": cx, "y": cy,
                                                    "button": "left", "buttons": 1})
            c.send("Input.dispatchMouseEvent", {"type": "mouseReleased", "x": cx, "y": cy,
                                                "button": "left", "buttons": 0, "clickCount": 1})
        # Accept with a real click on the button.
        b = c.eval("""(() => { const r = document.getElementById('accept').getBoundingClientRect();
            return {x: r.left + r.width / 2, y: r.top + r.height / 2}; })()""")
        for t in ("mousePressed", "mouseReleased"):
            c.send("Input.dispatchMouseEvent", {"type": t, "x": b["x"], "y": b["y"], "button": "left",
                                                "buttons": 1 if t == "mousePressed" else 0, "clickCount": 1})
        name = c.wait("window.reviewState.accepted", 30)
        print(json.dumps({"accepted": name, "width": geo["w"], "height": geo["h"],
                          "radius_px": geo["size"] / 2, "stroke": pts}))
    finally:
        c.close()


if __name__ == "__main__":
    main()
