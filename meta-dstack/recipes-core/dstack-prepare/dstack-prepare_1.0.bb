SUMMARY = "dstack data-disk preparation"
DESCRIPTION = "Picks the persistent data disk (dstack.data_dev, else PARTLABEL=dstack-data, \
else /dev/vdb), partitions an empty one, and hands it to the dstack guest agent's setup."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://dstack-prepare file://dstack-prepare.service"
S = "${UNPACKDIR}"

inherit allarch systemd

do_install() {
	install -d "${D}${bindir}" "${D}${systemd_system_unitdir}"
	install -m 0755 "${S}/dstack-prepare" "${D}${bindir}/dstack-prepare"
	install -m 0644 "${S}/dstack-prepare.service" "${D}${systemd_system_unitdir}/dstack-prepare.service"
}

SYSTEMD_SERVICE:${PN} = "dstack-prepare.service"
FILES:${PN} = "${bindir}/dstack-prepare ${systemd_system_unitdir}/dstack-prepare.service"
RDEPENDS:${PN} = "dstack-devspec gptfdisk util-linux-sfdisk"
