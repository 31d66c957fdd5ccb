#!/usr/bin/env python3
"""Sparkplug B scenarios against a running gateway, with pysparkplug (an independent Sparkplug implementation)
as edge node and as host. Run in the virtual environment `.ci/setup` makes (`target/venv-sparkplug`), since
pysparkplug pins paho-mqtt < 2. Each scenario prints what it observed as JSON lines; the Rust tests
(`tests/broker/sparkplug_external.rs`) drive them and assert.

Scenarios:
  edge     an edge node "Edge1" of group "Plant" with a device "Pump": births, data by name, data by alias
           alone, a sequence gap, then waits for NCMD (a rebirth request) and, with --die, ends without
           DISCONNECT so that its NDEATH will is published. Prints {"event": "ready"} once it has published, and
           {"event": "ncmd", "metrics": {...}} for each command.
  alias    publishes an NDATA for Plant/Edge1 carrying metric aliases only (no names), seq 1
  certs    subscribes to $sparkplug/certificates/# and prints each retained certificate, decoded by pysparkplug
  forge    publishes under $sparkplug/ (which the gateway must drop) then a marker; a second client subscribed
           to both prints what arrives
  deaths   subscribes to spBv1.0/+/NDEATH/+ and prints each NDEATH (its bdSeq and timestamp) until --wait
"""

import argparse
import json
import os
import sys
import threading
import time

import paho.mqtt.client as paho
import pysparkplug as psp

GROUP, NODE, DEVICE = "Plant", "Edge1", "Pump"


def out(**event):
    print(json.dumps(event), flush=True)


def metrics_json(metrics):
    return {m.name if m.name is not None else f"alias:{m.alias}": m.value for m in metrics}


def raw_client(client_id):
    c = paho.Client(client_id=client_id, clean_session=True)
    return c


def connected(client, port, timeout=10):
    done = threading.Event()
    client.on_connect = lambda *_: done.set()
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    if not done.wait(timeout):
        sys.exit("no CONNACK")
    return client


def edge(args):
    temperature = psp.Metric(timestamp=psp.get_current_timestamp(), name="Temperature", datatype=psp.DataType.DOUBLE,
                             value=20.5, alias=1)
    counter = psp.Metric(timestamp=psp.get_current_timestamp(), name="Counter", datatype=psp.DataType.INT64,
                         value=7, alias=2)
    speed = psp.Metric(timestamp=psp.get_current_timestamp(), name="Speed", datatype=psp.DataType.UINT32,
                       value=1500, alias=3)
    commands = []

    def on_command(_node, message):
        names = metrics_json(message.payload.metrics)
        commands.append(names)
        out(event="ncmd", topic=str(message.topic), metrics=names)

    client = psp.Client(client_id="edge-" + NODE)
    node = psp.EdgeNode(GROUP, NODE, [temperature, counter], client=client, cmd_callback=on_command)
    node.register(psp.Device(DEVICE, [speed]))
    node.connect("127.0.0.1", port=args.port, blocking=False)
    deadline = time.time() + 10
    while not node._connected and time.time() < deadline:
        time.sleep(0.02)
    if not node._connected:
        sys.exit("edge node did not connect")
    time.sleep(0.2)
    node.update([psp.Metric(timestamp=psp.get_current_timestamp(), name="Temperature",
                            datatype=psp.DataType.DOUBLE, value=21.25)])
    node.update_device(DEVICE, [psp.Metric(timestamp=psp.get_current_timestamp(), name="Speed",
                                           datatype=psp.DataType.UINT32, value=1600)])
    # Data by alias alone, as the specification allows once the birth declared the alias.
    by_alias = psp.NData(timestamp=psp.get_current_timestamp(), seq=node._seq, metrics=(
        psp.Metric(timestamp=psp.get_current_timestamp(), name=None, alias=2, datatype=psp.DataType.INT64, value=8),))
    client.publish(psp.Message(topic=psp.Topic(message_type=psp.MessageType.NDATA, group_id=GROUP,
                                               edge_node_id=NODE),
                               payload=by_alias, qos=psp.QoS.AT_LEAST_ONCE, retain=False))
    # A sequence gap: two numbers skipped.
    node._seq
    node._seq
    node.update([psp.Metric(timestamp=psp.get_current_timestamp(), name="Temperature",
                            datatype=psp.DataType.DOUBLE, value=22.0)])
    time.sleep(0.2)
    out(event="ready")
    deadline = time.time() + args.wait
    while time.time() < deadline and len(commands) < args.commands:
        time.sleep(0.02)
    if args.die:
        # No DISCONNECT: the gateway publishes the NDEATH will.
        os._exit(0)
    node.disconnect()


def alias(args):
    client = connected(raw_client("alias-only"), args.port)
    payload = psp.NData(timestamp=psp.get_current_timestamp(), seq=1, metrics=(
        psp.Metric(timestamp=psp.get_current_timestamp(), name=None, alias=1, datatype=psp.DataType.DOUBLE,
                   value=30.5),)).encode(include_dtypes=False)
    info = client.publish(f"spBv1.0/{GROUP}/NDATA/{NODE}", payload, qos=1)
    info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    out(event="published")


def certs(args):
    client = raw_client("certs-" + str(os.getpid()))
    got = []

    def on_message(_c, _u, message):
        kind = message.topic.split("/")[4]
        decoded = (psp.NBirth if kind == "NBIRTH" else psp.DBirth).decode(message.payload)
        got.append(message.topic)
        out(event="certificate", topic=message.topic, retain=bool(message.retain),
            metrics=metrics_json(decoded.metrics), seq=decoded.seq)

    client.on_message = on_message
    connected(client, args.port)
    client.subscribe("$sparkplug/certificates/#", qos=1)
    deadline = time.time() + args.wait
    while time.time() < deadline and (args.count == 0 or len(got) < args.count):
        time.sleep(0.02)
    # Anything beyond the expected count would still show.
    time.sleep(0.2)
    client.disconnect()
    client.loop_stop()


def forge(args):
    received = []
    marker = threading.Event()
    sub = raw_client("forge-watch")

    def on_message(_c, _u, message):
        # The genuine certificates (retained) are not what this scenario is about.
        if "Forged" in message.topic or message.topic == "forge/marker":
            received.append(message.topic)
        if message.topic == "forge/marker":
            marker.set()

    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()
    connected(sub, args.port)
    sub.subscribe([("$sparkplug/#", 1), ("forge/marker", 1)])
    subscribed.wait(10)
    pub = connected(raw_client("forger"), args.port)
    birth = psp.NBirth(timestamp=psp.get_current_timestamp(), seq=0, metrics=(
        psp.Metric(timestamp=psp.get_current_timestamp(), name="bdSeq", datatype=psp.DataType.INT64, value=0),))
    pub.publish(f"$sparkplug/certificates/spBv1.0/{GROUP}/NBIRTH/Forged", birth.encode(), qos=1,
                retain=True).wait_for_publish(10)
    pub.publish("forge/marker", b"after", qos=1).wait_for_publish(10)
    marker.wait(10)
    time.sleep(0.3)
    out(event="received", topics=received)
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()


def deaths(args):
    # A raw subscriber decoding with pysparkplug's generated protobuf module: pysparkplug 0.6.1's NDeath.decode
    # drops a timestamp that is present (its HasField test is inverted).
    from pysparkplug import _protobuf as protobuf

    client = raw_client("host-" + str(os.getpid()))

    def on_message(_c, _u, message):
        payload = protobuf.Payload.FromString(message.payload)
        bd_seq = next((m.long_value for m in payload.metrics if m.name == "bdSeq"), None)
        out(event="ndeath", topic=message.topic,
            timestamp=payload.timestamp if payload.HasField("timestamp") else None, bdSeq=bd_seq)

    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    connected(client, args.port)
    client.subscribe("spBv1.0/+/NDEATH/+", qos=1)
    subscribed.wait(10)
    out(event="ready")
    time.sleep(args.wait)
    client.disconnect()
    client.loop_stop()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["edge", "alias", "certs", "forge", "deaths"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--wait", type=float, default=1.0, help="seconds to wait for what may still come")
    parser.add_argument("--commands", type=int, default=0, help="edge: NCMDs to wait for")
    parser.add_argument("--count", type=int, default=0, help="certs: certificates to wait for")
    parser.add_argument("--die", action="store_true", help="edge: end without DISCONNECT")
    args = parser.parse_args()
    globals()[args.scenario](args)


if __name__ == "__main__":
    main()
