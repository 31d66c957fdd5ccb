#!/usr/bin/env python3
"""MQTT helpers of the boot test (tests/image/boot-test.sh), independent of Weir's own code.

    mqtt_tools.py connack HOST PORT TIMEOUT
        Sends a bare MQTT 3.1.1 CONNECT (anonymous) and prints the CONNACK return code once one arrives: a
        listening gateway answers even when it refuses the client. Exit 1 if none within TIMEOUT seconds.
        (QEMU's port forwarding accepts TCP connections before the guest listens, so a TCP connect proves
        nothing: only a CONNACK does.)

    mqtt_tools.py load HOST PORT USER PASSWORD TOPIC ACKS_FILE
        Publishes QoS 1 messages "<topic>/<n>" as fast as 20 in flight allow, until killed, and appends n to
        ACKS_FILE (flushed) for every PUBACK: the messages the gateway has promised to keep.
"""

import socket
import struct
import sys
import threading
import time


def connack(host: str, port: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e\x00\x00"  # clean session, keep alive 30, empty client id
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.sendall(connect)
                s.settimeout(5)
                reply = s.recv(4)
                if len(reply) == 4 and reply[0] == 0x20:
                    print(reply[3])
                    return 0
        except OSError:
            pass
        time.sleep(0.2)
    return 1


def load(host: str, port: int, user: str, password: str, topic: str, acks_path: str) -> int:
    import paho.mqtt.client as mqtt

    inflight = threading.Semaphore(20)
    # A PUBACK can be handled (in paho's thread, inside its own lock) before publish() has returned the mid here:
    # whichever of the two comes second records the acknowledgement. Never hold `lock` across publish().
    pending: dict[int, int] = {}
    early: set[int] = set()
    lock = threading.Lock()
    acks = open(acks_path, "a", buffering=1)

    def on_publish(client, userdata, mid, reason_code, properties):
        with lock:
            n = pending.pop(mid, None)
            if n is None:
                early.add(mid)
            else:
                acks.write(f"{n}\n")
        inflight.release()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"load-{topic.replace('/', '-')}",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    client.max_inflight_messages_set(20)
    client.on_publish = on_publish
    client.connect(host, port, keepalive=30)
    client.loop_start()
    n = 0
    while True:
        inflight.acquire()
        n += 1
        info = client.publish(topic, f"{topic}/{n}".encode(), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return 1
        with lock:
            if info.mid in early:
                early.discard(info.mid)
                acks.write(f"{n}\n")
            else:
                pending[info.mid] = n


def main() -> int:
    match sys.argv[1:]:
        case ["connack", host, port, timeout]:
            return connack(host, int(port), float(timeout))
        case ["load", host, port, user, password, topic, acks]:
            return load(host, int(port), user, password, topic, acks)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
