#!/bin/sh
# Runs in the test guest at every boot (weir-test-agent.service, installed by boot-test.sh only, never in the
# image): reports on the gateway to the host through the virtio serial port weir.agent, and creates the test
# user once. Every line starts with "WEIR-TEST "; the host waits for "WEIR-TEST agent-done".
out=/dev/virtio-ports/weir.agent
say() { echo "WEIR-TEST $*" >"$out"; }
config=/etc/weir/weir.toml
# The unit is Type=notify: "active" means weir sent READY=1. Bounded: 300 s.
i=0
while [ "$(systemctl is-active weir)" != active ] && [ $i -lt 3000 ]; do sleep 0.1; i=$((i + 1)); done
say "weir-active $(systemctl is-active weir)"
say "weir-ready-usec $(systemctl show -P ActiveEnterTimestampMonotonic weir)"
say "weir-restarts $(systemctl show -P NRestarts weir)"
say "data-mount $(findmnt -n -o SOURCE,LABEL,FSTYPE /var/lib/weir | tr -s ' ' ',')"
say "journal-fs $(findmnt -n -o SOURCE --target /var/lib/weir/journal.sqlite)"
say "data-dir $(stat -c '%a,%U' /var/lib/weir)"
pid=$(systemctl show -P MainPID weir)
say "weir-rss-kb $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")"
say "mem-total-kb $(awk '/^MemTotal/ {print $2}' /proc/meminfo)"
say "mem-available-kb $(awk '/^MemAvailable/ {print $2}' /proc/meminfo)"
if ! runuser -u weir -- weir user list --config "$config" | grep -q '^tester'; then
    runuser -u weir -- weir user add tester --role admin --config "$config" </etc/weir-test/password >/dev/null 2>&1
fi
say "user $(runuser -u weir -- weir user list --config "$config" | awk '$1 == "tester" {print $1 "," $2}')"
say "ca-begin"
runuser -u weir -- weir ca export --config "$config" >"$out"
say "ca-end"
say "agent-done"

# weir-test.hang on the kernel command line: stop the gateway (SIGSTOP, as if its router hung) and time how long
# systemd's watchdog (WatchdogSec= in the unit) takes to have it running again. Bounded: 300 s.
if grep -qw 'weir-test.hang' /proc/cmdline; then
    restarts=$(systemctl show -P NRestarts weir)
    kill -STOP "$pid"
    start=$(cut -d' ' -f1 /proc/uptime)
    i=0
    while [ $i -lt 3000 ]; do
        if [ "$(systemctl show -P NRestarts weir)" != "$restarts" ] && [ "$(systemctl is-active weir)" = active ]; then
            break
        fi
        sleep 0.1
        i=$((i + 1))
    done
    end=$(cut -d' ' -f1 /proc/uptime)
    say "watchdog-restarts $(systemctl show -P NRestarts weir) new-pid $(systemctl show -P MainPID weir) old-pid $pid"
    say "watchdog-secs $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
    say "watchdog-result $(journalctl -u weir -o cat --no-pager | grep -m 1 -i 'watchdog' || echo none)"
    say "hang-done"
fi
