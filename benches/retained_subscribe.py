#!/usr/bin/env python3
# Router work per SUBSCRIBE with many retained topics: publishes N retained topics dev/<i>/state (QoS 1), then one
# client subscribes to dev/<i>/# 500 times, one at a time, timing SUBSCRIBE until its retained message arrives.
#
#   python3 benches/retained_subscribe.py PORT [N]      # against a broker already listening on 127.0.0.1:PORT
#
# Needs paho-mqtt (pip install paho-mqtt). Results: docs/BENCHMARKS.md, "Retained messages at subscribe".
import sys, time, threading
import paho.mqtt.client as mqtt
port = int(sys.argv[1]); n = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rpub")
pub.connect("127.0.0.1", port); pub.loop_start()
infos = [pub.publish(f"dev/{i}/state", b"x" * 32, qos=1, retain=True) for i in range(n)]
for inf in infos: inf.wait_for_publish(60)
pub.loop_stop()
got = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rsub")
c.on_message = lambda cl, u, m: got.set()
c.connect("127.0.0.1", port); c.loop_start()
times = []
for k in range(500):
    got.clear(); t = time.perf_counter()
    c.subscribe(f"dev/{(k * 97) % n}/#", qos=0)
    got.wait(10); times.append(time.perf_counter() - t)
    c.unsubscribe(f"dev/{(k * 97) % n}/#")
times.sort()
print(f"retained {n}: subscribe->retained p50 {times[250]*1000:.2f} ms p99 {times[495]*1000:.2f} ms")
