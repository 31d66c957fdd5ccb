#!/usr/bin/env bash
# The appliance's unit and configuration on a real arm64 system, with power cuts. NOT in CI: ~20-40 minutes
# under emulation on 2 cores. Results go to $WORK/results.md (copy the figures into docs/APPLIANCE.md).
#
#   tests/image/boot-test.sh                # ROUNDS=10 power cuts
#   ROUNDS=3 WORK=/var/tmp/wt tests/image/boot-test.sh
#
# What it does:
#   1. cross-builds weir (scripts/cross-build.sh aarch64, profile appliance);
#   2. builds a Debian bookworm arm64 root file system with mmdebstrap (qemu-user through binfmt_misc; cached
#      in $WORK/rootfs.tar), and installs in it the binary, the layer's very weir.service and weir.toml
#      (yocto/meta-weir/recipes-weir/weir/files/), the weir user the recipe makes, and this directory's
#      reporting agent; /var/lib/weir is a partition of its own (label weir-data, a second virtio disk);
#   3. boots it with qemu-system-aarch64 -M virt and Debian's kernel, and checks: systemd reports weir.service
#      active (Type=notify: READY=1 came), anonymous MQTT on 1883 is refused, a user created with the CLI is
#      admitted, MQTT over TLS on 8883 works with the gateway's CA (and fails without it), the journal lives on
#      the data partition, the console answers on HTTPS 443 with the gateway's certificate for
#      weir-test.local (verified against the CA the gateway serves, and refused with any other CA) and plain
#      HTTP on 80 redirects there (followed to the first-run page); records the boot time to a CONNACK and the
#      memory after boot;
#   4. ROUNDS times: a QoS 1 load from the host, QEMU killed with SIGKILL (a power cut: whatever the guest had
#      not written to its virtual disk is lost), the data partition's journal replayed on a copy, the databases
#      checked with PRAGMA integrity_check, and every acknowledged message looked up in the history with
#      `weir history export` (the same aarch64 binary, under qemu-user); then the next boot must bring the
#      gateway back;
#   5. boots once more with weir-test.hang on the kernel command line: the agent stops weir with SIGSTOP (no
#      more watchdog pings, like a hung router), and systemd must restart it (WatchdogSec=) within 300 s.
#
# Needs (Debian): mmdebstrap arch-test qemu-user-static binfmt-support qemu-system-arm e2fsprogs curl
# mosquitto-clients python3 with paho-mqtt (.ci/setup installs the last two). Runs as root (mmdebstrap's root
# mode, binfmt_misc).
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

work=${WORK:-/var/tmp/weir-image-test}
rounds=${ROUNDS:-10}
boot_timeout=${BOOT_TIMEOUT:-600}
mkdir -p "$work"
results=$work/results.md
layer_files=yocto/meta-weir/recipes-weir/weir/files
password=tester-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
qemu_pid=""
load_pid=""

log() { echo "boot-test: $*" >&2; }
fail() {
    log "FAILED: $*"
    [ -f "$work/console.log" ] && { echo "--- console (last 40 lines)" >&2; tail -n 40 "$work/console.log" >&2; }
    exit 1
}
cleanup() {
    [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null || true
    [ -n "$qemu_pid" ] && kill -9 "$qemu_pid" 2>/dev/null || true
}
trap cleanup EXIT
record() { echo "$*" | tee -a "$results" >&2; }

# Polls a command every 0.2 s, at most $1 seconds.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@"; do
        [ $SECONDS -lt $deadline ] || fail "no $what within $secs s"
        sleep 0.2
    done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- 1. the binary -------------------------------------------------------------------------------------------
scripts/cross-build.sh aarch64 >&2
bin=$repo/target/aarch64-unknown-linux-gnu/appliance/weir
weir_host() { qemu-aarch64 -L / "$bin" "$@"; } # the multiarch libraries, as .cargo/config.toml says

# --- 2. the root file system ---------------------------------------------------------------------------------
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
packages=systemd-sysv,udev,linux-image-arm64,e2fsprogs,iproute2,kmod,procps,util-linux
if [ ! -s "$work/rootfs.tar" ] || [ "$(cat "$work/rootfs.packages" 2>/dev/null)" != "$packages" ]; then
    log "building the Debian arm64 root file system (mmdebstrap, ~10-15 min under emulation)"
    nice -n 10 mmdebstrap --arch=arm64 --variant=apt --include="$packages" bookworm "$work/rootfs.tar" \
        http://deb.debian.org/debian >&2
    echo "$packages" >"$work/rootfs.packages"
fi

root=$work/root
rm -rf "$root"
mkdir -p "$root"
tar -C "$root" -xf "$work/rootfs.tar"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
# The appliance's parts, as the recipe installs them.
install -m 0755 "$bin" "$root/usr/bin/weir"
install -D -m 0644 "$layer_files/weir.service" "$root/usr/lib/systemd/system/weir.service"
install -D -m 0644 "$layer_files/weir.toml" "$root/etc/weir/weir.toml"
echo 'weir:x:990:990:Weir gateway:/var/lib/weir:/usr/sbin/nologin' >>"$root/etc/passwd"
echo 'weir:x:990:' >>"$root/etc/group"
echo 'weir:!:19000::::::' >>"$root/etc/shadow"
ln -sf /usr/lib/systemd/system/weir.service "$root/etc/systemd/system/multi-user.target.wants/weir.service"
# The test's parts: the agent, its user's password, a network, the data partition.
install -m 0755 tests/image/guest-agent.sh "$root/usr/local/sbin/weir-test-agent"
install -m 0644 tests/image/weir-test-agent.service "$root/etc/systemd/system/weir-test-agent.service"
ln -sf /etc/systemd/system/weir-test-agent.service \
    "$root/etc/systemd/system/multi-user.target.wants/weir-test-agent.service"
install -D -m 0600 /dev/null "$root/etc/weir-test/password"
echo "$password" >"$root/etc/weir-test/password"
mkdir -p "$root/etc/systemd/network" "$root/etc/systemd/system/network-online.target.wants" \
    "$root/etc/systemd/system/sockets.target.wants"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n' >"$root/etc/systemd/network/10-wired.network"
ln -sf /usr/lib/systemd/system/systemd-networkd.service \
    "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
ln -sf /usr/lib/systemd/system/systemd-networkd.socket \
    "$root/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
ln -sf /usr/lib/systemd/system/systemd-networkd-wait-online.service \
    "$root/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service"
echo weir-test >"$root/etc/hostname"
printf 'LABEL=weir-root / ext4 rw,errors=remount-ro 0 1\nLABEL=weir-data /var/lib/weir ext4 defaults,noatime 0 2\n' \
    >"$root/etc/fstab"
mkdir -p "$root/var/lib/weir"

kernel=$(ls "$root"/boot/vmlinuz-* | sort -V | tail -n 1)
initrd=$(ls "$root"/boot/initrd.img-* | sort -V | tail -n 1)
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
rm -f "$work/root.img" "$work/data.img"
mkfs.ext4 -q -L weir-root -d "$root" "$work/root.img" 2G
mkfs.ext4 -q -L weir-data "$work/data.img" 512M

# --- 3. boot -------------------------------------------------------------------------------------------------
mqtt_port=""
mqtts_port=""
https_port=""
http_port=""
boot_secs=""

# Boots the guest and waits for its agent's report and a CONNACK on the forwarded MQTT port.
boot() {
    local n=$1 extra=${2:-}
    mqtt_port=$(free_port)
    mqtts_port=$(free_port)
    https_port=$(free_port)
    http_port=$(free_port)
    : >"$work/agent-$n.log"
    local start=$SECONDS
    local start_ns
    start_ns=$(date +%s%N)
    qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 -nographic -no-reboot \
        -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
        -append "root=LABEL=weir-root rw console=ttyAMA0 panic=5 $extra" \
        -drive "if=none,id=root,file=$work/root.img,format=raw" -device virtio-blk-pci,drive=root \
        -drive "if=none,id=data,file=$work/data.img,format=raw" -device virtio-blk-pci,drive=data \
        -netdev "user,id=net,hostfwd=tcp:127.0.0.1:$mqtt_port-:1883,hostfwd=tcp:127.0.0.1:$mqtts_port-:8883,hostfwd=tcp:127.0.0.1:$https_port-:443,hostfwd=tcp:127.0.0.1:$http_port-:80" \
        -device virtio-net-pci,netdev=net \
        -device virtio-serial-pci -chardev "file,id=agent,path=$work/agent-$n.log" \
        -device virtserialport,chardev=agent,name=weir.agent \
        </dev/null >"$work/console.log" 2>&1 &
    qemu_pid=$!
    local code
    code=$(python3 tests/image/mqtt_tools.py connack 127.0.0.1 "$mqtt_port" "$boot_timeout") ||
        fail "boot $n: no CONNACK on 1883 within $boot_timeout s"
    boot_secs=$(awk -v a="$start_ns" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
    [ "$code" = 5 ] || fail "boot $n: anonymous CONNECT got CONNACK $code, expected 5 (not authorised)"
    wait_for $((boot_timeout - (SECONDS - start))) "agent report (boot $n)" grep -q 'WEIR-TEST agent-done' \
        "$work/agent-$n.log"
    agent() { sed -n "s/^WEIR-TEST $1 //p" "$work/agent-$n.log" | head -n 1; }
    [ "$(agent weir-active)" = active ] || fail "boot $n: weir.service is $(agent weir-active)"
}

# Cuts the power: SIGKILL to QEMU, nothing flushed, nothing shut down.
power_cut() {
    kill -9 "$qemu_pid"
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=""
}

# Copies the data partition as the cut left it, replays its ext4 journal (as the next boot's kernel would) and
# extracts the top-level files into $1.
extract_data() {
    local out=$1
    rm -rf "$out" "$work/cut.img"
    mkdir -p "$out"
    cp --sparse=always "$work/data.img" "$work/cut.img"
    e2fsck -fy "$work/cut.img" >"$work/e2fsck.log" 2>&1 || [ $? -le 1 ] || fail "e2fsck: $(tail -n 3 "$work/e2fsck.log")"
    for f in $(debugfs -R 'ls -p /' "$work/cut.img" 2>/dev/null | awk -F/ '$3 ~ /^100/ {print $6}'); do
        debugfs -R "dump /$f $out/$f" "$work/cut.img" 2>/dev/null
    done
}

: >"$results"
record "# Boot test $(date -u +%Y-%m-%dT%H:%MZ), $(git rev-parse --short HEAD), binary $(stat -c %s "$bin") bytes"
record ""

boot 0
agent() { sed -n "s/^WEIR-TEST $1 //p" "$work/agent-0.log" | head -n 1; }
record "- first boot: CONNACK from the gateway $boot_secs s after QEMU started; systemd: active (READY) at" \
    "$(awk -v u="$(agent weir-ready-usec)" 'BEGIN { printf "%.1f", u / 1e6 }') s of guest uptime"
record "- memory after boot: weir RSS $(agent weir-rss-kb) KiB; guest MemTotal $(agent mem-total-kb) KiB," \
    "MemAvailable $(agent mem-available-kb) KiB"
record "- data: /var/lib/weir on $(agent data-mount), journal.sqlite on $(agent journal-fs), directory mode $(agent data-dir)"
case "$(agent data-mount)" in */dev/vd*,weir-data,ext4) ;; *) fail "/var/lib/weir is not the data partition" ;; esac
[ "$(agent journal-fs)" = "$(agent data-mount | cut -d, -f1)" ] || fail "the journal is not on the data partition"
[ "$(agent data-dir)" = "700,weir" ] || fail "/var/lib/weir is $(agent data-dir), expected 700,weir"
[ "$(agent user)" = "tester,admin" ] || fail "the test user was not created: '$(agent user)'"
sed -n '/^WEIR-TEST ca-begin/,/^WEIR-TEST ca-end/p' "$work/agent-0.log" | grep -v '^WEIR-TEST' >"$work/ca.pem"
grep -q 'BEGIN CERTIFICATE' "$work/ca.pem" || fail "no CA certificate in the agent's report"

# MQTT on 1883: anonymous refused (also checked at every boot by its CONNACK 5), the user admitted.
if out=$(timeout 60 mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -t check/anon -m x -q 1 2>&1); then
    fail "anonymous publish accepted"
fi
grep -qi 'not authori' <<<"$out" || fail "anonymous publish failed for another reason: $out"
timeout 60 mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u tester -P "$password" -t check/user -m ok -q 1 ||
    fail "the created user was not admitted on 1883"
# MQTT over TLS on 8883: with the gateway's CA, and not without it.
timeout 60 mosquitto_pub -h 127.0.0.1 -p "$mqtts_port" --cafile "$work/ca.pem" -u tester -P "$password" \
    -t check/tls -m ok -q 1 || fail "MQTT over TLS with the gateway's CA failed"
if timeout 60 mosquitto_pub -h 127.0.0.1 -p "$mqtts_port" --cafile /etc/ssl/certs/ca-certificates.crt \
    -u tester -P "$password" -t check/tls -m no -q 1 2>/dev/null; then
    fail "MQTT over TLS succeeded with a CA that is not the gateway's"
fi
record "- 1883: anonymous refused (CONNACK 5), user admitted; 8883: TLS with the gateway's CA admitted, other CAs refused"
# The console, as a browser on the plant network reaches it: by the name Avahi announces (weir-test.local, here
# mapped onto the forwarded ports), on HTTPS with the gateway's certificate, which must verify against the CA
# that `weir ca export` printed; plain HTTP on 80 answers only with a permanent redirect to the same path there.
host=weir-test.local
https() { curl -sS --max-time 60 --connect-to "$host:443:127.0.0.1:$https_port" "$@"; }
status=$(https --cacert "$work/ca.pem" -o "$work/console-root.html" -w '%{http_code} %{redirect_url}' \
    "https://$host/") || fail "the console did not answer on HTTPS 443 with a certificate from the gateway's CA"
# The agent has made an administrator (tester), so first-run setup is over and / leads to the sign-in page.
[ "$status" = "303 https://$host/login" ] || fail "HTTPS / answered '$status', expected 303 to the sign-in page"
if https --cacert /etc/ssl/certs/ca-certificates.crt -o /dev/null "https://$host/" 2>/dev/null; then
    fail "the console's certificate verified against a CA that is not the gateway's"
fi
redirect=$(curl -sS --max-time 60 -o /dev/null -w '%{http_code} %{redirect_url}' \
    --connect-to "$host:80:127.0.0.1:$http_port" "http://$host/history?filter=a%2F%23") ||
    fail "nothing answered on HTTP 80"
[ "$redirect" = "308 https://$host/history?filter=a%2F%23" ] ||
    fail "HTTP 80 answered '$redirect', expected 308 to the same path on HTTPS"
followed=$(https --connect-to "$host:80:127.0.0.1:$http_port" --cacert "$work/ca.pem" -L -o "$work/console-login.html" \
    -w '%{http_code} %{url_effective}' "http://$host/") || fail "following HTTP 80 to the console failed"
[ "$followed" = "200 https://$host/login" ] && grep -q '<title>Sign in' "$work/console-login.html" ||
    fail "HTTP 80, followed, ended at '$followed' (expected the sign-in page)"
record "- console: HTTPS on 443 answered as $host with the gateway's certificate (verified with its CA; other CAs" \
    "refused), / leads to sign-in; HTTP on 80: 308 to the same path on HTTPS, followed to the sign-in page"
record ""

# --- 4. power cuts -------------------------------------------------------------------------------------------
record "| round | acked before the cut | this round in history | missing (all rounds so far) | integrity_check journal / config | next boot to CONNACK |"
record "| ---: | ---: | ---: | ---: | --- | ---: |"
failures=0
for r in $(seq 1 "$rounds"); do
    acks=$work/acks-$r.txt
    : >"$acks"
    python3 tests/image/mqtt_tools.py load 127.0.0.1 "$mqtt_port" tester "$password" "cut/$r" "$acks" \
        2>"$work/load-$r.log" &
    load_pid=$!
    # Cut at a different point each round: after 150 + 37 * r acknowledgements (bounded wait).
    target=$((150 + 37 * r))
    enough_acks() { [ "$(wc -l <"$acks")" -ge "$target" ]; }
    wait_for 300 "$target acknowledgements (round $r)" enough_acks
    power_cut
    kill "$load_pid" 2>/dev/null || true
    wait "$load_pid" 2>/dev/null || true
    load_pid=""
    acked=$(sort -un "$acks" | wc -l)

    extract_data "$work/cut-$r"
    integrity=$(python3 - "$work/cut-$r" <<'EOF'
import sqlite3, sys
results = []
for name in ("journal.sqlite", "config.sqlite"):
    db = sqlite3.connect(f"{sys.argv[1]}/{name}")
    results.append(db.execute("PRAGMA integrity_check").fetchone()[0])
    db.close()
print(" / ".join(results))
EOF
    )
    # Every message acknowledged in this round and all before must be in the history: a recovery that lost or
    # moved aside an earlier round's data counts as much as this round's.
    weir_host history export --data-dir "$work/cut-$r" --filter 'cut/#' --format jsonl >"$work/history-$r.jsonl" ||
        fail "weir history export failed after round $r"
    python3 - "$work" "$r" >"$work/missing-$r.txt" <<'EOF'
import json, sys
work, rounds = sys.argv[1], int(sys.argv[2])
stored = set()
for line in open(f"{work}/history-{rounds}.jsonl"):
    payload = json.loads(line)["payload"]
    topic, _, n = payload.rpartition("/")
    stored.add((topic, int(n)))
this_round = sum(1 for topic, _ in stored if topic == f"cut/{rounds}")
missing = []
for r in range(1, rounds + 1):
    for line in open(f"{work}/acks-{r}.txt"):
        if line.strip() and (f"cut/{r}", int(line)) not in stored:
            missing.append(f"cut/{r}/{int(line)}")
print(this_round)
print("\n".join(missing))
EOF
    stored=$(head -n 1 "$work/missing-$r.txt")
    missing=$(tail -n +2 "$work/missing-$r.txt" | grep -c . || true)

    boot "$r"
    record "| $r | $acked | $stored | $missing | $integrity | $boot_secs s |"
    if [ "$missing" -ne 0 ] || [ "$integrity" != "ok / ok" ]; then
        failures=$((failures + 1))
    fi
done
record ""
power_cut
[ "$failures" -eq 0 ] || fail "$failures of $rounds rounds lost acknowledged messages or failed integrity_check"
record "All $rounds rounds: every acknowledged message in the history, integrity_check ok, the gateway back after each cut."

# --- 5. the watchdog -----------------------------------------------------------------------------------------
# The agent stops the gateway with SIGSTOP (no more WATCHDOG=1, like a hung router); systemd must kill and restart
# it on its own.
boot hang weir-test.hang
wait_for 400 "watchdog report" grep -q 'WEIR-TEST hang-done' "$work/agent-hang.log"
hang() { sed -n "s/^WEIR-TEST $1 //p" "$work/agent-hang.log" | head -n 1; }
record ""
record "- watchdog: gateway stopped with SIGSTOP; running again after $(hang watchdog-secs) s" \
    "(restarts, new and old pid: $(hang watchdog-restarts)); systemd said: $(hang watchdog-result)"
read -r restarts _ new_pid _ old_pid <<<"$(hang watchdog-restarts)"
[ "$restarts" -ge 1 ] && [ "$new_pid" != "$old_pid" ] && [ "$new_pid" != 0 ] ||
    fail "the watchdog did not restart the stopped gateway: $(hang watchdog-restarts)"
python3 tests/image/mqtt_tools.py connack 127.0.0.1 "$mqtt_port" 120 >/dev/null ||
    fail "no CONNACK after the watchdog restart"
power_cut
