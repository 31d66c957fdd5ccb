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
