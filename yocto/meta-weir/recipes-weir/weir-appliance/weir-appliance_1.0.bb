# nooelint: oelint.var.mandatoryvar.HOMEPAGE,oelint.var.suggestedvar.BUGTRACKER,oelint.var.bbclassextend,oelint.var.suggestedvar.CVE_PRODUCT - Weir has no public address yet; boot glue of this layer, for the gateway only
SUMMARY = "Weir appliance glue: per-board host name, data partition, setup code"
DESCRIPTION = "Boot-time services of the Weir SD-card image: a host name from the board's serial number, the \
               data partition grown to fill the card, the console setup code on the login screen, DNS-SD for MQTT."
SECTION = "net"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://weir-hostname;beginline=2;endline=2;md5=653b254f286b881bdce1d14afdede628"

SRC_URI = "file://weir-hostname \
           file://weir-hostname.service \
           file://weir-growdata \
           file://weir-growdata.service \
           file://weir-issue \
           file://weir-issue.service \
           file://weir-issue.path \
           file://weir-mqtt.service.avahi \
           "

S = "${UNPACKDIR}"

inherit systemd allarch

SYSTEMD_SERVICE:${PN} = "weir-hostname.service weir-growdata.service weir-issue.service weir-issue.path"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install() {
    install -d ${D}${libexecdir}/weir ${D}${systemd_system_unitdir} ${D}${sysconfdir}/issue.d \
        ${D}${sysconfdir}/avahi/services
    for script in weir-hostname weir-growdata weir-issue; do
        install -m 0755 ${UNPACKDIR}/$script ${D}${libexecdir}/weir/$script
    done
    for unit in weir-hostname.service weir-growdata.service weir-issue.service weir-issue.path; do
        install -m 0644 ${UNPACKDIR}/$unit ${D}${systemd_system_unitdir}/$unit
    done
    install -m 0644 ${UNPACKDIR}/weir-mqtt.service.avahi ${D}${sysconfdir}/avahi/services/weir-mqtt.service
    # The root file system is read-only: agetty reads the setup code through this link into /run.
    ln -sf /run/weir-issue/weir.issue ${D}${sysconfdir}/issue.d/weir.issue
}

FILES:${PN} += "${systemd_system_unitdir} ${libexecdir}/weir"
RDEPENDS:${PN} = "avahi-daemon util-linux-agetty util-linux-partx util-linux-sfdisk"
