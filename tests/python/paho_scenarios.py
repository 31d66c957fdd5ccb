#!/usr/bin/env python3
"""Scenarios that drive Weir with paho-mqtt, an MQTT client written independently of Weir and of rumqttc.

tests/broker/external.rs runs one scenario per test against the gateway that test started:

    paho_scenarios.py --host 127.0.0.1 --port TCP_PORT --ws-port WS_PORT --mqtt 5 --scenario qos

A scenario does the protocol work itself, waits only for conditions and only up to WAIT seconds each,
and prints one line of JSON describing what it observed; the Rust test asserts on that. Anything unexpected
on the way (refused connection, missing acknowledgement, nothing arriving in time) ends the run with exit
status 1 and the reason on stderr.
"""

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

try:
    import paho.mqtt
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as error:
    sys.exit(f"paho-mqtt 2.x is not installed for {sys.executable} ({error}): run .ci/setup")

if not paho.mqtt.__version__.startswith("2."):
    sys.exit(f"paho-mqtt {paho.mqtt.__version__} found, 2.x needed: run .ci/setup")

# Seconds any single step may take. The Rust side bounds the whole run at 10 s; a stuck step reports first.
WAIT = 5.0


class ScenarioError(Exception):
    """Something the broker should have done did not happen."""


def wait_until(condition, what):
    """Polls `condition` until it holds: for conditions spanning clients, which no one event covers."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {WAIT}s waiting for {what}")
        time.sleep(0.01)


def v5_properties(packet_type, **values):
    """A paho Properties object for `packet_type` with the given fields (paho's names, e.g. ContentType)."""
    props = Properties(packet_type)
    for name, value in values.items():
        setattr(props, name, value)
    return props


class Peer:
    """One paho client with everything it received, so a scenario can wait for what it expects.

    The network loop runs on paho's thread, except for a peer meant to be crashed: that one is driven from the
    scenario's thread, so that nothing else holds its socket when it is closed and the broker sees the loss at
    once.
    """

    def __init__(self, args, client_id, *, transport="tcp", clean=True, threaded=True):
        self.args = args
        self.client_id = client_id
        self.v5 = args.mqtt == "5"
        self.transport = transport
        self.clean = clean
        self.threaded = threaded
        extra = {} if self.v5 else {"clean_session": clean}
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
            transport=transport,
            reconnect_on_failure=False,
            **extra,
        )
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.inbox = queue.Queue()
        self.received = 0
        self.log = []
        self.connack = None
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self.condition = threading.Condition()
        self.subacks = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, _client, _userdata, flags, reason_code, properties):
        self.connack = {
            "session_present": bool(flags.session_present),
            "reason_code": reason_code.value,
            "properties": properties.json() if properties else {},
        }
        self.connected.set()

    def _on_disconnect(self, _client, _userdata, _flags, _reason_code, _properties):
        self.disconnected.set()

    def _on_subscribe(self, _client, _userdata, mid, reason_codes, _properties):
        with self.condition:
            self.subacks[mid] = [code.value for code in reason_codes]
            self.condition.notify_all()

    def _on_message(self, _client, _userdata, message):
        self.received += 1
        self.inbox.put(
            {
                "topic": message.topic,
                "payload": message.payload.decode("utf-8", errors="replace"),
                "qos": message.qos,
                "retain": bool(message.retain),
                "properties": message.properties.json() if message.properties else {},
            }
        )

    def will(self, topic, payload, qos=1, properties=None):
        self.client.will_set(topic, payload, qos=qos, retain=False, properties=properties)
        return self

    def connect(self, session_expiry=None, topic_alias_maximum=None):
        """Connects and waits for a successful CONNACK."""
        options = {}
        if self.v5:
            options["clean_start"] = self.clean
            values = {}
            if session_expiry is not None:
                values["SessionExpiryInterval"] = session_expiry
            if topic_alias_maximum is not None:
                values["TopicAliasMaximum"] = topic_alias_maximum
            if values:
                options["properties"] = v5_properties(PacketTypes.CONNECT, **values)
        port = self.args.ws_port if self.transport == "websockets" else self.args.port
        self.client.connect(self.args.host, port, keepalive=30, **options)
        if self.threaded:
            self.client.loop_start()
            arrived = self.connected.wait(WAIT)
        else:
            deadline = time.monotonic() + WAIT
            while not self.connected.is_set() and time.monotonic() < deadline:
                self.client.loop(0.05)
            arrived = self.connected.is_set()
        if not arrived:
            raise ScenarioError(f"{self.client_id}: no CONNACK within {WAIT}s")
        if self.connack["reason_code"] != 0:
            raise ScenarioError(f"{self.client_id}: connection refused: {self.connack}")
        return self

    def attempt(self, port):
        """Connects to a listener that speaks another transport.

        Returns "refused: <error>" (paho gave up), "closed" (the broker closed the connection without
        CONNACK) or "connected".
        """
        try:
            self.client.connect(self.args.host, port, keepalive=30)
        except OSError as error:
            return f"refused: {type(error).__name__}"
        self.client.loop_start()
        wait_until(lambda: self.connected.is_set() or self.disconnected.is_set(), f"{self.client_id} to end")
        self.client.loop_stop()
        return "connected" if self.connected.is_set() else "closed"

    def subscribe(self, topic, qos=1, options=None, subscription_id=None):
        """Subscribes and returns the SUBACK's reason codes (the granted QoS when successful)."""
        properties = None
        if subscription_id is not None:
            properties = v5_properties(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=subscription_id)
        if options is not None:
            result, mid = self.client.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.client.subscribe(topic, qos, properties=properties)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ScenarioError(f"{self.client_id}: subscribe {topic}: {mqtt.error_string(result)}")
        with self.condition:
            if not self.condition.wait_for(lambda: mid in self.subacks, WAIT):
                raise ScenarioError(f"{self.client_id}: no SUBACK for {topic} within {WAIT}s")
            return self.subacks[mid]

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        """Publishes and waits until paho has written it (QoS 0) or the broker acknowledged it (QoS 1, 2)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(WAIT)
        if not info.is_published():
            raise ScenarioError(f"{self.client_id}: publish to {topic!r} at QoS {qos} not done in {WAIT}s")

    def next_message(self):
        """The next message received, in order; every one taken is also kept in `log`."""
        try:
            message = self.inbox.get(timeout=WAIT)
        except queue.Empty:
            raise ScenarioError(f"{self.client_id}: no message within {WAIT}s") from None
        self.log.append(message)
        return message

    def take(self, count):
        return [self.next_message() for _ in range(count)]

    def until(self, predicate):
        """Every message received up to and including the first for which `predicate` holds."""
        messages = []
        while not messages or not predicate(messages[-1]):
            messages.append(self.next_message())
        return messages

    def until_payload(self, payload):
        return self.until(lambda message: message["payload"] == payload)

    def disconnect(self, reason_code=None):
        """A clean DISCONNECT (v5: with `reason_code`), waiting until paho has closed the connection."""
        reason = None
        if reason_code is not None:
            reason = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
        self.client.disconnect(reasoncode=reason)
        if not self.disconnected.wait(WAIT):
            raise ScenarioError(f"{self.client_id}: disconnect not completed within {WAIT}s")
        self.client.loop_stop()

    def crash(self):
        """Closes the socket without DISCONNECT, as a device losing power would."""
        if self.threaded:
            raise ScenarioError("only an unthreaded peer can crash: a loop thread would hold the socket")
        self.client._sock.close()

    def presence(self, client_id):
        """Waits until Weir's retained presence for `client_id` says it has left; returns that state.

        Presence is published by the router once it has handled the detach, so whatever the departure caused
        (a will, queueing for an offline session) has happened by then.
        """
        topic = f"$SYS/weir/clients/{client_id}/presence"
        self.subscribe(topic, qos=1)
        left = self.until(lambda m: m["topic"] == topic and json.loads(m["payload"])["state"] != "online")
        return json.loads(left[-1]["payload"])["state"]


def brief(messages, *fields):
    """Only the named fields of each message: what a test asserts on, and no more."""
    return [{field: message[field] for field in fields} for message in messages]


def scenario_qos(args):
    """Publishes at QoS 0, 1 and 2 to subscriptions at QoS 0, 1 and 2: nine deliveries."""
    base = f"paho{args.tag}/qos"
    sub = Peer(args, f"paho{args.tag}-qos-sub").connect()
    granted = [sub.subscribe(f"{base}/sub{qos}", qos)[0] for qos in (0, 1, 2)]
    publisher = Peer(args, f"paho{args.tag}-qos-pub").connect()
    for sub_qos in (0, 1, 2):
        for pub_qos in (0, 1, 2):
            publisher.publish(f"{base}/sub{sub_qos}", f"pub{pub_qos}", qos=pub_qos)
    received = sub.take(9)
    return {"granted": granted, "received": brief(received, "topic", "payload", "qos")}


def spawn_killable_client(args, client_id, will_topic):
    """Starts a child process holding a connection with a will, and returns it once it is connected."""
    command = [sys.executable, __file__, "--host", args.host, "--port", str(args.port)]
    command += ["--ws-port", str(args.ws_port), "--mqtt", args.mqtt, "--scenario", "hold"]
    command += ["--client-id", client_id, "--will-topic", will_topic]
    child = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(child.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=WAIT)
    except queue.Empty:
        line = ""
    if line.strip() != "connected":
        child.kill()
        raise ScenarioError(f"the child holding {client_id} did not connect: {line!r}")
    return child


def scenario_hold(args):
    """Run in a child process by scenario_will: connects with a will and stays until killed or orphaned."""
    peer = Peer(args, args.client_id).will(args.will_topic, f"{args.client_id} gone").connect()
    print("connected", flush=True)
    sys.stdin.read()
    peer.disconnect()
    return None


def scenario_will(args):
    """Wills are published for connections lost without DISCONNECT, and for v5 DISCONNECT 0x04 only."""
    base = f"paho{args.tag}/will"
    prefix = f"paho{args.tag}-will"
    will_properties = None
    if args.mqtt == "5":
        will_properties = v5_properties(PacketTypes.WILLMESSAGE, ContentType="text/plain",
                                        UserProperty=[("cause", "test")])
    watcher = Peer(args, f"{prefix}-watcher").connect()
    watcher.subscribe(f"{base}/#", qos=1)
    presence = {}

    polite = Peer(args, f"{prefix}-polite").will(f"{base}/polite", "polite gone", properties=will_properties)
    polite.connect().disconnect()
    presence["polite"] = watcher.presence(polite.client_id)

    closed = Peer(args, f"{prefix}-closed", threaded=False)
    closed.will(f"{base}/closed", "closed gone", properties=will_properties).connect().crash()
    presence["closed"] = watcher.presence(closed.client_id)

    child = spawn_killable_client(args, f"{prefix}-killed", f"{base}/killed")
    os.kill(child.pid, signal.SIGKILL)
    child.wait(WAIT)
    presence["killed"] = watcher.presence(f"{prefix}-killed")

    if args.mqtt == "5":
        leaving = Peer(args, f"{prefix}-with-will").will(f"{base}/with-will", "with-will gone",
                                                          properties=will_properties)
        leaving.connect().disconnect(reason_code=0x04)
        presence["with-will"] = watcher.presence(leaving.client_id)

    watcher.publish(f"{base}/marker", "marker")
    watcher.until_payload("marker")
    wills = [m for m in watcher.log if m["topic"].startswith(f"{base}/") and m["payload"] != "marker"]
    return {"wills": brief(wills, "topic", "payload", "qos", "retain", "properties"), "presence": presence}


def scenario_properties(args):
    """Request/response: the request's properties reach the responder, who answers on the response topic."""
    base = "paho5/props"
    requester = Peer(args, "paho5-props-requester").connect()
    requester.subscribe(f"{base}/reply", qos=1)
    responder = Peer(args, "paho5-props-responder").connect()
    responder.subscribe(f"{base}/request", qos=1)
    request_properties = v5_properties(
        PacketTypes.PUBLISH,
        PayloadFormatIndicator=1,
        MessageExpiryInterval=600,
        ContentType="application/json",
        ResponseTopic=f"{base}/reply",
        CorrelationData=b"\x00corr-42\xff",
        UserProperty=[("trace", "a"), ("site", "plant-1"), ("trace", "b")],
    )
    requester.publish(f"{base}/request", '{"op":"read"}', qos=1, properties=request_properties)
    request = responder.next_message()
    reply_properties = v5_properties(
        PacketTypes.PUBLISH, CorrelationData=bytes.fromhex(request["properties"]["CorrelationData"])
    )
    responder.publish(request["properties"]["ResponseTopic"], "21.5", qos=1, properties=reply_properties)
    reply = requester.next_message()
    return {"request": request, "reply": reply}


def scenario_subscription_ids(args):
    """Each delivery carries the identifiers of every matching subscription of the client, once."""
    base = "paho5/sid"
    sub = Peer(args, "paho5-sid-sub").connect()
    sub.subscribe(f"{base}/a", qos=1, subscription_id=7)
    sub.subscribe(f"{base}/#", qos=1, subscription_id=300)
    sub.subscribe(f"{base}/b", qos=1)
    publisher = Peer(args, "paho5-sid-pub").connect()
    for leaf in ("a", "b", "c", "marker"):
        publisher.publish(f"{base}/{leaf}", leaf, qos=1)
    received = sub.until_payload("marker")
    return {"received": [{"topic": m["topic"], "ids": m["properties"].get("SubscriptionIdentifier", [])}
                         for m in received]}


def scenario_no_local(args):
    """A no-local subscriber does not get its own publications; an ordinary one does."""
    topic = "paho5/nolocal/t"
    local = Peer(args, "paho5-nolocal-a").connect()
    local.subscribe(topic, options=SubscribeOptions(qos=1, noLocal=True))
    other = Peer(args, "paho5-nolocal-b").connect()
    other.subscribe(topic, qos=1)
    local.publish(topic, "from-a")
    other.publish(topic, "from-b")
    return {
        "no_local": [m["payload"] for m in local.until_payload("from-b")],
        "ordinary": [m["payload"] for m in other.until_payload("from-b")],
    }


def scenario_retain_as_published(args):
    """The RETAIN flag as each subscription option lets the subscriber see it."""
    topic = "paho5/rap/t"
    publisher = Peer(args, "paho5-rap-pub").connect()
    publisher.publish(topic, "stored", qos=1, retain=True)
    subscribers = {
        "as_published": SubscribeOptions(qos=1, retainAsPublished=True),
        "default": SubscribeOptions(qos=1),
        "no_retained_on_subscribe": SubscribeOptions(
            qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND
        ),
    }
    peers = {}
    for name, options in subscribers.items():
        peers[name] = Peer(args, f"paho5-rap-{name}").connect()
        peers[name].subscribe(topic, options=options)
    publisher.publish(topic, "live", qos=1, retain=True)
    publisher.publish(topic, "plain", qos=1, retain=False)
    return {name: brief(peer.until_payload("plain"), "payload", "retain") for name, peer in peers.items()}


def scenario_shared(args):
    """A shared subscription's members split the messages; an ordinary subscriber gets them all."""
    topic = "paho5/shared/t"
    members = [Peer(args, f"paho5-shared-m{i}").connect() for i in (1, 2)]
    for member in members:
        member.subscribe(f"$share/g/{topic}", qos=1)
    ordinary = Peer(args, "paho5-shared-all").connect()
    ordinary.subscribe(topic, qos=1)
    publisher = Peer(args, "paho5-shared-pub").connect()
    count = 10
    for i in range(count):
        publisher.publish(topic, f"m{i}", qos=1)
    everything = [m["payload"] for m in ordinary.take(count)]
    wait_until(lambda: sum(member.received for member in members) >= count, "the shared group's deliveries")
    split = [[m["payload"] for m in member.take(member.received)] for member in members]
    return {"members": split, "ordinary": everything}


def scenario_persistent_session(args):
    """QoS 1 messages published while a persistent session is offline are delivered when it returns."""
    base = f"paho{args.tag}/session"
    client_id = f"paho{args.tag}-session"
    first = Peer(args, client_id, clean=False).connect(session_expiry=300)
    first.subscribe(f"{base}/#", qos=1)
    first.disconnect()
    publisher = Peer(args, f"paho{args.tag}-session-pub").connect()
    publisher.presence(client_id)
    for i in range(5):
        publisher.publish(f"{base}/x", f"m{i}", qos=1)
    publisher.publish(f"{base}/x", "qos0 while offline", qos=0)
    back = Peer(args, client_id, clean=False).connect(session_expiry=300)
    publisher.publish(f"{base}/x", "after", qos=1)
    received = back.until_payload("after")
    back.disconnect()
    clean = Peer(args, client_id, clean=True).connect()
    return {
        "first_session_present": first.connack["session_present"],
        "resumed_session_present": back.connack["session_present"],
        "received": brief(received, "payload", "qos"),
        "clean_session_present": clean.connack["session_present"],
    }


def scenario_topic_alias(args):
    """The publisher names topics by alias after the first use, and remaps an alias."""
    base = "paho5/alias"
    sub = Peer(args, "paho5-alias-sub").connect()
    sub.subscribe(f"{base}/#", qos=1)
    publisher = Peer(args, "paho5-alias-pub").connect()
    alias = v5_properties(PacketTypes.PUBLISH, TopicAlias=1)
    publisher.publish(f"{base}/t", "one", properties=alias)
    publisher.publish("", "two", properties=alias)
    publisher.publish(f"{base}/u", "three", properties=alias)
    publisher.publish("", "four", properties=alias)
    return {
        "topic_alias_maximum": publisher.connack["properties"].get("TopicAliasMaximum", 0),
        "received": brief(sub.take(4), "topic", "payload"),
    }


def scenario_server_topic_alias(args):
    """Weir assigns topic aliases on what it sends to a client that allows them (Topic Alias Maximum 2 here), and
    none to one that does not. paho 2.1 hands the application each PUBLISH as it came: an aliased one has an empty
    topic and its alias among the properties. The scenario reports both and resolves aliases as a client would."""
    base = "paho5/server-alias/a-long-topic-name-as-devices-use/line-7/press-12"
    order = [0, 0, 0, 1, 1, 1, 2, 0, 1, 0]
    sent = [(f"{base}/{n}", f"m{i}") for i, n in enumerate(order)]
    aliased = Peer(args, "paho5-salias-sub").connect(topic_alias_maximum=2)
    plain = Peer(args, "paho5-salias-plain").connect()
    aliased.subscribe(f"{base}/#", qos=1)
    plain.subscribe(f"{base}/#", qos=1)
    publisher = Peer(args, "paho5-salias-pub").connect()
    for topic, payload in sent:
        publisher.publish(topic, payload, qos=1)
    wire = [{"topic": m["topic"], "alias": m["properties"].get("TopicAlias"), "payload": m["payload"]}
            for m in aliased.take(len(sent))]
    aliases, resolved = {}, []
    for m in wire:
        if m["alias"] is not None and m["topic"]:
            aliases[m["alias"]] = m["topic"]
        resolved.append(m["topic"] or aliases.get(m["alias"], "?"))
    return {
        "sent": [{"topic": t, "payload": p} for t, p in sent],
        "wire": wire,
        "resolved": resolved,
        "plain": brief(plain.take(len(sent)), "topic", "payload", "properties"),
    }


def scenario_websocket(args):
    """A WebSocket client and a TCP client exchange messages both ways, one of them larger than a frame."""
    base = f"paho{args.tag}/ws"
    ws = Peer(args, f"paho{args.tag}-ws-client", transport="websockets").connect()
    ws.subscribe(f"{base}/to-ws", qos=2)
    tcp = Peer(args, f"paho{args.tag}-ws-tcp").connect()
    tcp.subscribe(f"{base}/to-tcp", qos=2)
    tcp.publish(f"{base}/to-ws", "hello ws", qos=1)
    ws.publish(f"{base}/to-tcp", "hello tcp", qos=2)
    big = "".join(chr(ord("a") + i % 26) for i in range(200_000))
    ws.publish(f"{base}/to-tcp", big, qos=1)
    to_ws = ws.next_message()
    to_tcp = tcp.take(2)
    return {
        "to_ws": brief([to_ws], "topic", "payload", "qos")[0],
        "to_tcp": brief(to_tcp, "topic", "payload", "qos")[0],
        "big_intact": to_tcp[1]["payload"] == big,
    }


def scenario_wrong_port(args):
    """Each transport aimed at the other transport's listener fails at once, without hanging."""
    websocket = Peer(args, f"paho{args.tag}-wrong-ws", transport="websockets")
    tcp = Peer(args, f"paho{args.tag}-wrong-tcp")
    return {
        "websocket_to_tcp_listener": websocket.attempt(args.port),
        "tcp_to_websocket_listener": tcp.attempt(args.ws_port),
    }


SCENARIOS = {
    "qos": scenario_qos,
    "server-topic-alias": scenario_server_topic_alias,
    "hold": scenario_hold,
    "will": scenario_will,
    "properties": scenario_properties,
    "subscription-ids": scenario_subscription_ids,
    "no-local": scenario_no_local,
    "retain-as-published": scenario_retain_as_published,
    "shared": scenario_shared,
    "persistent-session": scenario_persistent_session,
    "topic-alias": scenario_topic_alias,
    "websocket": scenario_websocket,
    "wrong-port": scenario_wrong_port,
}
V5_ONLY = {"properties", "subscription-ids", "no-local", "retain-as-published", "shared", "topic-alias"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the gateway's MQTT over TCP port")
    parser.add_argument("--ws-port", type=int, required=True, help="the gateway's MQTT over WebSocket port")
    parser.add_argument("--mqtt", choices=("3.1.1", "5"), required=True, help="the protocol version")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--client-id", help="hold: the client id to connect as")
    parser.add_argument("--will-topic", help="hold: the topic of the will")
    args = parser.parse_args()
    # In client ids and topics, so that scenarios never meet even on one gateway.
    args.tag = args.mqtt.replace(".", "")
    if args.scenario in V5_ONLY and args.mqtt != "5":
        parser.error(f"scenario {args.scenario} is MQTT 5.0 only")
    try:
        result = SCENARIOS[args.scenario](args)
    except (ScenarioError, OSError, ValueError, RuntimeError, subprocess.SubprocessError) as error:
        sys.exit(f"scenario {args.scenario} (MQTT {args.mqtt}): {error}")
    if result is not None:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
