SUMMARY = "dstack initramfs /init"
DESCRIPTION = "Reads dstack.rootfs_hash, dstack.rootfs_size and dstack.rootfs_device from \
the kernel command line, opens the dm-verity root with veritysetup, mounts the squashfs \
read-only and switches to it; on any failure prints the cause and halts."
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

SRC_URI = "file://init"
S = "${UNPACKDIR}"

inherit allarch

do_install() {
	install -m 0755 "${S}/init" "${D}/init"
	install -d "${D}/dev" "${D}/proc" "${D}/sys" "${D}/run" "${D}/mnt"
}

FILES:${PN} = "/init /dev /proc /sys /run /mnt"
# busybox gives sh, mount, switch_root, insmod; cryptsetup gives veritysetup.
RDEPENDS:${PN} = "busybox cryptsetup dstack-devspec"
