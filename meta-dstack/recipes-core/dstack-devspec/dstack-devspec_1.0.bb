SUMMARY = "dstack device-spec resolution library"
DESCRIPTION = "Resolves /dev paths, PARTLABEL= and PARTUUID= device specs from sysfs \
without udev; sourced by the initramfs /init and by dstack-prepare."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://devspec.sh"
S = "${UNPACKDIR}"

inherit allarch

do_install() {
	install -d "${D}${nonarch_libdir}/dstack"
	install -m 0644 "${S}/devspec.sh" "${D}${nonarch_libdir}/dstack/devspec.sh"
}

FILES:${PN} = "${nonarch_libdir}/dstack/devspec.sh"
