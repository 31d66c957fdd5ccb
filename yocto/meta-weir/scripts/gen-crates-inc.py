#!/usr/bin/env python3
"""Writes recipes-weir/weir/weir-crates.inc: one crate:// source per crates.io package in Cargo.lock, with the
checksum Cargo.lock records, so that bitbake's do_fetch downloads exactly the locked crates and verifies them.

    yocto/meta-weir/scripts/gen-crates-inc.py           # regenerate (after every change to Cargo.lock)
    yocto/meta-weir/scripts/gen-crates-inc.py --check   # exit 1 if the include is not current (CI)

Every package of the lock is listed, those of other workspace members and other platforms too: cargo, building
offline against the vendored crates, resolves the whole lock file. Packages from git or a path are not
crates.io downloads; git sources would need a git:// entry, so they are refused here until one appears.
"""

import argparse
import difflib
import sys
import tomllib
from pathlib import Path

LAYER = Path(__file__).resolve().parent.parent
REPO = LAYER.parent.parent
INCLUDE = LAYER / "recipes-weir" / "weir" / "weir-crates.inc"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


def render(lock_path: Path) -> str:
    lock = tomllib.loads(lock_path.read_text())
    crates = []
    for package in lock.get("package", []):
        source = package.get("source")
        if source is None:
            continue  # a workspace member: built from the recipe's own source
        if source != CRATES_IO:
            sys.exit(f"gen-crates-inc: {package['name']} {package['version']} comes from {source}, "
                     "which this script cannot express yet")
        if "checksum" not in package:
            sys.exit(f"gen-crates-inc: {package['name']} {package['version']} has no checksum in Cargo.lock")
        crates.append((package["name"], package["version"], package["checksum"]))
    crates.sort()
    lines = [
        "# Generated from Cargo.lock by yocto/meta-weir/scripts/gen-crates-inc.py: do not edit.",
        "# Regenerate after every change to Cargo.lock; CI (.ci/test) checks that this file is current.",
        "",
        'SRC_URI += "\\',
    ]
    lines += [f"    crate://crates.io/{name}/{version} \\" for name, version, _ in crates]
    lines += ['"', ""]
    lines += [f'SRC_URI[{name}-{version}.sha256sum] = "{checksum}"' for name, version, checksum in crates]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 if different")
    parser.add_argument("--lock", type=Path, default=REPO / "Cargo.lock")
    args = parser.parse_args()
    text = render(args.lock)
    if args.check:
        current = INCLUDE.read_text() if INCLUDE.exists() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(
                current.splitlines(keepends=True), text.splitlines(keepends=True),
                str(INCLUDE.relative_to(REPO)), "from Cargo.lock"))
            print(f"gen-crates-inc: {INCLUDE.relative_to(REPO)} is stale: run {Path(__file__).relative_to(REPO)}",
                  file=sys.stderr)
            return 1
        return 0
    INCLUDE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
