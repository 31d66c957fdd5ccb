#!/usr/bin/env bash
# The cross-built gateway on its real instruction set, under qemu-user (CI runs this from .ci/test):
#   1. `weir --version` answers;
#   2. `weir serve` (on 127.0.0.1:0 with a fresh data directory) prints its address, tells a notification socket
#      READY=1 and, with WATCHDOG_USEC set, WATCHDOG=1 from the router's tick: the systemd protocol of
#      src/systemd.rs, received by an independent peer (Python);
#   3. it answers MQTT: mosquitto_pub publishes a retained QoS 1 message (CONNECT/CONNACK, PUBLISH/PUBACK) and
#      mosquitto_sub receives it back;
#   4. the message is in the journal (`weir history query`, also the aarch64 binary);
#   5. with Kafka (the default features): a route added with `weir kafka` while it runs forwards that message,
#      zstd-compressed, to a Kafka-protocol broker on the host (tansu, from .ci/setup's Kafka venv), where an
#      independent reader (confluent-kafka) finds it: librdkafka on the target's instruction set;
#   6. SIGTERM sends STOPPING=1 and ends the process with status 0.
#
#   tests/cross/smoke.sh                    # aarch64, dev profile (fast enough for CI)
#   PROFILE=appliance tests/cross/smoke.sh  # the release binary of scripts/cross-build.sh
#   TARGET=armv7 tests/cross/smoke.sh
#   FEATURES=none tests/cross/smoke.sh      # without the default features (no Kafka, no librdkafka)
#
# Every wait is bounded (WAIT seconds, default 120: a dev build starts slowly under emulation).
#
# Built with the default features, Kafka included: librdkafka is compiled in C by the cross compiler and links
# the target's OpenSSL and zlib from Debian multiarch (.ci/setup, .cargo/config.toml). The binary must then
# need no shared library beyond those a Yocto image has for it (checked below with readelf).
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=${PROFILE:-dev}
wait_secs=${WAIT:-120}
case ${TARGET:-aarch64} in
    aarch64) triple=aarch64-unknown-linux-gnu qemu=(qemu-aarch64 -L /) expect_machine=183 ;;
    armv7) triple=armv7-unknown-linux-gnueabihf qemu=(qemu-arm -L /) expect_machine=40 ;;
    *) echo "smoke: TARGET is aarch64 or armv7" >&2; exit 2 ;;
esac
[ "$profile" = dev ] && dir=debug || dir=$profile

features=()
case ${FEATURES:-default} in
    default) ;;
    none) features=(--no-default-features) ;;
    *) echo "smoke: FEATURES is default or none" >&2; exit 2 ;;
esac
nice -n "${NICE:-10}" cargo build --locked --profile "$profile" --target "$triple" --bin weir "${features[@]}"
bin=target/$triple/$dir/weir
# The ELF header's e_machine: 183 is AArch64, 40 is ARM (so qemu really emulates, no host binary slipped in).
machine=$(od -An -j18 -N2 -tu2 "$bin" | tr -d ' ')
[ "$machine" = "$expect_machine" ] || { echo "smoke: $bin has ELF machine $machine, not $expect_machine" >&2; exit 1; }
# Its shared libraries: glibc's, libgcc_s, and for Kafka OpenSSL 3 and zlib (recipe weir: DEPENDS openssl zlib;
# Yocto adds the runtime packages from these very names). Anything else would be missing on the image.
needed=$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | sort | paste -sd ' ')
for lib in $needed; do
    case $lib in
        libc.so.6 | libm.so.6 | libgcc_s.so.1 | ld-linux-*.so.* | libssl.so.3 | libcrypto.so.3 | libz.so.1) ;;
        *) echo "smoke: $bin needs $lib, which the image does not provide (needs: $needed)" >&2; exit 1 ;;
    esac
done
weir() { "${qemu[@]}" "$bin" "$@"; }

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "smoke: FAILED: $*" >&2
    for f in "$tmp"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }; done
    exit 1
}

# Polls a condition every 0.1 s for at most $wait_secs seconds.
wait_for() {
    local what=$1
    shift
    local deadline=$((SECONDS + wait_secs))
    until "$@"; do
        [ $SECONDS -lt $deadline ] || fail "no $what within $wait_secs s"
        sleep 0.1
    done
}

# 1. --version
version=$(weir --version) || fail "weir --version exited with $?"
[ "$version" = "weir $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)" ] ||
    fail "weir --version printed '$version'"
echo "smoke: $triple $profile: $version; needs $needed"

# 2. serve, under a notification socket like systemd's
cat >"$tmp/weir.toml" <<TOML
data_dir = "$tmp/data"

[[listener]]
name = "smoke"
protocol = "tcp"
bind = "127.0.0.1:0"
TOML
weir check-config "$tmp/weir.toml" >"$tmp/check-config.log" 2>&1 || fail "check-config refused the smoke config"

python3 -u -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(float(sys.argv[2]))
while True:
    message = s.recv(4096).decode()
    print(message, flush=True)
    if message == "STOPPING=1":
        break
' "$tmp/notify" "$wait_secs" >"$tmp/notify.log" 2>&1 &
pids+=($!)
wait_for "notification socket" test -S "$tmp/notify"

NOTIFY_SOCKET=$tmp/notify WATCHDOG_USEC=2000000 "${qemu[@]}" "$bin" serve --config "$tmp/weir.toml" \
    >"$tmp/serve.log" 2>"$tmp/serve-stderr.log" &
server=$!
pids+=($server)

address() { sed -n 's|^weir: MQTT on mqtt://||p' "$tmp/serve.log" | head -n 1; }
has_address() { [ -n "$(address)" ]; }
wait_for "MQTT address printed" has_address
port=$(address)
port=${port##*:}
wait_for "READY=1" grep -qx 'READY=1' "$tmp/notify.log"
wait_for "WATCHDOG=1" grep -qx 'WATCHDOG=1' "$tmp/notify.log"
echo "smoke: serving on 127.0.0.1:$port; notified $(sort -u "$tmp/notify.log" | paste -sd ' ')"

# 3. MQTT: a retained QoS 1 message goes in and comes back
payload="smoke $(date +%s%N)"
timeout "$wait_secs" mosquitto_pub -h 127.0.0.1 -p "$port" -i smoke-pub -q 1 -r -t smoke/cross -m "$payload" \
    >"$tmp/pub.log" 2>&1 || fail "mosquitto_pub (CONNECT, PUBLISH QoS 1) failed"
got=$(timeout "$wait_secs" mosquitto_sub -h 127.0.0.1 -p "$port" -i smoke-sub -t 'smoke/#' -C 1 -W "$wait_secs" \
    2>"$tmp/sub.log") || fail "mosquitto_sub received nothing"
[ "$got" = "$payload" ] || fail "mosquitto_sub received '$got', expected '$payload'"

# 4. the journal has it (read by the same binary while the gateway runs)
weir history query --data-dir "$tmp/data" --filter 'smoke/#' --limit 5 >"$tmp/history.log" 2>&1 ||
    fail "weir history query failed"
grep -qF "$payload" "$tmp/history.log" || fail "the message is not in the history"

# 5. Kafka: the journal's message goes to a broker on the host through a route added while the gateway runs
kafka=no
if [ "${FEATURES:-default}" = default ]; then
    venv=${WEIR_KAFKA_VENV:-$HOME/.cache/weir/kafka-venv}
    [ -x "$venv/bin/tansu" ] || fail "$venv/bin/tansu is missing: run .ci/setup"
    kport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$venv/bin/tansu" broker --listener-url "tcp://127.0.0.1:$kport" --advertised-listener-url "tcp://127.0.0.1:$kport" \
        --storage-engine memory://tansu/ >"$tmp/tansu.log" 2>&1 &
    pids+=($!)
    tansu_listens() { python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1)' \
        "$kport" 2>/dev/null; }
    wait_for "tansu listening on $kport" tansu_listens
    "$venv/bin/tansu" topic create --broker "tcp://127.0.0.1:$kport" --partitions 1 smoke >>"$tmp/tansu.log" 2>&1 ||
        fail "tansu topic create failed"
    weir kafka --data-dir "$tmp/data" upstream set host --bootstrap "127.0.0.1:$kport" --compression zstd \
        >"$tmp/kafka-cli.log" 2>&1 || fail "weir kafka upstream set failed"
    weir kafka --data-dir "$tmp/data" route add smoke --upstream host --filter 'smoke/#' --topic smoke \
        --from oldest >>"$tmp/kafka-cli.log" 2>&1 || fail "weir kafka route add failed"
    "$venv/bin/python" -c '
import sys, time
from confluent_kafka import Consumer, TopicPartition
bootstrap, payload, deadline = sys.argv[1], sys.argv[2].encode(), time.time() + float(sys.argv[3])
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "smoke", "enable.auto.commit": False})
c.assign([TopicPartition("smoke", 0, 0)])
while time.time() < deadline:
    m = c.poll(0.5)
    if m is not None and not m.error() and m.value() == payload:
        print(dict(m.headers() or [])["mqtt.topic"].decode())
        sys.exit(0)
sys.exit("not in Kafka")
' "127.0.0.1:$kport" "$payload" "$wait_secs" >"$tmp/kafka-reader.log" 2>&1 || fail "the message did not reach Kafka"
    grep -qx 'smoke/cross' "$tmp/kafka-reader.log" || fail "the Kafka record has no header mqtt.topic=smoke/cross"
    kafka=yes
fi

# 6. SIGTERM: STOPPING=1 and a clean exit
kill -TERM "$server"
deadline=$((SECONDS + wait_secs))
while kill -0 "$server" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || fail "weir did not stop within $wait_secs s of SIGTERM"
    sleep 0.1
done
status=0
wait "$server" || status=$?
[ $status -eq 0 ] || fail "weir exited with status $status after SIGTERM"
wait_for "STOPPING=1" grep -qx 'STOPPING=1' "$tmp/notify.log"
kafka_done=
[ $kafka = yes ] && kafka_done=", Kafka (zstd) to the host's broker"
echo "smoke: $triple $profile: --version, serve, READY/WATCHDOG/STOPPING, MQTT QoS 1 round trip, history$kafka_done: ok"
