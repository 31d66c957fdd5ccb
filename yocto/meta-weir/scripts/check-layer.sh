#!/usr/bin/env bash
# Checks of meta-weir that run without bitbake (CI runs this from .ci/test):
#   1. recipes-weir/weir/weir-crates.inc matches Cargo.lock (scripts/gen-crates-inc.py --check);
#   2. oelint-adv finds nothing in the recipes (rules for Yocto "wrynose"; the few inline `nooelint` comments in
#      the recipes say why);
#   3. the appliance configuration passes `weir check-config` with the given weir binary;
#   4. systemd-analyze (if installed) verifies every unit of the layer in a scratch root holding the weir binary
#      and the layer's scripts, and rates weir.service's exposure at 2.0 or better ("OK").
#
#   yocto/meta-weir/scripts/check-layer.sh [WEIR_BINARY]     # default target/debug/weir (host build)
#
# oelint-adv comes from $OELINT, else from the virtualenv that .ci/setup makes (~/.cache/weir-oelint).
set -euo pipefail
layer=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$layer/../.." && pwd)
weir=${1:-$repo/target/debug/weir}
oelint=${OELINT:-${XDG_CACHE_HOME:-$HOME/.cache}/weir-oelint/bin/oelint-adv}

"$layer/scripts/gen-crates-inc.py" --check

mapfile -t recipes < <(find "$layer" -name '*.bb' -o -name '*.bbappend' | sort)
findings=$("$oelint" --quiet --release wrynose --mode all --relpaths "${recipes[@]}" 2>&1) || true
if [ -n "$findings" ]; then
    echo "$findings" >&2
    echo "check-layer: oelint-adv found the above" >&2
    exit 1
fi

"$weir" check-config "$layer/recipes-weir/weir/files/weir.toml" >/dev/null

if command -v systemd-analyze >/dev/null; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    # The units as the image installs them, beside a copy of the system's own units (sysinit.target etc.).
    mkdir -p "$root/usr/bin" "$root/usr/libexec/weir" "$root/etc/systemd/system" "$root/lib/systemd"
    cp -r /lib/systemd/system "$root/lib/systemd/"
    cp "$weir" "$root/usr/bin/weir"
    cp "$layer"/recipes-weir/weir-appliance/files/weir-{hostname,growdata,issue} "$root/usr/libexec/weir/"
    units=()
    for unit in "$layer"/recipes-weir/*/files/*.service "$layer"/recipes-weir/*/files/*.path; do
        cp "$unit" "$root/etc/systemd/system/"
        units+=("/etc/systemd/system/${unit##*/}")
    done
    # verify only warns about unknown keys and the like: any output at all is a finding.
    verified=$(systemd-analyze verify --man=no --root="$root" "${units[@]}" 2>&1) || true
    if [ -n "$verified" ]; then
        echo "$verified" >&2
        echo "check-layer: systemd-analyze verify found the above" >&2
        exit 1
    fi
    systemd-analyze security --offline=yes --root="$root" --threshold=20 --no-pager weir.service >/dev/null ||
        { echo "check-layer: weir.service is exposed more than 2.0 (systemd-analyze security)" >&2; exit 1; }
fi
echo "check-layer: crates include current, oelint-adv clean, weir.toml accepted, units verified"
