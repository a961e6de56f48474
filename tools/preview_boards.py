"""Render PNG previews of the serving and GDN kernel boards from a real scrape of the local stack.

    flock /tmp/stack.lock .cache/venv/bin/python tools/preview_boards.py [--seconds 120]

Starts `gdn-serve run --prometheus` (the tiny model), sends OpenAI traffic with the official
client for `--seconds`, then draws every panel of each board from that Prometheus
(tools/observability/preview.py) into docs/observability/<board>.png, and stops the stack.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))

from observability import boards, preview, traffic

from gdn_serve.serve.processes import free_port, gdn_serve_run

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs/observability"
PREVIEWED = {"qwen35-serving.json": boards.serving, "qwen35-gdn-kernels.json": boards.kernels}
RATE_INTERVAL = "1m"
STEP_S = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to send traffic")
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="preview-") as logs:
        server, _ = gdn_serve_run(Path(logs) / "stack.log", "--prometheus", str(port))
        try:
            server.start(timeout_s=600)
            client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
            start = time.time()
            stop = threading.Event()
            workers = [
                threading.Thread(target=traffic.mixed, args=(client, traffic.MODEL, i, stop))
                for i in range(args.concurrency)
            ]
            for w in workers:
                w.start()
            time.sleep(args.seconds)
            stop.set()
            for w in workers:
                w.join()
            time.sleep(15)  # Ray's export interval and a scrape: the last requests arrive
            base, end = f"http://127.0.0.1:{port}", time.time()
            ranged = preview.range_fetch(base, start, end, STEP_S, RATE_INTERVAL)
            instant = preview.instant_fetch(base, RATE_INTERVAL)
            for name, build in PREVIEWED.items():
                out = OUT / name.replace(".json", ".png")
                preview.render(build(), ranged, instant, start, out)
                print(f"wrote {out.relative_to(ROOT)}")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
