SUMMARY = "dstack guest runtime: writable root, preparation steps, app runner, runtime configuration"
DESCRIPTION = "Everything around the dstack guest agent that makes the verified, read-only \
root run a dstack app: RAM overlays on /etc, /var, /home and /root; the steps of \
dstack-prepare.service before and after dstack-util setup (clock step, TDX \
attestation setup, the data disk bound onto /var/lib/docker, /var/lib/containerd \
and the work directory onto /dstack, the app's init_script, orphan removal, \
reboot on failure); app-compose.service (the docker-compose and bash runners); \
docker/containerd ordering; daemon.json, journald, sysctl and tdx-attest settings."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "\
    file://dstack-rootfs-rw \
    file://dstack-rootfs-rw.service \
    file://dstack-prepare-pre \
    file://dstack-prepare-post \
    file://dstack-prepare-runtime.conf \
    file://dstack-app-compose \
    file://app-compose.service \
    file://docker-dstack.conf \
    file://containerd-dstack.conf \
    file://daemon.json \
    file://journald-dstack.conf \
    file://sysctl-dstack.conf \
    file://tdx-attest.conf \
"
S = "${UNPACKDIR}"

inherit allarch systemd

# The boot test (internal/guesttest) runs this function unchanged to install
# the same files into its Debian-built root: plain install commands only.
do_install() {
	install -d "${D}${nonarch_libdir}/dstack" "${D}${systemd_system_unitdir}"
	install -m 0755 "${S}/dstack-rootfs-rw" "${D}${nonarch_libdir}/dstack/rootfs-rw"
	install -m 0755 "${S}/dstack-prepare-pre" "${D}${nonarch_libdir}/dstack/prepare-pre"
	install -m 0755 "${S}/dstack-prepare-post" "${D}${nonarch_libdir}/dstack/prepare-post"
	install -m 0755 "${S}/dstack-app-compose" "${D}${nonarch_libdir}/dstack/app-compose"
	install -m 0644 "${S}/dstack-rootfs-rw.service" "${D}${systemd_system_unitdir}/dstack-rootfs-rw.service"
	install -m 0644 "${S}/app-compose.service" "${D}${systemd_system_unitdir}/app-compose.service"
	install -d "${D}${systemd_system_unitdir}/dstack-prepare.service.d"
	install -m 0644 "${S}/dstack-prepare-runtime.conf" "${D}${systemd_system_unitdir}/dstack-prepare.service.d/10-dstack-runtime.conf"
	install -d "${D}${systemd_system_unitdir}/docker.service.d"
	install -m 0644 "${S}/docker-dstack.conf" "${D}${systemd_system_unitdir}/docker.service.d/10-dstack.conf"
	install -d "${D}${systemd_system_unitdir}/containerd.service.d"
	install -m 0644 "${S}/containerd-dstack.conf" "${D}${systemd_system_unitdir}/containerd.service.d/10-dstack.conf"
	install -d "${D}${sysconfdir}/docker"
	install -m 0644 "${S}/daemon.json" "${D}${sysconfdir}/docker/daemon.json"
	install -d "${D}${nonarch_libdir}/systemd/journald.conf.d"
	install -m 0644 "${S}/journald-dstack.conf" "${D}${nonarch_libdir}/systemd/journald.conf.d/10-dstack.conf"
	install -d "${D}${nonarch_libdir}/sysctl.d"
	install -m 0644 "${S}/sysctl-dstack.conf" "${D}${nonarch_libdir}/sysctl.d/99-dstack.conf"
	install -m 0644 "${S}/tdx-attest.conf" "${D}${sysconfdir}/tdx-attest.conf"
	# mount points on the read-only root: the work directory, and the legacy name of it
	install -d "${D}/dstack"
	ln -s dstack "${D}/tapp"
}

SYSTEMD_SERVICE:${PN} = "dstack-rootfs-rw.service app-compose.service"
FILES:${PN} = "\
    ${nonarch_libdir}/dstack \
    ${systemd_system_unitdir} \
    ${sysconfdir}/docker/daemon.json \
    ${nonarch_libdir}/systemd/journald.conf.d \
    ${nonarch_libdir}/sysctl.d \
    ${sysconfdir}/tdx-attest.conf \
    /dstack \
    /tapp \
"
CONFFILES:${PN} = "${sysconfdir}/docker/daemon.json ${sysconfdir}/tdx-attest.conf"
# What these scripts run: bash (app runner, init_script), jq, chronyc,
# mount/mountpoint/stat (overlays, bind mounts), docker with compose.
RDEPENDS:${PN} = "bash jq chronyc chrony util-linux-mount util-linux-mountpoint coreutils \
    docker-moby docker-compose dstack-prepare"
