# shellcheck shell=sh
# devspec.sh - resolve dstack device specs without udev, and parse the dstack.*
# kernel command line. Sourced (POSIX sh, busybox ash) by the initramfs /init
# and by dstack-prepare; it defines functions and variables, runs nothing.
#
# A device spec is one of
#   /dev/NAME                 a kernel block device name (vda, nvme0n1p2, ...)
#   /dev/disk/by-id/NAME      a udev by-id name, derived here from sysfs:
#                               virtio-SERIAL[-partN]            (virtio-blk)
#                               nvme-MODEL_SERIAL[-partN]        (NVMe)
#                               nvme-MODEL_SERIAL_NSID[-partN]   (NVMe)
#                               nvme-WWID[-partN]                (NVMe)
#   /dev/disk/by-partlabel/X, /dev/disk/by-partuuid/X  same as PARTLABEL=X, PARTUUID=X
#   any other absolute path   used as is once it exists
#   PARTLABEL=NAME            GPT partition name (sysfs uevent PARTNAME)
#   PARTUUID=UUID             GPT unique partition GUID (read from the primary GPT
#                             of the parent disk), any case
# Specs holding glob or shell characters (* ? [ ] space, quotes, ...) are refused:
# nothing is ever expanded.
#
# Tools used (busybox applets or coreutils): ls sort tr sed od dd readlink (-f)
# mknod date (+%s) sleep.
#
# Inputs (set before sourcing or before calling; defaults in brackets). The
# callers (/init, dstack-prepare) assign every one of them themselves: in a
# booted system none is taken from the environment.
#   DSTACK_SYSFS           sysfs root [/sys]; devices are read from $DSTACK_SYSFS/class/block
#   DSTACK_DEV             device node root [/dev]; resolved paths live under it
#   DSTACK_CMDLINE         kernel command line file [/proc/cmdline]
#   DSTACK_DEVICE_TIMEOUT  seconds to wait for a device [30]; dstack.device_timeout= overrides it
#                          in dstack_boot_params
# Results (functions return 0 on success, non-zero with DSTACK_ERR set):
#   DSTACK_FOUND  the resolved device path   DSTACK_ERR  a one-line reason
#   DSTACK_VALUE  the value dstack_cmdline_get found
#   DSTACK_ROOTFS_HASH DSTACK_ROOTFS_SIZE DSTACK_ROOTFS_DEVICE  set by dstack_boot_params
#   DSTACK_ROOTFS_VERIFY (full|ondemand)                        set by dstack_boot_params

: "${DSTACK_SYSFS:=/sys}"
: "${DSTACK_DEV:=/dev}"
: "${DSTACK_CMDLINE:=/proc/cmdline}"
: "${DSTACK_DEVICE_TIMEOUT:=30}"
DSTACK_FOUND=
DSTACK_ERR=
DSTACK_VALUE=

# dstack_cmdline_get NAME: sets DSTACK_VALUE to the value of the last NAME=VALUE
# word of the kernel command line (a bare NAME gives an empty value).
# Returns 1 when NAME is absent. Words are split on blanks; nothing is expanded.
dstack_cmdline_get() {
	_dcg_name=$1
	_dcg_found=1
	DSTACK_VALUE=
	if [ ! -r "$DSTACK_CMDLINE" ]; then
		DSTACK_ERR="cannot read $DSTACK_CMDLINE"
		return 1
	fi
	# shellcheck disable=SC2020 # each blank becomes a newline, squeezed
	while IFS= read -r _dcg_word; do
		case "$_dcg_word" in
		"$_dcg_name")
			DSTACK_VALUE=
			_dcg_found=0
			;;
		"$_dcg_name"=*)
			DSTACK_VALUE=${_dcg_word#*=}
			_dcg_found=0
			;;
		esac
	done <<EOF
$(tr -s ' \t\n' '\n\n\n' <"$DSTACK_CMDLINE")
EOF
	return "$_dcg_found"
}

# dstack_valid_hash VALUE: 64 hex digits.
dstack_valid_hash() {
	case "$1" in
	*[!0-9a-fA-F]* | "") return 1 ;;
	esac
	[ "${#1}" -eq 64 ]
}

# dstack_decimal VALUE MAXDIGITS: VALUE is a decimal integer written as the
# kernel would print it: digits only, "0" or no leading zero, at most MAXDIGITS
# digits. Shell arithmetic reads a leading 0 as octal ("010" is 8, "08" an
# error that aborts the shell), so every number from the command line passes
# here before any $((...)).
dstack_decimal() {
	case "$1" in
	"" | *[!0-9]*) return 1 ;;
	0) return 0 ;;
	0*) return 1 ;;
	esac
	[ "${#1}" -le "$2" ]
}

# dstack_valid_size VALUE: a positive decimal integer (no sign, no leading
# zero, at most 18 digits), multiple of 4096.
dstack_valid_size() {
	dstack_decimal "$1" 18 || return 1
	[ "$1" != 0 ] && [ $(($1 % 4096)) -eq 0 ]
}

# dstack_valid_timeout VALUE: seconds, 0-9999, decimal (see dstack_decimal).
dstack_valid_timeout() {
	dstack_decimal "$1" 4
}

# dstack_valid_spec SPEC: an absolute path, PARTLABEL=NAME or PARTUUID=UUID,
# with no glob, blank, quote or shell characters. Sets DSTACK_ERR when invalid.
dstack_valid_spec() {
	case "$1" in
	*[!A-Za-z0-9/._:=@+,%#-]*)
		DSTACK_ERR="invalid device spec '$1': only letters, digits and / . _ : = @ + , % # - are allowed (no glob characters)"
		return 1
		;;
	PARTLABEL=?* | PARTUUID=?*)
		case "${1#*=}" in
		*/* | *=*)
			DSTACK_ERR="invalid device spec '$1'"
			return 1
			;;
		esac
		return 0
		;;
	/?*)
		case "$1" in
		*/../* | */.. | */./* | */. | *//*)
			DSTACK_ERR="invalid device spec '$1': path is not normalized"
			return 1
			;;
		esac
		return 0
		;;
	esac
	DSTACK_ERR="invalid device spec '$1': expected an absolute path, PARTLABEL=<name> or PARTUUID=<uuid>"
	return 1
}

# dstack_blockdevs: the block device names in sysfs, one per line, sorted.
dstack_blockdevs() {
	# shellcheck disable=SC2012 # kernel block device names: no blanks or newlines
	ls -1 "$DSTACK_SYSFS/class/block" 2>/dev/null | sort
}

# dstack_seen: the block device names on one line, or "(none)".
dstack_seen() {
	_dse=$(dstack_blockdevs | tr '\n' ' ')
	_dse=${_dse% }
	printf '%s\n' "${_dse:-(none)}"
}

# dstack_read FILE: the first line of FILE (empty when unreadable).
dstack_read() {
	_drd=
	if [ -r "$1" ]; then
		IFS= read -r _drd <"$1" || :
	fi
	printf '%s\n' "$_drd"
}

# dstack_uevent NAME KEY: the KEY= value in the device's sysfs uevent.
dstack_uevent() {
	_due_file=$DSTACK_SYSFS/class/block/$1/uevent
	[ -r "$_due_file" ] || return 1
	while IFS= read -r _due_line; do
		case "$_due_line" in
		"$2"=*)
			printf '%s\n' "${_due_line#*=}"
			return 0
			;;
		esac
	done <"$_due_file"
	return 1
}

# dstack_is_partition NAME
dstack_is_partition() {
	[ -e "$DSTACK_SYSFS/class/block/$1/partition" ]
}

# dstack_parent NAME: the whole-disk name a partition belongs to.
dstack_parent() {
	_dpa=$(readlink -f "$DSTACK_SYSFS/class/block/$1/..") || return 1
	[ -n "$_dpa" ] || return 1
	printf '%s\n' "${_dpa##*/}"
}

# dstack_partitions DISK: the partition names of DISK, one per line.
dstack_partitions() {
	dstack_blockdevs | while IFS= read -r _dps; do
		dstack_is_partition "$_dps" || continue
		[ "$(dstack_parent "$_dps")" = "$1" ] && printf '%s\n' "$_dps"
	done
}

# dstack_udev_escape: stdin -> stdout, udev's treatment of a $attr value in a
# by-id SYMLINK: surrounding whitespace dropped, inner runs of whitespace become
# one '_', any other character outside [A-Za-z0-9#+.:=@_-] becomes '_'.
dstack_udev_escape() {
	sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' \
		-e 's/[[:space:]][[:space:]]*/_/g' -e 's/[^A-Za-z0-9#+.:=@_-]/_/g'
}

# dstack_byid_names NAME: the /dev/disk/by-id names udev would give NAME.
dstack_byid_names() {
	_dbn_disk=$1
	_dbn_suffix=
	if dstack_is_partition "$1"; then
		_dbn_disk=$(dstack_parent "$1") || return 0
		_dbn_suffix=-part$(dstack_read "$DSTACK_SYSFS/class/block/$1/partition")
	fi
	_dbn_sys=$DSTACK_SYSFS/class/block/$_dbn_disk
	case "$_dbn_disk" in
	vd*)
		_dbn_serial=$(dstack_read "$_dbn_sys/serial" | dstack_udev_escape)
		[ -n "$_dbn_serial" ] && printf 'virtio-%s%s\n' "$_dbn_serial" "$_dbn_suffix"
		;;
	nvme*)
		_dbn_wwid=$(dstack_read "$_dbn_sys/wwid" | dstack_udev_escape)
		[ -n "$_dbn_wwid" ] && printf 'nvme-%s%s\n' "$_dbn_wwid" "$_dbn_suffix"
		_dbn_model=$(dstack_read "$_dbn_sys/device/model" | dstack_udev_escape)
		_dbn_serial=$(dstack_read "$_dbn_sys/device/serial" | dstack_udev_escape)
		if [ -n "$_dbn_model" ] && [ -n "$_dbn_serial" ]; then
			printf 'nvme-%s_%s%s\n' "$_dbn_model" "$_dbn_serial" "$_dbn_suffix"
			_dbn_nsid=$(dstack_read "$_dbn_sys/nsid" | dstack_udev_escape)
			[ -n "$_dbn_nsid" ] && printf 'nvme-%s_%s_%s%s\n' "$_dbn_model" "$_dbn_serial" "$_dbn_nsid" "$_dbn_suffix"
		fi
		;;
	esac
	return 0
}

# dstack_devbytes DEV SECTOR_SIZE LBA SKIP COUNT: COUNT bytes at byte SKIP of
# sector LBA of DEV, as lowercase hex pairs separated by single spaces.
dstack_devbytes() {
	dd if="$1" bs="$2" skip="$3" count=1 2>/dev/null |
		od -An -v -tx1 -j "$4" -N "$5" | tr -s ' \n' '  ' | sed -e 's/^ //' -e 's/ $//'
}

# dstack_le HEXPAIRS...: the little-endian integer of the bytes, in decimal.
dstack_le() {
	_dle=
	for _dle_b in "$@"; do
		_dle=$_dle_b$_dle
	done
	printf '%d\n' "0x${_dle:-0}"
}

# dstack_partuuid NAME: the PARTUUID (lowercase) of partition NAME, read from
# the primary GPT of its parent disk (MBR disks are not supported).
dstack_partuuid() {
	dstack_is_partition "$1" || return 1
	_dpu_disk=$(dstack_parent "$1") || return 1
	_dpu_num=$(dstack_read "$DSTACK_SYSFS/class/block/$1/partition")
	case "$_dpu_num" in "" | *[!0-9]*) return 1 ;; esac
	dstack_node "$_dpu_disk" || return 1
	_dpu_dev=$DSTACK_FOUND
	DSTACK_FOUND=
	_dpu_ss=$(dstack_read "$DSTACK_SYSFS/class/block/$_dpu_disk/queue/logical_block_size")
	case "$_dpu_ss" in "" | *[!0-9]*) _dpu_ss=512 ;; esac
	if [ "$(dstack_devbytes "$_dpu_dev" "$_dpu_ss" 1 0 8)" = "45 46 49 20 50 41 52 54" ]; then
		# shellcheck disable=SC2046 # hex pairs, split on purpose
		_dpu_elba=$(dstack_le $(dstack_devbytes "$_dpu_dev" "$_dpu_ss" 1 72 8))
		# shellcheck disable=SC2046
		_dpu_nent=$(dstack_le $(dstack_devbytes "$_dpu_dev" "$_dpu_ss" 1 80 4))
		# shellcheck disable=SC2046
		_dpu_esz=$(dstack_le $(dstack_devbytes "$_dpu_dev" "$_dpu_ss" 1 84 4))
		[ "$_dpu_num" -le "$_dpu_nent" ] && [ "$_dpu_esz" -ge 128 ] || return 1
		_dpu_off=$(((_dpu_num - 1) * _dpu_esz))
		# shellcheck disable=SC2046
		set -- $(dstack_devbytes "$_dpu_dev" "$_dpu_ss" $((_dpu_elba + _dpu_off / _dpu_ss)) $((_dpu_off % _dpu_ss + 16)) 16)
		[ "$#" -eq 16 ] || return 1
		printf '%s%s%s%s-%s%s-%s%s-%s%s-%s%s%s%s%s%s\n' "$4" "$3" "$2" "$1" "$6" "$5" "$8" "$7" \
			"$9" "${10}" "${11}" "${12}" "${13}" "${14}" "${15}" "${16}"
		return 0
	fi
	return 1
}

# dstack_node NAME: make sure $DSTACK_DEV/NAME exists (mknod from sysfs "dev"
# when devtmpfs has not made it) and set DSTACK_FOUND to it.
dstack_node() {
	DSTACK_FOUND=$DSTACK_DEV/$1
	[ -e "$DSTACK_FOUND" ] && return 0
	_dno=$(dstack_read "$DSTACK_SYSFS/class/block/$1/dev")
	case "$_dno" in
	[0-9]*:[0-9]*) ;;
	*) return 1 ;;
	esac
	mknod "$DSTACK_FOUND" b "${_dno%%:*}" "${_dno#*:}" 2>/dev/null
	[ -e "$DSTACK_FOUND" ]
}

# dstack_match KIND VALUE: the device names whose KIND (partlabel, partuuid,
# byid) equals VALUE, one per line.
dstack_match() {
	dstack_blockdevs | while IFS= read -r _dma; do
		case "$1" in
		partlabel)
			dstack_is_partition "$_dma" || continue
			[ "$(dstack_uevent "$_dma" PARTNAME)" = "$2" ] && printf '%s\n' "$_dma"
			;;
		partuuid)
			dstack_is_partition "$_dma" || continue
			_dma_u=$(dstack_partuuid "$_dma") || continue
			[ "$_dma_u" = "$2" ] && printf '%s\n' "$_dma"
			;;
		byid)
			dstack_byid_names "$_dma" | while IFS= read -r _dma_id; do
				[ "$_dma_id" = "$2" ] && printf '%s\n' "$_dma"
			done
			;;
		esac
	done
}

# dstack_find SPEC: one look for SPEC, no waiting. Returns 0 with DSTACK_FOUND
# set, 1 when not (yet) present, 2 on a hard error (DSTACK_ERR set: several
# devices match).
dstack_find() {
	DSTACK_FOUND=
	_dfi_kind=
	case "$1" in
	PARTLABEL=*) _dfi_kind=partlabel _dfi_val=${1#PARTLABEL=} ;;
	PARTUUID=*) _dfi_kind=partuuid _dfi_val=$(printf '%s\n' "${1#PARTUUID=}" | tr 'A-F' 'a-f') ;;
	/dev/disk/by-partlabel/*) _dfi_kind=partlabel _dfi_val=${1#/dev/disk/by-partlabel/} ;;
	/dev/disk/by-partuuid/*) _dfi_kind=partuuid _dfi_val=$(printf '%s\n' "${1#/dev/disk/by-partuuid/}" | tr 'A-F' 'a-f') ;;
	/dev/disk/by-id/*) _dfi_kind=byid _dfi_val=${1#/dev/disk/by-id/} ;;
	/dev/*/*)
		# /dev/mapper/..., /dev/disk/by-path/... : only what is already there
		_dfi_path=$DSTACK_DEV/${1#/dev/}
		[ -e "$_dfi_path" ] || return 1
		DSTACK_FOUND=$_dfi_path
		return 0
		;;
	/dev/?*)
		_dfi_name=${1#/dev/}
		if [ -e "$DSTACK_SYSFS/class/block/$_dfi_name/dev" ]; then
			dstack_node "$_dfi_name" && return 0
			DSTACK_ERR="cannot create device node $DSTACK_DEV/$_dfi_name"
			return 2
		fi
		return 1
		;;
	/?*)
		[ -e "$1" ] || return 1
		DSTACK_FOUND=$1
		return 0
		;;
	*)
		dstack_valid_spec "$1"
		return 2
		;;
	esac
	_dfi_list=$(dstack_match "$_dfi_kind" "$_dfi_val" | tr '\n' ' ')
	_dfi_list=${_dfi_list% }
	case "$_dfi_list" in
	"") return 1 ;;
	*" "*)
		DSTACK_ERR="$1 matches several block devices: $_dfi_list"
		return 2
		;;
	esac
	if ! dstack_node "$_dfi_list"; then
		DSTACK_ERR="cannot create device node $DSTACK_DEV/$_dfi_list"
		return 2
	fi
	return 0
}

# dstack_resolve SPEC [TIMEOUT]: wait for SPEC to appear and set DSTACK_FOUND.
# TIMEOUT is in whole seconds (default $DSTACK_DEVICE_TIMEOUT); the wait lasts
# between TIMEOUT and TIMEOUT+1 s, and 0 means look once. On failure
# DSTACK_ERR names the spec, the time waited and the block devices seen.
dstack_resolve() {
	DSTACK_FOUND=
	DSTACK_ERR=
	dstack_valid_spec "$1" || return 1
	_dre_timeout=${2:-$DSTACK_DEVICE_TIMEOUT}
	if ! dstack_valid_timeout "$_dre_timeout"; then
		DSTACK_ERR="invalid device timeout '$_dre_timeout' (seconds expected: 0-9999, decimal, no leading zero)"
		return 1
	fi
	_dre_deadline=$(($(date +%s) + _dre_timeout))
	while :; do
		dstack_find "$1"
		case "$?" in
		0) return 0 ;;
		2) return 1 ;;
		esac
		[ "$_dre_timeout" -eq 0 ] && break
		[ "$(date +%s)" -gt "$_dre_deadline" ] && break
		sleep 0.2 2>/dev/null || sleep 1
	done
	DSTACK_ERR="device $1 not found after ${_dre_timeout}s; block devices seen: $(dstack_seen)"
	return 1
}

# dstack_timeout_param: dstack.device_timeout from the command line, when
# given, into DSTACK_DEVICE_TIMEOUT; returns 1 with DSTACK_ERR when malformed.
dstack_timeout_param() {
	dstack_cmdline_get dstack.device_timeout || return 0
	if ! dstack_valid_timeout "$DSTACK_VALUE"; then
		DSTACK_ERR="dstack.device_timeout='$DSTACK_VALUE' is malformed: seconds expected (0-9999, decimal, no leading zero)"
		return 1
	fi
	DSTACK_DEVICE_TIMEOUT=$DSTACK_VALUE
}

# dstack_boot_params: read and check the initramfs parameters from the kernel
# command line: dstack.rootfs_hash (64 hex digits, required),
# dstack.rootfs_size (bytes, positive multiple of 4096, required),
# dstack.rootfs_device (device spec, default /dev/vda), dstack.device_timeout
# (seconds, default $DSTACK_DEVICE_TIMEOUT) and dstack.rootfs_verify
# (full|ondemand, default full). Sets the DSTACK_ROOTFS_* variables, or
# DSTACK_ERR and returns 1 at the first problem.
# shellcheck disable=SC2034 # the DSTACK_ROOTFS_* results are read by /init
dstack_boot_params() {
	DSTACK_ERR=
	if [ ! -r "$DSTACK_CMDLINE" ]; then
		DSTACK_ERR="cannot read the kernel command line ($DSTACK_CMDLINE)"
		return 1
	fi
	if ! dstack_cmdline_get dstack.rootfs_hash; then
		DSTACK_ERR="dstack.rootfs_hash missing from the kernel command line"
		return 1
	fi
	if ! dstack_valid_hash "$DSTACK_VALUE"; then
		DSTACK_ERR="dstack.rootfs_hash='$DSTACK_VALUE' is malformed: 64 hex digits expected"
		return 1
	fi
	DSTACK_ROOTFS_HASH=$DSTACK_VALUE
	if ! dstack_cmdline_get dstack.rootfs_size; then
		DSTACK_ERR="dstack.rootfs_size missing from the kernel command line"
		return 1
	fi
	if ! dstack_valid_size "$DSTACK_VALUE"; then
		DSTACK_ERR="dstack.rootfs_size='$DSTACK_VALUE' is malformed: a positive multiple of 4096 (bytes) expected"
		return 1
	fi
	DSTACK_ROOTFS_SIZE=$DSTACK_VALUE
	DSTACK_ROOTFS_DEVICE=/dev/vda
	if dstack_cmdline_get dstack.rootfs_device; then
		DSTACK_ROOTFS_DEVICE=$DSTACK_VALUE
		if ! dstack_valid_spec "$DSTACK_ROOTFS_DEVICE"; then
			DSTACK_ERR="dstack.rootfs_device: $DSTACK_ERR"
			return 1
		fi
	fi
	dstack_timeout_param || return 1
	DSTACK_ROOTFS_VERIFY=full
	if dstack_cmdline_get dstack.rootfs_verify; then
		case "$DSTACK_VALUE" in
		full | ondemand) DSTACK_ROOTFS_VERIFY=$DSTACK_VALUE ;;
		*)
			DSTACK_ERR="dstack.rootfs_verify='$DSTACK_VALUE' is malformed: full or ondemand expected"
			return 1
			;;
		esac
	fi
	return 0
}
