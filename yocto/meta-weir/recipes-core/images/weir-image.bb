# nooelint: oelint.var.suggestedvar.BUGTRACKER,oelint.var.suggestedvar.CVE_PRODUCT - Weir has no public address yet; an image, not a product CVEs name
SUMMARY = "Weir gateway SD-card image for the Raspberry Pi"
DESCRIPTION = "systemd, a read-only root file system and a data partition for /var/lib/weir that grows to \
               fill the card at first boot; reachable as <hostname>.local through Avahi."
SECTION = "images"
LICENSE = "MIT"

inherit core-image

# The root file system is never written: a power cut can only damage the data partition, which Weir's journal
# is made to survive (docs/APPLIANCE.md). /var/log and /tmp are in RAM (the journal of systemd too).
IMAGE_FEATURES += "read-only-rootfs ssh-server-openssh"

IMAGE_INSTALL:append = " weir weir-appliance avahi-daemon kernel-modules"

# boot (FAT, firmware and kernel), root (ext4, read-only), data (ext4, /var/lib/weir).
WKS_FILE = "weir-sdimage.wks"
IMAGE_FSTYPES = "wic.bz2 wic.bmap"

# Administration over SSH, by key only (there is no default password): set WEIR_SSH_AUTHORIZED_KEY to a public
# key, e.g. in the kas file's local.conf, to log in as root.
WEIR_SSH_AUTHORIZED_KEY ??= ""
ROOTFS_POSTPROCESS_COMMAND += "weir_authorized_key"
weir_authorized_key[doc] = "Installs WEIR_SSH_AUTHORIZED_KEY as root's SSH key, if set"
weir_authorized_key() {
    if [ -n "${WEIR_SSH_AUTHORIZED_KEY}" ]; then
        install -d -m 0700 ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh
        echo "${WEIR_SSH_AUTHORIZED_KEY}" >${IMAGE_ROOTFS}${ROOT_HOME}/.ssh/authorized_keys
        chmod 0600 ${IMAGE_ROOTFS}${ROOT_HOME}/.ssh/authorized_keys
    fi
}
