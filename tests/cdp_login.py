#!/usr/bin/env python3
"""The viewer off loopback in headless Chromium (DevTools pipe, see cdp_review.py): trusting the
daemon's certificate by its public key (POCUSD_CDP_SPKI), it checks what a page without the
session cookie gets, logs in by typing the token on /login, and waits for the viewer to stream
(a frame in the <img> and a measurement's sequence number on the page). Prints one JSON object.

usage: POCUSD_CDP_SPKI=... cdp_login.py ORIGIN TOKEN
"""
import json
import sys

from cdp_review import browser_from_env


def main():
    origin, token = sys.argv[1], sys.argv[2]
    c = browser_from_env()
    out = {}
    try:
        c.open(f"{origin}/healthz")
        # The new tab starts on about:blank: wait for this origin's page.
        c.wait(f"location.origin === {json.dumps(origin)} && document.readyState === 'complete'", 30)
        # Without the cookie: every page and stream answers 401; a token in the URL is refused.
        out["without_cookie"] = c.eval("""(async () => {
            const r = {};
            for (const p of ['/', '/review', '/stream.mjpg', '/events', '/api/review']) {
                r[p] = (await fetch(p)).status;
            }
            return r; })()""")
        out["token_in_url"] = c.eval(f"""(async () => {{
            const r = await fetch('/?token=' + {json.dumps(token)});
            return {{status: r.status, body: await r.text()}}; }})()""")
        c.login(origin, token)
        c.wait("/^[0-9]+$/.test(document.getElementById('seq').textContent)", 30)
        c.wait("document.getElementById('stream').naturalWidth > 0", 30)
        out["seq"] = int(c.eval("document.getElementById('seq').textContent"))
        out["stream_width"] = c.eval("document.getElementById('stream').naturalWidth")
        out["cookie_visible_to_js"] = c.eval("document.cookie.includes('pocusd_session')")
        print(json.dumps(out))
    finally:
        c.close()


if __name__ == "__main__":
    main()
