SUMMARY = "dstack dev image: SSH with public keys from the host-shared configuration"
DESCRIPTION = "sshd accepts public keys only (no password, no empty password); \
root's authorized_keys come from the ssh_authorized_keys of the host-shared .user-config."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://dstack-dev-ssh-keys file://dstack-dev-ssh-keys.service file://dstack-dev.conf"
S = "${UNPACKDIR}"

inherit allarch systemd

do_install() {
	install -d "${D}${nonarch_libdir}/dstack" "${D}${systemd_system_unitdir}" "${D}${sysconfdir}/ssh/sshd_config.d"
	install -m 0755 "${S}/dstack-dev-ssh-keys" "${D}${nonarch_libdir}/dstack/dev-ssh-keys"
	install -m 0644 "${S}/dstack-dev-ssh-keys.service" "${D}${systemd_system_unitdir}/dstack-dev-ssh-keys.service"
	install -m 0644 "${S}/dstack-dev.conf" "${D}${sysconfdir}/ssh/sshd_config.d/10-dstack-dev.conf"
}

SYSTEMD_SERVICE:${PN} = "dstack-dev-ssh-keys.service"
FILES:${PN} = "${nonarch_libdir}/dstack/dev-ssh-keys ${systemd_system_unitdir} ${sysconfdir}/ssh/sshd_config.d"
RDEPENDS:${PN} = "jq openssh-sshd dstack-runtime"
