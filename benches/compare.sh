#!/usr/bin/env bash
# Weir vs Mosquitto, one broker at a time, each scenario back to back on every broker configuration.
#
#   benches/compare.sh                      # every scenario; Weir synced, batched, off + Mosquitto (persistence
#                                           # off and on); release build
#   benches/compare.sh --scenarios fanin-q0,fanout-q0 --duration 5
#   benches/compare.sh --brokers weir-synced,mosquitto-nopersist
#   benches/compare.sh --smoke              # ~1 s per scenario, few clients, Weir only, debug build: checks that
#                                           # every scenario runs and reports numbers (never speeds)
#
# Broker configurations are the files in benches/configs/: weir-<name>.toml runs target/<profile>/weir,
# mosquitto-<name>.conf runs /usr/sbin/mosquitto; @PORT@ and @DATA_DIR@ are filled in (a fresh temporary
# directory for every broker start). Results: <out>/results.jsonl (one JSON line per run), <out>/table.md and,
# for every pub/sub run on a Weir configuration with a journal, <out>/ingest.md: how many messages the journal
# recorded and how fast (its row count sampled every 0.25 s with sqlite3 while the run goes), next to what was
# sent. Only loopback ports from 21883 up are used (never 1883/8883/8080).
#
# Scenario ids containing -tls connect over TLS: the broker gets a second listener from benches/configs/tls/ on the
# next free port, with one certificate for both brokers (made once per run by Weir, see tls_setup). Ids ending in
# -auth connect with a user name and password, a user made in the fresh broker before it starts, with a rule that
# allows it the load generator's topics (weir-bench/#): Weir `weir acl add`, Mosquitto `acl_file`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=0
DEFAULT_BROKERS=weir-synced,weir-batched,weir-off,mosquitto-nopersist,mosquitto-persist
BROKERS=$DEFAULT_BROKERS
SCENARIOS=all
DURATION=10
OUT=""
BASE_PORT=21883
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --brokers) BROKERS=$2; shift ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --out) OUT=$2; shift ;;
        --port) BASE_PORT=$2; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
    shift
done

ALL_SCENARIOS=fanin-q0,fanout-q0,fanin-q1,pairs-q1,pairs-q2,pairs-q1-16b,pairs-q1-4k,fanin-q0-4k,pairs-q1-auth
ALL_SCENARIOS+=,fanin-q0-half
ALL_SCENARIOS+=,pairs-q1-half,connect-storm
ALL_SCENARIOS+=,connect-storm-auth,connect-storm-tls,connect-storm-tls-auth,retained-50k,idle-broker,idle-10k
if [ "$SMOKE" = 1 ]; then
    [ "$BROKERS" = "$DEFAULT_BROKERS" ] && BROKERS=weir-synced
    DURATION=1
fi
[ "$SCENARIOS" = all ] && SCENARIOS=$ALL_SCENARIOS

# Thousands of sockets on each side; the brokers inherit the limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "$SMOKE" = 1 ]; then
    cargo build --locked --quiet -p weir -p weir-loadgen
    BIN=$TARGET_DIR/debug
else
    cargo build --locked --release -p weir -p weir-loadgen
    BIN=$TARGET_DIR/release
fi
LOADGEN=$BIN/weir-loadgen

WORK=$(mktemp -d /tmp/weir-bench.XXXXXX)
chmod 0711 "$WORK" # Mosquitto started as root reads its password and TLS files here as its own user
[ -n "$OUT" ] || OUT=$WORK
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
BROKER_PID=""
stop_broker() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$BROKER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
}
cleanup() { ! declare -F stop_sampler >/dev/null || stop_sampler; stop_broker; [ "$OUT" = "$WORK" ] || rm -rf "$WORK"; }
trap cleanup EXIT

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # the first port from $1 on that nothing listens on
    local p=$1
    while listening "$p"; do p=$((p + 1)); done
    echo "$p"
}
# wait_listening PORT PID LOG WHAT: until PORT accepts connections; exits with LOG if PID dies or 10 s pass.
wait_listening() {
    for _ in $(seq 200); do
        listening "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.05
    done
    echo "$4 did not start listening on $1; its log:" >&2
    cat "$3" >&2
    exit 1
}

is_tls() { [[ $1 == *-tls* ]]; }
is_auth() { [[ $1 == *-auth ]]; }
# The user of the -auth scenarios (no spaces: the loadgen arguments are split on them).
BENCH_USER=bench
BENCH_PASSWORD=bench-password-7f3a

# TLS material for every TLS scenario of the run, made once: Weir's CA and the server certificate that `weir
# serve` issues itself for a loopback TLS listener (ECDSA P-256, signed by the CA), made by starting Weir once on
# an empty data directory. Every Weir start gets a copy of that <data>/pki (so it presents the same certificate
# instead of issuing a new one) and Mosquitto the same chain and key: both brokers do the same crypto. The load
# generator trusts the CA, exported with `weir ca export`.
TLS_DIR=$WORK/tls
tls_setup() {
    [ ! -d "$TLS_DIR" ] || return 0
    local port
    mkdir -p "$TLS_DIR/weir-data"
    port=$(free_port "$BASE_PORT")
    printf 'data_dir = "%s"\n[[listener]]\nname = "tls"\nprotocol = "tls"\nbind = "127.0.0.1:%s"\n[journal]\ndurability = "off"\n[console]\nbind = "127.0.0.1:0"\n' \
        "$TLS_DIR/weir-data" "$port" >"$TLS_DIR/weir.toml"
    RUST_LOG=warn "$BIN/weir" serve --config "$TLS_DIR/weir.toml" >/dev/null 2>"$TLS_DIR/weir.log" &
    BROKER_PID=$!
    wait_listening "$port" "$BROKER_PID" "$TLS_DIR/weir.log" "weir (making the TLS certificates)"
    # Weir binds its listeners before it makes its certificates.
    for _ in $(seq 200); do
        [ ! -s "$TLS_DIR/weir-data/pki/server.key" ] || break
        sleep 0.05
    done
    stop_broker
    "$BIN/weir" ca export --data-dir "$TLS_DIR/weir-data" --out "$TLS_DIR/ca.crt" 2>>"$TLS_DIR/weir.log"
    cat "$TLS_DIR/weir-data/pki/server.crt" "$TLS_DIR/ca.crt" >"$TLS_DIR/server-chain.pem"
    cp "$TLS_DIR/weir-data/pki/server.key" "$TLS_DIR/server.key"
    chmod 0644 "$TLS_DIR/server.key" # Mosquitto started as root drops to its own user; a throwaway key
}

# start_broker NAME SCENARIO: starts a fresh broker from benches/configs/NAME.* (plus the TLS listener and the
# user the scenario needs), sets BROKER_PID, PORT (the TCP listener), LG_PORT (the one the scenario uses) and DATA.
start_broker() {
    local name=$1 id=$2 conf data log
    PORT=$(free_port "$BASE_PORT")
    LG_PORT=$PORT
    if is_tls "$id"; then LG_PORT=$(free_port $((PORT + 1))); fi
    data=$(mktemp -d "$WORK/data-$name-$id.XXXX")
    chmod 0777 "$data" # Mosquitto started as root drops to its own user
    DATA=$data
    log=$WORK/$name-$id.log
    case "$name" in
        weir-*)
            conf=$WORK/$name-$id.toml
            sed -e "s|@PORT@|$PORT|g" -e "s|@DATA_DIR@|$data|g" "benches/configs/$name.toml" >"$conf"
            if is_tls "$id"; then
                sed -e "s|@TLS_PORT@|$LG_PORT|g" benches/configs/tls/weir.toml >>"$conf"
                cp -rp "$TLS_DIR/weir-data/pki" "$data/pki"
            fi
            if is_auth "$id"; then
                echo "$BENCH_PASSWORD" | "$BIN/weir" user add "$BENCH_USER" --config "$conf" 2>>"$log"
                # The load generator's topics; rules are checked on every publish and subscription.
                "$BIN/weir" acl add "user:$BENCH_USER" allow both 'weir-bench/#' --config "$conf" >/dev/null 2>>"$log"
            fi
            RUST_LOG=warn "$BIN/weir" serve --config "$conf" >/dev/null 2>>"$log" &
            ;;
        mosquitto-*)
            conf=$WORK/$name-$id.conf
            sed -e "s|@PORT@|$PORT|g" -e "s|@DATA_DIR@|$data|g" "benches/configs/$name.conf" >"$conf"
            if is_auth "$id"; then
                # Mosquitto 2.0's default hash: PBKDF2-SHA512, 101 iterations.
                mosquitto_passwd -b -c "$data/passwd" "$BENCH_USER" "$BENCH_PASSWORD"
                chmod 0644 "$data/passwd"
                echo "password_file $data/passwd" >>"$conf"
                printf 'user %s\ntopic readwrite weir-bench/#\n' "$BENCH_USER" >"$data/acl"
                chmod 0644 "$data/acl"
                echo "acl_file $data/acl" >>"$conf"
            fi
            if is_tls "$id"; then
                sed -e "s|@TLS_PORT@|$LG_PORT|g" -e "s|@TLS_DIR@|$TLS_DIR|g" benches/configs/tls/mosquitto.conf >>"$conf"
            fi
            "$MOSQUITTO" -c "$conf" 2>"$log" &
            ;;
        *) echo "unknown broker configuration $name (want weir-* or mosquitto-*)" >&2; exit 2 ;;
    esac
    BROKER_PID=$!
    wait_listening "$LG_PORT" "$BROKER_PID" "$log" "broker $name"
}

# The loadgen arguments of each scenario.
scenario_args() {
    local d=$DURATION
    if [ "$SMOKE" = 1 ]; then
        case "$1" in
            fanin-q0) echo "fan-in --clients 3 --qos 0 --duration $d" ;;
            fanout-q0) echo "fan-out --clients 3 --qos 0 --duration $d" ;;
            fanin-q1) echo "fan-in --clients 3 --qos 1 --duration $d" ;;
            pairs-q1) echo "pairs --clients 3 --qos 1 --duration $d" ;;
            pairs-q2) echo "pairs --clients 3 --qos 2 --duration $d" ;;
            pairs-q1-16b) echo "pairs --clients 3 --qos 1 --payload 16 --duration $d" ;;
            pairs-q1-auth) echo "pairs --clients 3 --qos 1 --duration $d" ;;
            pairs-q1-4k) echo "pairs --clients 3 --qos 1 --payload 4096 --duration $d" ;;
            fanin-q0-4k) echo "fan-in --clients 3 --qos 0 --payload 4096 --duration $d" ;;
            fanin-q0-half) echo "fan-in --clients 3 --qos 0 --duration $d --rate $(half fanin-q0)" ;;
            pairs-q1-half) echo "pairs --clients 3 --qos 1 --duration $d --rate $(half pairs-q1)" ;;
            connect-storm) echo "connect-storm --clients 50" ;;
            connect-storm-auth | connect-storm-tls | connect-storm-tls-auth) echo "connect-storm --clients 20" ;;
            retained-50k) echo "retained --clients 200 --payload 32" ;;
            idle-broker) echo "idle --clients 0 --duration 0.5" ;;
            idle-10k) echo "idle --clients 100 --duration 0.5" ;;
            *) echo "unknown scenario $1" >&2; exit 2 ;;
        esac
        return
    fi
    case "$1" in
        fanin-q0) echo "fan-in --clients 10 --qos 0 --payload 256 --duration $d" ;;
        fanout-q0) echo "fan-out --clients 10 --qos 0 --payload 256 --duration $d" ;;
        fanin-q1) echo "fan-in --clients 10 --qos 1 --payload 256 --duration $d" ;;
        pairs-q1) echo "pairs --clients 10 --qos 1 --payload 256 --duration $d" ;;
        pairs-q2) echo "pairs --clients 10 --qos 2 --payload 256 --duration $d" ;;
        pairs-q1-16b) echo "pairs --clients 10 --qos 1 --payload 16 --duration $d" ;;
        pairs-q1-auth) echo "pairs --clients 10 --qos 1 --payload 256 --duration $d" ;;
        pairs-q1-4k) echo "pairs --clients 10 --qos 1 --payload 4096 --duration $d" ;;
        fanin-q0-4k) echo "fan-in --clients 10 --qos 0 --payload 4096 --duration $d" ;;
        fanin-q0-half) echo "fan-in --clients 10 --qos 0 --payload 256 --duration $d --rate $(half fanin-q0)" ;;
        pairs-q1-half) echo "pairs --clients 10 --qos 1 --payload 256 --duration $d --rate $(half pairs-q1)" ;;
        connect-storm | connect-storm-auth | connect-storm-tls | connect-storm-tls-auth)
            echo "connect-storm --clients 1000" ;;
        retained-50k) echo "retained --clients 50000 --payload 32" ;;
        idle-broker) echo "idle --clients 0 --duration 2" ;;
        idle-10k) echo "idle --clients 10000 --duration 5 --keep-alive 600" ;;
        *) echo "unknown scenario $1" >&2; exit 2 ;;
    esac
}

# Half of the slowest broker's publish rate in an earlier max-rate run (the same rate for every broker).
half() {
    "$LOADGEN" half-rate "$RESULTS" "$1" 2>/dev/null || {
        echo "scenario ${1}-half needs $1 to run first (in the same --scenarios list)" >&2
        exit 2
    }
}

# Journal ingest: while a pub/sub run goes on a Weir broker with a journal, sample the journal's newest id
# (max(id) is an index lookup, unlike count(*)) every 0.25 s; afterwards count the rows once the broker has shut
# down (and flushed). The rate is the slope between the first and the last sample at which the id moved.
SAMPLER_PID=""
journal_file() { echo "$DATA/journal.sqlite"; }
start_sampler() {
    SAMPLES=$WORK/samples-$1.tsv
    : >"$SAMPLES"
    (
        while :; do
            n=$(sqlite3 -readonly "$(journal_file)" 'SELECT coalesce(max(id), 0) FROM messages' 2>/dev/null) || n=""
            [ -n "$n" ] && echo "$(date +%s.%N) $n" >>"$SAMPLES"
            sleep 0.25
        done
    ) &
    SAMPLER_PID=$!
}
stop_sampler() {
    if [ -n "$SAMPLER_PID" ]; then
        kill "$SAMPLER_PID" 2>/dev/null || true
        wait "$SAMPLER_PID" 2>/dev/null || true
    fi
    SAMPLER_PID=""
}
INGEST=$OUT/ingest.md
ingest_row() { # scenario broker: after the broker stopped
    local sc=$1 br=$2 rows sent rate
    rows=$(sqlite3 -readonly "$(journal_file)" 'SELECT count(*) FROM messages' 2>/dev/null || echo "?")
    sent=$(tail -n 1 "$RESULTS" | jq -r '.sent')
    # start: the sample before the id first moved; end: the last sample at which it moved.
    rate=$(awk 'NR > 1 && $2 > np { if (t0 == "") { t0 = tp; n0 = np }; t1 = $1; n1 = $2 }
                { tp = $1; np = $2 }
                END { if (t1 > t0) printf "%.0f", (n1 - n0) / (t1 - t0); else print "-" }' "$SAMPLES")
    [ -s "$INGEST" ] || {
        echo "| run | broker | sent | journal rows | not recorded (sent - rows) | journal ingest rows/s |"
        echo "| --- | --- | ---: | ---: | ---: | ---: |"
    } >"$INGEST"
    local missing="?"
    if [[ "$rows" =~ ^[0-9]+$ && "$sent" =~ ^[0-9]+$ ]]; then missing=$((sent - rows)); fi
    echo "| $sc | $br | $sent | $rows | $missing | $rate |" >>"$INGEST"
}
command -v sqlite3 >/dev/null || echo "sqlite3 not installed: no journal ingest numbers" >&2

FAILED=0
IFS=, read -r -a scenario_list <<<"$SCENARIOS"
IFS=, read -r -a broker_list <<<"$BROKERS"
for sc in "${scenario_list[@]}"; do
    args=$(scenario_args "$sc")
    if is_tls "$sc"; then
        tls_setup
        args+=" --tls --cafile $TLS_DIR/ca.crt"
    fi
    if is_auth "$sc"; then args+=" --username $BENCH_USER --password $BENCH_PASSWORD"; fi
    for br in "${broker_list[@]}"; do
        start_broker "$br" "$sc"
        echo "== $sc on $br (port $LG_PORT, pid $BROKER_PID): weir-loadgen $args" >&2
        journal=0
        case "$br:$args" in
            weir-off:*) ;;
            weir-*:fan-in* | weir-*:fan-out* | weir-*:pairs*)
                command -v sqlite3 >/dev/null && grep -q '^durability = "\(synced\|batched\)"' \
                    "benches/configs/$br.toml" && journal=1 ;;
        esac
        if [ "$journal" = 1 ]; then start_sampler "$br-$sc"; fi
        # shellcheck disable=SC2086 # $args is a list of words on purpose
        if ! "$LOADGEN" $args --port "$LG_PORT" --broker "$br" --broker-pid "$BROKER_PID" --name "$sc" \
            --out "$RESULTS"; then
            echo "!! $sc on $br did not complete (broker log: $WORK/$br-$sc.log)" >&2
            FAILED=1
        fi
        stop_sampler
        stop_broker
        if [ "$journal" = 1 ]; then ingest_row "$sc" "$br"; fi
    done
done

echo
echo "Results: $RESULTS"
echo
if [ "$SMOKE" = 1 ]; then
    "$LOADGEN" report --check "$RESULTS" | tee "$OUT/table.md"
    if [ -s "$INGEST" ]; then echo; cat "$INGEST"; fi
    exit "$FAILED"
fi
"$LOADGEN" report "$RESULTS" | tee "$OUT/table.md"
if [ -s "$INGEST" ]; then echo; cat "$INGEST"; fi
