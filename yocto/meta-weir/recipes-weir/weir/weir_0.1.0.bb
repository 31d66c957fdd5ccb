# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.bbclassextend - Weir has no public address yet; it runs on the gateway only, never on the build host
SUMMARY = "Weir edge gateway: MQTT broker, history, Kafka forwarding, web console"
DESCRIPTION = "One binary that devices on the plant floor talk MQTT to, with users, ACLs, TLS with its own \
               certificate authority, and a SQLite journal that loses nothing a client was told was received."
SECTION = "net"
CVE_PRODUCT = "weir"

# Weir itself is Apache-2.0. The binary links, statically, crates under MIT, Apache-2.0, ISC, BSD-3-Clause,
# Zlib and Unicode-3.0 (where a crate offers a choice, MIT or Apache-2.0 is taken), and SQLite, which is in the
# public domain (bundled by libsqlite3-sys). `cargo metadata --filter-platform aarch64-unknown-linux-gnu` lists
# them per crate.
LICENSE = "Apache-2.0 & MIT & ISC & BSD-3-Clause & Zlib & Unicode-3.0 & PD"
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=7;endline=7;md5=2507bd5f0713f05419cd2f22fa06fe62"

# By default the source is the git repository this layer is part of (its committed branch WEIR_GIT_BRANCH, at
# its newest commit). A release build sets WEIR_GIT_URI to the published repository and SRCREV to a tag's commit.
PV .= "+git"
WEIR_GIT_URI ??= "${@os.path.normpath(os.path.join(d.getVar('WEIR_LAYERDIR'), '..', '..'))}"
WEIR_GIT_PROTOCOL ??= "file"
WEIR_GIT_BRANCH ??= "main"
SRC_URI = "git://${WEIR_GIT_URI};protocol=${WEIR_GIT_PROTOCOL};branch=${WEIR_GIT_BRANCH} \
           file://weir.service \
           file://weir.toml \
           "
# nooelint: oelint.vars.autorev - the default builds this checkout's branch; a release pins SRCREV.
SRCREV ??= "${AUTOREV}"

# The crates of Cargo.lock, with their checksums: regenerate with scripts/gen-crates-inc.py.
require ${BPN}-crates.inc

# cmake first, so that cargo's do_configure, do_compile and do_install win: from cmake only the toolchain file
# (do_generate_toolchain_file) is used, for librdkafka's C build below.
inherit cmake cargo cargo-update-recipe-crates pkgconfig systemd useradd

# The appliance profile of Cargo.toml (LTO, one codegen unit). Yocto strips and splits debug information itself
# (the -dbg package), so cargo must leave the symbols in.
BUILD_MODE = "--profile appliance"
BUILD_DIR = "appliance"
export CARGO_PROFILE_APPLIANCE_STRIP = "none"

# Kafka forwarding, the cargo feature `kafka` (on by default): rdkafka-sys compiles librdkafka in C and C++ with
# cmake (cmake-native), links OpenSSL for TLS and SASL (openssl: libssl.so.3 and libcrypto.so.3 on the target)
# and zlib (libz.so.1; found by pkg-config, pkgconfig above). librdkafka includes curl.h even without its curl
# support, so curl is needed for that header only: nothing links libcurl. zstd and lz4 are compiled in from the
# crates' own sources. The binary's other shared libraries are glibc's and libgcc_s; the packages providing
# all of them become RDEPENDS of weir by Yocto's shared library scan, as tests/cross/smoke.sh checks against
# the same list (readelf) for the Debian cross build. Without kafka in PACKAGECONFIG, cargo builds without the
# default features and needs none of this.
PACKAGECONFIG ??= "kafka"
PACKAGECONFIG[kafka] = ",,cmake-native curl openssl zlib"
CARGO_BUILD_FLAGS:append = " ${@bb.utils.contains('PACKAGECONFIG', 'kafka', '', '--no-default-features', d)}"
# cmake runs inside rdkafka-sys's build script (the cmake crate), which takes the toolchain file that the cmake
# class writes for this recipe: the target's compilers and flags, and headers and libraries searched in the
# recipe's sysroot only, never on the build host.
export TARGET_CMAKE_TOOLCHAIN_FILE = "${WORKDIR}/toolchain.cmake"

SYSTEMD_SERVICE:${PN} = "weir.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --home-dir ${localstatedir}/lib/weir --no-create-home --shell /sbin/nologin weir"

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${sysconfdir}/weir
    install -m 0644 ${UNPACKDIR}/weir.service ${D}${systemd_system_unitdir}/weir.service
    install -m 0644 ${UNPACKDIR}/weir.toml ${D}${sysconfdir}/weir/weir.toml
}

CONFFILES:${PN} = "${sysconfdir}/weir/weir.toml"
FILES:${PN} += "${systemd_system_unitdir}/weir.service"
