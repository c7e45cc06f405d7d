# imgpost ships and measures the raw firmware image; oe-core deploys only qcow2.
do_deploy:append:class-target() {
	install -m 0644 "${WORKDIR}/ovmf/ovmf.fd" "${DEPLOYDIR}/ovmf.fd"
}
