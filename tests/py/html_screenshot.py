"""Opens an HTML page in headless Chromium, screenshots it and records Chromium's network log.

    html_screenshot.py PAGE.html WORKDIR CHART_BACKGROUND

Prints JSON:
  chart_box        [left, top, right, bottom] of the pixels of colour CHART_BACKGROUND (#rrggbb)
                   in the screenshot (null when there are none: the chart did not render)
  chart_pixels     pixels inside that box that are neither the background nor grey (the bars)
  page_requests    URLs the page itself asked for (Chromium's own update and account requests,
                   made with no origin, are not the page's)
  probe_requests   the same for a probe page that loads two remote resources: proves the log
                   sees a page's requests, so that an empty page_requests means something

Chromium runs as the workplace notes say it must here (no sandbox as root, background
networking off, an empty profile). Exits non-zero when Chromium is missing or fails.
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def run_chromium(page, png, netlog, width=1280, height=1400):
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            f"--log-net-log={netlog}",
            "file://" + os.path.abspath(page),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not os.path.exists(png):
        sys.exit(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")


def page_requests(netlog):
    with open(netlog) as f:
        log = json.load(f)
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    urls = []
    for event in log["events"]:
        if names.get(event["type"]) != "URL_REQUEST_START_JOB":
            continue
        params = event.get("params", {})
        if "url" in params and params.get("initiator") != "not an origin":
            urls.append(params["url"])
    return urls


def chart(png, background):
    want = np.array([int(background[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    is_background = (np.abs(pixels - want) <= 2).all(axis=2)
    # The plotting area is a large rectangle; stray anti-aliased pixels elsewhere that happen
    # to match the colour are not: keep rows and columns where the colour is common.
    rows = np.nonzero(is_background.sum(axis=1) >= 200)[0]
    if len(rows) == 0:
        return None, 0
    cols = np.nonzero(is_background[rows].sum(axis=0) >= 50)[0]
    box = [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]
    inside = pixels[box[1] : box[3] + 1, box[0] : box[2] + 1]
    saturation = inside.max(axis=2) - inside.min(axis=2)
    coloured = (~is_background[box[1] : box[3] + 1, box[0] : box[2] + 1]) & (saturation > 60)
    return box, int(coloured.sum())


def main():
    page, work, background = sys.argv[1:4]
    png = os.path.join(work, "page.png")
    netlog = os.path.join(work, "page-netlog.json")
    run_chromium(page, png, netlog)
    box, coloured = chart(png, background)

    probe = os.path.join(work, "probe.html")
    with open(probe, "w") as f:
        f.write(
            '<html><body><img src="http://127.0.0.1:9/x.png">'
            '<link rel="stylesheet" href="https://example.invalid/a.css"></body></html>'
        )
    probe_log = os.path.join(work, "probe-netlog.json")
    run_chromium(probe, os.path.join(work, "probe.png"), probe_log, 800, 600)

    print(
        json.dumps(
            {
                "chart_box": box,
                "chart_pixels": coloured,
                "page_requests": page_requests(netlog),
                "probe_requests": page_requests(probe_log),
            }
        )
    )


if __name__ == "__main__":
    main()
