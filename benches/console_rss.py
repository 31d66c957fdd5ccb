#!/usr/bin/env python3
"""The gateway's memory with browsers on the console's live topic view while messages flow.

    benches/console_rss.py [--weir target/release/weir] [--loadgen target/release/weir-loadgen]
                           [--browsers 10] [--rate 10000] [--duration 30]

Starts `weir serve` on fresh ports and a fresh data directory (journal synced, the defaults), makes a console
administrator, and reads the gateway's VmRSS:
  1. idle, 5 s after start;
  2. with N headless Chromium sessions (Debian's chromium and chromium-driver, as in the console tests) signed in
     and on /topics/live?filter=weir-bench/# (server-sent events);
  3. every 0.5 s while `weir-loadgen fan-in` publishes --rate msg/s (QoS 0, 256 B) for --duration seconds, and
     each browser's view shows the messages.
Prints a Markdown table. A benchmark, not a test: it asserts only that every browser received messages.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
from console_journeys import ADMIN, Console  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--weir", default="target/release/weir")
    parser.add_argument("--loadgen", default="target/release/weir-loadgen")
    parser.add_argument("--browsers", type=int, default=10)
    parser.add_argument("--rate", type=int, default=10000)
    parser.add_argument("--duration", type=float, default=30)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="weir-console-rss-")
    data = os.path.join(work, "data")
    mqtt_port, console_port = free_port(), free_port()
    config = os.path.join(work, "weir.toml")
    with open(config, "w") as f:
        f.write(f'data_dir = "{data}"\n[[listener]]\nname = "tcp"\nprotocol = "tcp"\nbind = "127.0.0.1:{mqtt_port}"\n'
                f'[console]\nbind = "127.0.0.1:{console_port}"\n')
    subprocess.run([args.weir, "user", "add", ADMIN[0], "--role", "admin", "--config", config],
                   input=ADMIN[1] + "\n", text=True, check=True, capture_output=True)
    weir = subprocess.Popen([args.weir, "serve", "--config", config], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    url = None
    for line in weir.stdout:
        m = re.match(r"weir: console on (\S+)", line)
        if m:
            url = m.group(1)
            break
    assert url, "weir printed no console address"
    threading.Thread(target=lambda: [None for _ in weir.stdout], daemon=True).start()

    time.sleep(5)
    idle = rss_kb(weir.pid)

    browsers = []
    try:
        for _ in range(args.browsers):
            c = Console(argparse.Namespace(url=url, shots=None), work)
            c.sign_in()
            c.open("/topics/live?filter=weir-bench%2F%23")
            c.wait_for("the live view to connect",
                       lambda d: d.find_element(By.ID, "live").get_attribute("data-open") == "yes")
            browsers.append(c)
        with_browsers = rss_kb(weir.pid)

        samples = []
        load = subprocess.Popen([args.loadgen, "fan-in", "--port", str(mqtt_port), "--clients", "10", "--qos", "0",
                                 "--rate", str(args.rate), "--duration", str(args.duration), "--drain", "2",
                                 "--broker-pid", str(weir.pid), "--broker", "weir"],
                                stdout=subprocess.PIPE, text=True)
        while load.poll() is None:
            samples.append(rss_kb(weir.pid))
            time.sleep(0.5)
        result = load.stdout.read()
        shown = [len(c.driver.find_element(By.ID, "live").text) for c in browsers]
        assert all(n > 0 for n in shown), f"a browser's live view stayed empty: {shown}"
    finally:
        for c in browsers:
            c.driver.quit()
        weir.terminate()
        weir.wait(timeout=30)

    samples.sort()
    mib = lambda kb: f"{kb / 1024:.1f}"
    print(f"| state | gateway RSS (MiB) |\n| --- | ---: |")
    print(f"| idle, console on, 5 s after start | {mib(idle)} |")
    print(f"| {args.browsers} browsers signed in, on the live view | {mib(with_browsers)} |")
    print(f"| during {args.rate} msg/s for {args.duration:g} s: median | {mib(samples[len(samples) // 2])} |")
    print(f"| during {args.rate} msg/s: max | {mib(samples[-1])} |")
    rates = re.search(r'"sent_rate":\s*([\d.]+)', result or "")
    if rates:
        print(f"\nloadgen sent {float(rates.group(1)):.0f} msg/s")
    print(f"\nloadgen result: {result.strip()[:400]}")


if __name__ == "__main__":
    main()
