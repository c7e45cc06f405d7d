package bootscripts

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

func scripts(t *testing.T) map[string]string {
	root := testutil.RepoRoot(t)
	return map[string]string{
		"init":           filepath.Join(root, InitPath),
		"devspec.sh":     filepath.Join(root, DevspecPath),
		"dstack-prepare": filepath.Join(root, PreparePath),
	}
}

func TestShellcheck(t *testing.T) {
	testutil.Need(t, "shellcheck")
	for name, path := range scripts(t) {
		t.Run(name, func(t *testing.T) {
			cmd := exec.Command("shellcheck", "-x", "-s", "sh", "-S", "style", filepath.Base(path))
			cmd.Dir = filepath.Dir(path)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("shellcheck %s: %v\n%s", path, err, out)
			}
		})
	}
}

func TestSyntax(t *testing.T) {
	testutil.NeedFile(t, "/bin/busybox", "busybox-static")
	for name, path := range scripts(t) {
		t.Run(name, func(t *testing.T) {
			for _, sh := range [][]string{{"/bin/busybox", "sh"}, {"sh"}} {
				args := append(sh[1:], "-n", path)
				if out, err := exec.Command(sh[0], args...).CombinedOutput(); err != nil {
					t.Errorf("%v -n %s: %v\n%s", sh, path, err, out)
				}
			}
		})
	}
}

// TestExecutable checks the scripts that are run (not sourced) are executable
// in the tree, so the recipes install them with the right mode.
func TestExecutable(t *testing.T) {
	for name, path := range scripts(t) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if name != "devspec.sh" && fi.Mode()&0o111 == 0 {
			t.Errorf("%s is not executable", path)
		}
	}
}

// fakeDisk describes one disk of a fake sysfs/dev tree.
type fakeDisk struct {
	name   string // vda, nvme0n1
	devnum string // MAJ:MIN
	serial string // virtio serial (vd*) or NVMe controller serial
	model  string // NVMe model
	wwid   string // NVMe namespace wwid
	nsid   string // NVMe namespace id
	// parts are sgdisk partitions: name and unique GUID; a GPT image is made
	// with sgdisk as /dev/<name> and its partitions appear in sysfs.
	parts []fakePart
	// raw, when parts is empty, is the content of /dev/<name>.
	raw []byte
	// rawFile, when set (and parts empty), is copied to /dev/<name> instead.
	rawFile string
}

type fakePart struct{ label, guid string }

// fakeTree is a fake sysfs and /dev laid out like the kernel's: the device
// directories under sys/devices, symlinks in sys/class/block.
type fakeTree struct {
	root, sys, dev, cmdline string
}

func partName(disk string, n int) string {
	if strings.HasPrefix(disk, "nvme") {
		return fmt.Sprintf("%sp%d", disk, n)
	}
	return fmt.Sprintf("%s%d", disk, n)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newFakeTree(t *testing.T, disks ...fakeDisk) *fakeTree {
	t.Helper()
	testutil.Need(t, "sgdisk")
	root := t.TempDir()
	ft := &fakeTree{root: root, sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev"), cmdline: filepath.Join(root, "proc", "cmdline")}
	for _, d := range []string{filepath.Join(ft.sys, "class", "block"), ft.dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range disks {
		ddir := filepath.Join(ft.sys, "devices", "pci0000:00", "block", d.name)
		writeFile(t, filepath.Join(ddir, "dev"), d.devnum+"\n")
		writeFile(t, filepath.Join(ddir, "uevent"), fmt.Sprintf("MAJOR=%s\nMINOR=%s\nDEVNAME=%s\nDEVTYPE=disk\n", strings.Split(d.devnum, ":")[0], strings.Split(d.devnum, ":")[1], d.name))
		size := int64(16384)
		switch {
		case d.rawFile != "":
			fi, err := os.Stat(d.rawFile)
			if err != nil {
				t.Fatal(err)
			}
			size = fi.Size() / 512
		case len(d.parts) == 0:
			size = int64(len(d.raw)) / 512
		}
		writeFile(t, filepath.Join(ddir, "size"), fmt.Sprintf("%d\n", size))
		writeFile(t, filepath.Join(ddir, "queue", "logical_block_size"), "512\n")
		if strings.HasPrefix(d.name, "vd") && d.serial != "" {
			writeFile(t, filepath.Join(ddir, "serial"), d.serial+"\n")
		}
		if strings.HasPrefix(d.name, "nvme") {
			writeFile(t, filepath.Join(ddir, "device", "serial"), d.serial+"\n")
			writeFile(t, filepath.Join(ddir, "device", "model"), d.model+"\n")
			if d.wwid != "" {
				writeFile(t, filepath.Join(ddir, "wwid"), d.wwid+"\n")
			}
			if d.nsid != "" {
				writeFile(t, filepath.Join(ddir, "nsid"), d.nsid+"\n")
			}
		}
		rel, _ := filepath.Rel(filepath.Join(ft.sys, "class", "block"), ddir)
		if err := os.Symlink(rel, filepath.Join(ft.sys, "class", "block", d.name)); err != nil {
			t.Fatal(err)
		}
		img := filepath.Join(ft.dev, d.name)
		if len(d.parts) == 0 {
			if d.rawFile != "" {
				copyFile(t, d.rawFile, img)
				continue
			}
			if err := os.WriteFile(img, d.raw, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(img, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 8<<20); err != nil {
			t.Fatal(err)
		}
		args := []string{}
		for i, p := range d.parts {
			n := i + 1
			args = append(args, fmt.Sprintf("--new=%d:0:+1M", n), fmt.Sprintf("--change-name=%d:%s", n, p.label))
			if p.guid != "" {
				args = append(args, fmt.Sprintf("--partition-guid=%d:%s", n, p.guid))
			}
		}
		testutil.Run(t, "sgdisk", append(args, img)...)
		major, minor, _ := strings.Cut(d.devnum, ":")
		var min int
		fmt.Sscan(minor, &min)
		for i, p := range d.parts {
			n := i + 1
			pn := partName(d.name, n)
			pdir := filepath.Join(ddir, pn)
			writeFile(t, filepath.Join(pdir, "dev"), fmt.Sprintf("%s:%d\n", major, min+n))
			writeFile(t, filepath.Join(pdir, "partition"), fmt.Sprintf("%d\n", n))
			writeFile(t, filepath.Join(pdir, "size"), "2048\n")
			writeFile(t, filepath.Join(pdir, "uevent"), fmt.Sprintf("MAJOR=%s\nMINOR=%d\nDEVNAME=%s\nDEVTYPE=partition\nDISKSEQ=9\nPARTN=%d\nPARTNAME=%s\n", major, min+n, pn, n, p.label))
			rel, _ := filepath.Rel(filepath.Join(ft.sys, "class", "block"), pdir)
			if err := os.Symlink(rel, filepath.Join(ft.sys, "class", "block", pn)); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(ft.dev, pn), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(filepath.Join(ft.dev, pn), 1<<20); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeFile(t, ft.cmdline, "console=ttyS0\n")
	return ft
}

var busyboxBin string

func busybox(t *testing.T) string {
	t.Helper()
	testutil.NeedFile(t, "/bin/busybox", "busybox-static")
	if busyboxBin == "" {
		dir, err := os.MkdirTemp("", "bootscripts-busybox-")
		if err != nil {
			t.Fatal(err)
		}
		bin, err := BusyboxBin("/bin/busybox", dir)
		if err != nil {
			t.Fatal(err)
		}
		busyboxBin = bin
	}
	return busyboxBin
}

// runLib runs snippet under busybox sh after sourcing devspec.sh, with the
// fake tree's sysfs, /dev and command line, PATH holding busybox applets only
// and the working directory holding files that a glob would match.
func (ft *fakeTree) runLib(t *testing.T, snippet string, args ...string) (string, error) {
	t.Helper()
	bin := busybox(t)
	lib := filepath.Join(testutil.RepoRoot(t), DevspecPath)
	script := "set -f\n. \"$DSTACK_LIB\"\n" + snippet
	cmd := exec.Command(filepath.Join(bin, "sh"), append([]string{"-c", script, "sh"}, args...)...)
	cmd.Dir = ft.dev
	cmd.Env = []string{
		"PATH=" + bin,
		"DSTACK_LIB=" + lib,
		"DSTACK_SYSFS=" + ft.sys,
		"DSTACK_DEV=" + ft.dev,
		"DSTACK_CMDLINE=" + ft.cmdline,
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

const resolveSnippet = `dstack_resolve "$1" "$2"; rc=$?; printf 'rc=%s\nfound=%s\nerr=%s\n' "$rc" "$DSTACK_FOUND" "$DSTACK_ERR"`

// sgdiskGUID reads partition n's unique GUID back with sgdisk -i.
func sgdiskGUID(t *testing.T, img string, n int) string {
	t.Helper()
	out := testutil.Run(t, "sgdisk", "-i", fmt.Sprint(n), img)
	m := regexp.MustCompile(`Partition unique GUID: ([0-9A-F-]{36})`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("sgdisk -i %d %s: no unique GUID in\n%s", n, img, out)
	}
	return m[1]
}

func standardTree(t *testing.T) *fakeTree {
	return newFakeTree(t,
		fakeDisk{name: "vda", devnum: "254:0", serial: "dstack root 01",
			parts: []fakePart{{"esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"}, {"dstack-rootfs", "1B0E5A3C-7D2F-4E61-9A8B-0C1D2E3F4A5B"}}},
		fakeDisk{name: "vdb", devnum: "254:16", raw: make([]byte, 4096)},
		fakeDisk{name: "nvme0n1", devnum: "259:0", serial: "nvme-serial-7   ", model: "QEMU NVMe Ctrl                          ",
			wwid: "eui.0000000000000001", nsid: "1",
			parts: []fakePart{{"dstack-data", ""}}},
	)
}

func TestResolve(t *testing.T) {
	ft := standardTree(t)
	rootGUID := sgdiskGUID(t, filepath.Join(ft.dev, "vda"), 2)
	dataGUID := sgdiskGUID(t, filepath.Join(ft.dev, "nvme0n1"), 1)
	d := ft.dev + "/"
	for _, tc := range []struct{ spec, want string }{
		{"/dev/vda", d + "vda"},
		{"/dev/vda2", d + "vda2"},
		{"/dev/nvme0n1p1", d + "nvme0n1p1"},
		{"PARTLABEL=dstack-rootfs", d + "vda2"},
		{"PARTLABEL=dstack-data", d + "nvme0n1p1"},
		{"PARTLABEL=esp", d + "vda1"},
		{"/dev/disk/by-partlabel/dstack-rootfs", d + "vda2"},
		{"PARTUUID=" + rootGUID, d + "vda2"},
		{"PARTUUID=" + strings.ToLower(rootGUID), d + "vda2"},
		{"/dev/disk/by-partuuid/" + strings.ToLower(rootGUID), d + "vda2"},
		{"PARTUUID=" + dataGUID, d + "nvme0n1p1"},
		{"/dev/disk/by-id/virtio-dstack_root_01", d + "vda"},
		{"/dev/disk/by-id/virtio-dstack_root_01-part2", d + "vda2"},
		{"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_nvme-serial-7", d + "nvme0n1"},
		{"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_nvme-serial-7-part1", d + "nvme0n1p1"},
		{"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_nvme-serial-7_1", d + "nvme0n1"},
		{"/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_nvme-serial-7_1-part1", d + "nvme0n1p1"},
		{"/dev/disk/by-id/nvme-eui.0000000000000001-part1", d + "nvme0n1p1"},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			out, err := ft.runLib(t, resolveSnippet, tc.spec, "0")
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			want := fmt.Sprintf("rc=0\nfound=%s\nerr=\n", tc.want)
			if out != want {
				t.Errorf("resolve %s:\n got %q\nwant %q", tc.spec, out, want)
			}
		})
	}
}

func TestResolveFails(t *testing.T) {
	ft := standardTree(t)
	seen := "block devices seen: nvme0n1 nvme0n1p1 vda vda1 vda2 vdb"
	for _, tc := range []struct {
		spec    string
		timeout string
		errRe   string
	}{
		{"PARTLABEL=nope", "0", `^device PARTLABEL=nope not found after 0s; ` + seen + `$`},
		{"/dev/vdz", "0", `^device /dev/vdz not found after 0s; ` + seen + `$`},
		{"/dev/disk/by-id/virtio-dstack_root_02", "0", `not found after 0s`},
		{"PARTUUID=00000000-0000-0000-0000-000000000000", "0", `not found`},
		// glob and shell characters are refused, never expanded, even though
		// files matching them exist in the working directory (the fake /dev)
		{"/dev/vd*", "0", `^invalid device spec '/dev/vd\*'`},
		{"/dev/*", "0", `^invalid device spec '/dev/\*'`},
		{"PARTLABEL=dstack-*", "0", `^invalid device spec 'PARTLABEL=dstack-\*'`},
		{"PARTLABEL=dstack-roo?fs", "0", `^invalid device spec`},
		{"/dev/vd[a]", "0", `^invalid device spec`},
		{"/dev/$(reboot)", "0", `^invalid device spec '/dev/\$\(reboot\)'`},
		{"vda", "0", `^invalid device spec 'vda': expected an absolute path`},
		{"PARTLABEL=", "0", `^invalid device spec`},
		{"/dev/../etc/passwd", "0", `not normalized`},
		{"/dev/vda", "x", `^invalid device timeout 'x'`},
		{"/dev/vda", "08", `^invalid device timeout '08' \(seconds expected: 0-9999, decimal, no leading zero\)$`},
		{"/dev/vda", "010", `^invalid device timeout '010'`},
	} {
		t.Run(tc.spec, func(t *testing.T) {
			out, err := ft.runLib(t, resolveSnippet, tc.spec, tc.timeout)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if !strings.HasPrefix(out, "rc=1\nfound=\nerr=") {
				t.Fatalf("resolve %s: want rc=1 and no device, got\n%s", tc.spec, out)
			}
			msg := strings.TrimSuffix(strings.SplitN(out, "err=", 2)[1], "\n")
			if !regexp.MustCompile(tc.errRe).MatchString(msg) {
				t.Errorf("resolve %s: error %q does not match %q", tc.spec, msg, tc.errRe)
			}
		})
	}
}

// TestResolveWaitIsBounded: a device that never appears ends the wait after
// the timeout (not before, not much after) with the devices seen.
func TestResolveWaitIsBounded(t *testing.T) {
	ft := standardTree(t)
	start := time.Now()
	out, err := ft.runLib(t, resolveSnippet, "PARTLABEL=never", "2")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(out, "rc=1\n") || !strings.Contains(out, "not found after 2s; block devices seen: nvme0n1 nvme0n1p1 vda vda1 vda2 vdb") {
		t.Errorf("unexpected result:\n%s", out)
	}
	if took < 1900*time.Millisecond || took > 10*time.Second {
		t.Errorf("wait of 2 s took %v", took)
	}
}

// TestResolveWaitsForLateDevice: a device appearing during the wait is found.
func TestResolveWaitsForLateDevice(t *testing.T) {
	ft := standardTree(t)
	// the snippet makes vdb's sysfs entry appear after ~1 s, in the background
	snippet := `( sleep 1; ln -s "$3" "$DSTACK_SYSFS/class/block/vdc" ) &
` + resolveSnippet + "\nwait\n"
	ddir := filepath.Join(ft.sys, "devices", "late", "vdc")
	writeFile(t, filepath.Join(ddir, "dev"), "254:32\n")
	writeFile(t, filepath.Join(ft.dev, "vdc"), "")
	out, err := ft.runLib(t, snippet, "/dev/vdc", "10", ddir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if want := "rc=0\nfound=" + ft.dev + "/vdc\nerr=\n"; out != want {
		t.Errorf("got %q want %q", out, want)
	}
}

func TestResolveAmbiguous(t *testing.T) {
	ft := newFakeTree(t,
		fakeDisk{name: "vda", devnum: "254:0", parts: []fakePart{{"dstack-rootfs", ""}}},
		fakeDisk{name: "vdb", devnum: "254:16", parts: []fakePart{{"dstack-rootfs", ""}}},
	)
	out, err := ft.runLib(t, resolveSnippet, "PARTLABEL=dstack-rootfs", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if want := "rc=1\nfound=\nerr=PARTLABEL=dstack-rootfs matches several block devices: vda1 vdb1\n"; out != want {
		t.Errorf("got %q want %q", out, want)
	}
}

// TestResolveMknod: a device in sysfs without a node in /dev gets one made from
// its sysfs dev numbers (needs root for mknod).
func TestResolveMknod(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod needs root")
	}
	ft := standardTree(t)
	if err := os.Remove(filepath.Join(ft.dev, "vdb")); err != nil {
		t.Fatal(err)
	}
	out, err := ft.runLib(t, resolveSnippet, "/dev/vdb", "0")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if want := "rc=0\nfound=" + ft.dev + "/vdb\nerr=\n"; out != want {
		t.Fatalf("got %q want %q", out, want)
	}
	fi, err := os.Stat(filepath.Join(ft.dev, "vdb"))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 || st.Rdev != uint64(254<<8|16) {
		t.Errorf("node %v rdev %#x, want block 254:16", fi.Mode(), st.Rdev)
	}
}

// TestByIDNames lists every by-id name derived for each device.
func TestByIDNames(t *testing.T) {
	ft := standardTree(t)
	out, err := ft.runLib(t, `for d in vda vda2 vdb nvme0n1 nvme0n1p1; do printf '%s:' "$d"; dstack_byid_names "$d" | tr '\n' ' '; echo; done`)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := `vda:virtio-dstack_root_01 
vda2:virtio-dstack_root_01-part2 
vdb:
nvme0n1:nvme-eui.0000000000000001 nvme-QEMU_NVMe_Ctrl_nvme-serial-7 nvme-QEMU_NVMe_Ctrl_nvme-serial-7_1 
nvme0n1p1:nvme-eui.0000000000000001-part1 nvme-QEMU_NVMe_Ctrl_nvme-serial-7-part1 nvme-QEMU_NVMe_Ctrl_nvme-serial-7_1-part1 
`
	if out != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
}

const goodHash = "0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789abcdef"

const paramsSnippet = `if dstack_boot_params; then
	printf 'ok hash=%s size=%s dev=%s timeout=%s verify=%s\n' "$DSTACK_ROOTFS_HASH" "$DSTACK_ROOTFS_SIZE" "$DSTACK_ROOTFS_DEVICE" "$DSTACK_DEVICE_TIMEOUT" "$DSTACK_ROOTFS_VERIFY"
else
	printf 'err %s\n' "$DSTACK_ERR"
fi`

func TestBootParams(t *testing.T) {
	ft := newFakeTree(t)
	h, s := "dstack.rootfs_hash="+goodHash, "dstack.rootfs_size=1048576"
	okDefault := "ok hash=" + goodHash + " size=1048576 dev=/dev/vda timeout=30 verify=full"
	for _, tc := range []struct{ name, cmdline, want string }{
		{"defaults", "console=ttyS0 " + h + " " + s + " panic=1", okDefault},
		{"tabs and newline", "\t" + h + "\t\t" + s + "\n", okDefault},
		{"device override", h + " " + s + " dstack.rootfs_device=PARTLABEL=dstack-rootfs",
			"ok hash=" + goodHash + " size=1048576 dev=PARTLABEL=dstack-rootfs timeout=30 verify=full"},
		{"by-id, timeout, ondemand", h + " " + s + " dstack.rootfs_device=/dev/disk/by-id/virtio-root dstack.device_timeout=5 dstack.rootfs_verify=ondemand",
			"ok hash=" + goodHash + " size=1048576 dev=/dev/disk/by-id/virtio-root timeout=5 verify=ondemand"},
		{"last one wins", "dstack.rootfs_size=4096 " + h + " " + s, okDefault},
		{"missing hash", s, "err dstack.rootfs_hash missing from the kernel command line"},
		{"missing hash, lookalike", "xdstack.rootfs_hash=" + goodHash + " dstack.rootfs_hashx=" + goodHash + " " + s, "err dstack.rootfs_hash missing from the kernel command line"},
		{"missing size", h, "err dstack.rootfs_size missing from the kernel command line"},
		{"bare hash", "dstack.rootfs_hash " + s, "err dstack.rootfs_hash='' is malformed: 64 hex digits expected"},
		{"short hash", "dstack.rootfs_hash=" + goodHash[1:] + " " + s, "err dstack.rootfs_hash='" + goodHash[1:] + "' is malformed: 64 hex digits expected"},
		{"long hash", "dstack.rootfs_hash=" + goodHash + "0 " + s, "err dstack.rootfs_hash='" + goodHash + "0' is malformed: 64 hex digits expected"},
		{"non-hex hash", "dstack.rootfs_hash=" + goodHash[:63] + "g " + s, "err dstack.rootfs_hash='" + goodHash[:63] + "g' is malformed: 64 hex digits expected"},
		{"glob hash", "dstack.rootfs_hash=* " + s, "err dstack.rootfs_hash='*' is malformed: 64 hex digits expected"},
		{"size not multiple", h + " dstack.rootfs_size=4097", "err dstack.rootfs_size='4097' is malformed: a positive multiple of 4096 (bytes) expected"},
		{"size zero", h + " dstack.rootfs_size=0", "err dstack.rootfs_size='0' is malformed: a positive multiple of 4096 (bytes) expected"},
		{"size leading zero", h + " dstack.rootfs_size=04096", "err dstack.rootfs_size='04096' is malformed: a positive multiple of 4096 (bytes) expected"},
		{"size negative", h + " dstack.rootfs_size=-4096", "err dstack.rootfs_size='-4096' is malformed: a positive multiple of 4096 (bytes) expected"},
		{"size huge", h + " dstack.rootfs_size=1234567890123456789", "err dstack.rootfs_size='1234567890123456789' is malformed: a positive multiple of 4096 (bytes) expected"},
		{"size arithmetic", h + " dstack.rootfs_size=4096*2", "err dstack.rootfs_size='4096*2' is malformed: a positive multiple of 4096 (bytes) expected"},
		{"glob device", h + " " + s + " dstack.rootfs_device=/dev/*", "err dstack.rootfs_device: invalid device spec '/dev/*': only letters, digits and / . _ : = @ + , % # - are allowed (no glob characters)"},
		{"relative device", h + " " + s + " dstack.rootfs_device=vda", "err dstack.rootfs_device: invalid device spec 'vda': expected an absolute path, PARTLABEL=<name> or PARTUUID=<uuid>"},
		{"bad timeout", h + " " + s + " dstack.device_timeout=1s", "err dstack.device_timeout='1s' is malformed: seconds expected (0-9999, decimal, no leading zero)"},
		{"timeout 08", h + " " + s + " dstack.device_timeout=08", "err dstack.device_timeout='08' is malformed: seconds expected (0-9999, decimal, no leading zero)"},
		{"timeout 0019", h + " " + s + " dstack.device_timeout=0019", "err dstack.device_timeout='0019' is malformed: seconds expected (0-9999, decimal, no leading zero)"},
		{"timeout 0010", h + " " + s + " dstack.device_timeout=0010", "err dstack.device_timeout='0010' is malformed: seconds expected (0-9999, decimal, no leading zero)"},
		{"timeout 00", h + " " + s + " dstack.device_timeout=00", "err dstack.device_timeout='00' is malformed: seconds expected (0-9999, decimal, no leading zero)"},
		{"timeout 10000", h + " " + s + " dstack.device_timeout=10000", "err dstack.device_timeout='10000' is malformed: seconds expected (0-9999, decimal, no leading zero)"},
		{"timeout 0", h + " " + s + " dstack.device_timeout=0", "ok hash=" + goodHash + " size=1048576 dev=/dev/vda timeout=0 verify=full"},
		{"timeout 10", h + " " + s + " dstack.device_timeout=10", "ok hash=" + goodHash + " size=1048576 dev=/dev/vda timeout=10 verify=full"},
		{"timeout 9999", h + " " + s + " dstack.device_timeout=9999", "ok hash=" + goodHash + " size=1048576 dev=/dev/vda timeout=9999 verify=full"},
		{"bad verify", h + " " + s + " dstack.rootfs_verify=no", "err dstack.rootfs_verify='no' is malformed: full or ondemand expected"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			writeFile(t, ft.cmdline, tc.cmdline)
			out, err := ft.runLib(t, paramsSnippet)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if out != tc.want+"\n" {
				t.Errorf("cmdline %q:\n got %q\nwant %q", tc.cmdline, out, tc.want+"\n")
			}
		})
	}
}

// testRoot fills the fake tree's root with what the scripts' test mode
// (--test-root) reads: bin/ (busybox applets), usr/lib/dstack/devspec.sh.
func (ft *fakeTree) testRoot(t *testing.T) string {
	t.Helper()
	testutil.NeedFile(t, "/bin/busybox", "busybox-static")
	if _, err := BusyboxBin("/bin/busybox", ft.root); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(testutil.RepoRoot(t), DevspecPath), filepath.Join(ft.root, "usr", "lib", "dstack", "devspec.sh"))
	return filepath.Join(ft.root, "bin")
}

// stub replaces the applet name in bin with a busybox sh script.
func stub(t *testing.T, bin, name, body string) {
	t.Helper()
	p := filepath.Join(bin, name)
	if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	writeFile(t, p, "#!"+filepath.Join(bin, "sh")+"\n"+body)
	if err := os.Chmod(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

// hostileEnv is an environment a kernel command line could give the boot
// scripts (unknown NAME=VALUE words reach PID 1; systemd.setenv= reaches
// every service): it points every former override at something harmful.
func hostileEnv(ft *fakeTree) []string {
	return []string{
		"PATH=/nonexistent",
		"LD_PRELOAD=" + filepath.Join(ft.dev, "vdb"),
		"LD_LIBRARY_PATH=" + ft.dev,
		"IFS=/",
		"DSTACK_DEVSPEC=" + ft.cmdline,
		"DSTACK_MODULES=" + ft.cmdline,
		"DSTACK_UTIL=/bin/false",
		"DSTACK_SYSFS=/nonexistent",
		"DSTACK_DEV=/nonexistent",
		"DSTACK_CMDLINE=" + filepath.Join(ft.root, "evil-cmdline"),
		"DSTACK_RUN=/nonexistent",
		"DSTACK_WORK_DIR=/evil",
		"DSTACK_DATA_MNT=/evil",
		"DSTACK_DEVICE_TIMEOUT=08",
		"NEWROOT=/evil",
		"MAPPER=evil",
		"R=/evil",
	}
}

// runPrepare runs dstack-prepare --test-root on the fake tree, with a
// stand-in guest agent that records its arguments and environment, and env
// as the caller's environment.
func (ft *fakeTree) runPrepare(t *testing.T, env ...string) (out, agentArgs, agentEnv string, err error) {
	t.Helper()
	bin := ft.testRoot(t)
	agentLog := filepath.Join(ft.root, "agent.log")
	envLog := filepath.Join(ft.root, "agent.env")
	writeFile(t, filepath.Join(ft.root, "usr", "bin", "dstack-util"), "#!"+filepath.Join(bin, "sh")+"\nprintf '%s\\n' \"$*\" >"+agentLog+"\nenv >"+envLog+"\n")
	if err := os.Chmod(filepath.Join(ft.root, "usr", "bin", "dstack-util"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "sh"), filepath.Join(testutil.RepoRoot(t), PreparePath), "--test-root", ft.root)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	a, _ := os.ReadFile(agentLog)
	e, _ := os.ReadFile(envLog)
	return stdout.String() + stderr.String(), string(a), string(e), err
}

const agentCall = "setup --work-dir /var/volatile/dstack --device %s --mount-point /var/volatile/dstack/persistent\n"

// luksImage makes a whole-disk LUKS2 volume as upstream dstack 0.5.x's setup
// leaves /dev/vdb (cryptsetup luksFormat, 16 MiB payload offset), in a
// sparse file.
func luksImage(t *testing.T) string {
	t.Helper()
	testutil.Need(t, "cryptsetup")
	dir := t.TempDir()
	img := filepath.Join(dir, "luks.img")
	key := filepath.Join(dir, "key")
	writeFile(t, key, "0123456789abcdef")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(img, 20<<20); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--offset", "32768",
		"--cipher", "aes-xts-plain64", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--key-file", key, img)
	testutil.Run(t, "cryptsetup", "isLuks", img)
	return img
}

// ext4Image makes a 4 MiB ext4 file system with mkfs.ext4.
func ext4Image(t *testing.T) string {
	t.Helper()
	testutil.Need(t, "mkfs.ext4")
	img := filepath.Join(t.TempDir(), "ext4.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Truncate(img, 4<<20); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", img)
	return img
}

// addRootDM adds to the fake tree the device-mapper device /init opens
// (dm-0 named dstack-rootfs, on the given slave) and /dev/mapper/dstack-rootfs.
func (ft *fakeTree) addRootDM(t *testing.T, slave string) {
	t.Helper()
	ddir := filepath.Join(ft.sys, "devices", "virtual", "block", "dm-0")
	writeFile(t, filepath.Join(ddir, "dev"), "253:0\n")
	writeFile(t, filepath.Join(ddir, "size"), "2048\n")
	writeFile(t, filepath.Join(ddir, "dm", "name"), "dstack-rootfs\n")
	target, err := filepath.EvalSymlinks(filepath.Join(ft.sys, "class", "block", slave))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(ddir, "slaves"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(ddir, "slaves", slave)); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../devices/virtual/block/dm-0", filepath.Join(ft.sys, "class", "block", "dm-0")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(ft.dev, "dm-0"), "")
	if err := os.MkdirAll(filepath.Join(ft.dev, "mapper"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../dm-0", filepath.Join(ft.dev, "mapper", "dstack-rootfs")); err != nil {
		t.Fatal(err)
	}
}

// TestPrepareChoice covers dstack-prepare's choices on a fake tree: the
// partitioning of an empty disk is checked by the QEMU boot tests.
func TestPrepareChoice(t *testing.T) {
	nonBlank := make([]byte, 1<<20)
	copy(nonBlank[1024:], "some filesystem")
	xfs := make([]byte, 1<<20)
	copy(xfs, "XFSB")
	// a ZFS vdev label's uberblock ring (128 KiB in), little-endian magic
	zfs := make([]byte, 1<<20)
	copy(zfs[128<<10+3<<10:], []byte{0x0c, 0xb1, 0xba, 0x00})
	luks := luksImage(t)
	ext4 := ext4Image(t)
	// the rootfs on vda2 (GPT), opened as dm-0 "dstack-rootfs"
	rootDisk := fakeDisk{name: "vda", devnum: "254:0", parts: []fakePart{{"esp", ""}, {"dstack-rootfs", ""}}}
	const rootDM = "vda2"
	const noLabel = "default /dev/vdb (no PARTLABEL=dstack-data partition)"
	for _, tc := range []struct {
		name      string
		cmdline   string
		disks     []fakeDisk
		rootDM    string // slave of a dm-0 named dstack-rootfs, "" = none
		wantOut   string // regexp
		wantAgent string // device dstack-util setup gets ("" = not run)
	}{
		{name: "partlabel beats vdb", disks: []fakeDisk{
			{name: "vda", devnum: "254:0", parts: []fakePart{{"dstack-rootfs", ""}}},
			{name: "vdb", devnum: "254:16", raw: make([]byte, 4096)},
			{name: "nvme0n1", devnum: "259:0", serial: "s", model: "m", parts: []fakePart{{"x", ""}, {"dstack-data", ""}}}},
			wantOut:   `^dstack-prepare: data disk: DEV/nvme0n1p2 \(PARTLABEL=dstack-data, empty\)\n`,
			wantAgent: "DEV/nvme0n1p2"},
		{name: "data_dev partition", cmdline: "dstack.data_dev=/dev/vdc1", disks: []fakeDisk{
			{name: "vdc", devnum: "254:32", parts: []fakePart{{"dstack-data", ""}}},
			{name: "nvme0n1", devnum: "259:0", serial: "s", model: "m", parts: []fakePart{{"dstack-data", ""}}}},
			wantOut:   `^dstack-prepare: data disk: DEV/vdc1 \(dstack.data_dev=/dev/vdc1, empty\)\n`,
			wantAgent: "DEV/vdc1"},
		{name: "data_dev disk with dstack-data", cmdline: "dstack.data_dev=/dev/disk/by-id/nvme-m_s", disks: []fakeDisk{
			{name: "nvme0n1", devnum: "259:0", serial: "s", model: "m", parts: []fakePart{{"a", ""}, {"dstack-data", ""}}}},
			wantOut:   `^dstack-prepare: data disk: DEV/nvme0n1p2 \(dstack.data_dev=/dev/disk/by-id/nvme-m_s, partition dstack-data, empty\)\n`,
			wantAgent: "DEV/nvme0n1p2"},
		{name: "foreign partitions refused", disks: []fakeDisk{
			{name: "vdb", devnum: "254:16", parts: []fakePart{{"home", ""}, {"swap", ""}}}},
			wantOut: `dstack-prepare: error: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `\) has partitions \(vdb1 vdb2\) but none named dstack-data; not touching it\n$`},
		{name: "data on unpartitioned disk refused", disks: []fakeDisk{
			{name: "vdb", devnum: "254:16", raw: nonBlank}},
			wantOut: `dstack-prepare: error: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `\) is not empty and holds no LUKS volume \(unknown data\): dstack-util setup would format over it; not touching it\n$`},
		{name: "no disk", disks: []fakeDisk{
			{name: "vda", devnum: "254:0", parts: []fakePart{{"dstack-rootfs", ""}}}},
			wantOut: `dstack-prepare: error: no data disk: no PARTLABEL=dstack-data partition, and device /dev/vdb not found after 0s; block devices seen: vda vda1\n$`},
		{name: "data_dev missing", cmdline: "dstack.data_dev=PARTUUID=01234567-89ab-cdef-0123-456789abcdef", disks: []fakeDisk{
			{name: "vdc", devnum: "254:32", parts: []fakePart{{"dstack-data", ""}}}},
			wantOut: `dstack-prepare: error: dstack.data_dev: device PARTUUID=01234567-89ab-cdef-0123-456789abcdef not found after 0s; block devices seen: vdc vdc1\n$`},
		{name: "data_dev glob", cmdline: "dstack.data_dev=/dev/vd*", disks: []fakeDisk{
			{name: "vdc", devnum: "254:32", parts: []fakePart{{"dstack-data", ""}}}},
			wantOut: `dstack-prepare: error: dstack.data_dev: invalid device spec '/dev/vd\*'`},

		// upgrade in place: a whole-disk LUKS volume, no partition table
		{name: "whole-disk LUKS on vdb picked up unchanged", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: luks}}, rootDM: rootDM,
			wantOut:   `^dstack-prepare: data disk: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `, LUKS, used as it is\)\n`,
			wantAgent: "DEV/vdb"},
		{name: "whole-disk LUKS named by data_dev", cmdline: "dstack.data_dev=/dev/vdc", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: make([]byte, 4096)}, {name: "vdc", devnum: "254:32", rawFile: luks}}, rootDM: rootDM,
			wantOut:   `^dstack-prepare: data disk: DEV/vdc \(dstack.data_dev=/dev/vdc, LUKS, used as it is\)\n`,
			wantAgent: "DEV/vdc"},
		{name: "LUKS refused when storage is unencrypted", cmdline: "dstack.storage_encrypted=false", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: luks}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `\) holds a LUKS volume but dstack.storage_encrypted is off: dstack-util setup would format over it; not touching it\n$`},
		{name: "ext4 refused when storage is encrypted", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: ext4}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `\) is not empty and holds no LUKS volume \(ext4\): dstack-util setup would format over it; not touching it\n$`},
		{name: "ext4 picked up when storage is unencrypted", cmdline: "dstack.storage_encrypted=0", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: ext4}}, rootDM: rootDM,
			wantOut:   `^dstack-prepare: data disk: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `, ext4, unencrypted, used as it is\)\n`,
			wantAgent: "DEV/vdb"},
		{name: "zfs refused when storage is encrypted", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: zfs}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `\) is not empty and holds no LUKS volume \(zfs\)`},
		{name: "zfs picked up when storage is unencrypted", cmdline: "dstack.storage_encrypted=off", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: zfs}}, rootDM: rootDM,
			wantOut:   `^dstack-prepare: data disk: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `, zfs, unencrypted, used as it is\)\n`,
			wantAgent: "DEV/vdb"},
		{name: "xfs refused when storage is unencrypted", cmdline: "dstack.storage_encrypted=no", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: xfs}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `\) is not empty and holds no ext4 or ZFS file system \(xfs\): dstack-util setup would format over it; not touching it\n$`},
		{name: "xfs refused", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: xfs}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/vdb \(` + regexp.QuoteMeta(noLabel) + `\) is not empty and holds no LUKS volume \(xfs\)`},

		// dstack.data_device= is an alias of dstack.data_dev=
		{name: "data_device alias", cmdline: "dstack.data_device=/dev/vdc", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: make([]byte, 4096)}, {name: "vdc", devnum: "254:32", rawFile: luks}}, rootDM: rootDM,
			wantOut:   `^dstack-prepare: data disk: DEV/vdc \(dstack.data_device=/dev/vdc, LUKS, used as it is\)\n`,
			wantAgent: "DEV/vdc"},
		{name: "data_dev and data_device agree", cmdline: "dstack.data_device=/dev/vdc dstack.data_dev=/dev/vdc", disks: []fakeDisk{
			rootDisk, {name: "vdc", devnum: "254:32", rawFile: luks}}, rootDM: rootDM,
			wantOut:   `^dstack-prepare: data disk: DEV/vdc \(dstack.data_dev=/dev/vdc, LUKS, used as it is\)\n`,
			wantAgent: "DEV/vdc"},
		{name: "data_dev and data_device differ", cmdline: "dstack.data_dev=/dev/vdc dstack.data_device=/dev/vdb", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: luks}, {name: "vdc", devnum: "254:32", rawFile: luks}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: dstack.data_dev=/dev/vdc and dstack.data_device=/dev/vdb name different devices; give one of them\n$`},

		// the rootfs is never the data disk
		{name: "PARTLABEL=dstack-rootfs refused", cmdline: "dstack.rootfs_device=PARTLABEL=dstack-rootfs dstack.data_dev=PARTLABEL=dstack-rootfs", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: make([]byte, 4096)}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/vda2 \(dstack.data_dev=PARTLABEL=dstack-rootfs\) is on vda, the disk that holds the rootfs; refusing it as the data disk\n$`},
		{name: "rootfs partition refused without dm", cmdline: "dstack.rootfs_device=PARTLABEL=dstack-rootfs dstack.data_dev=/dev/nvme0n1p2", disks: []fakeDisk{
			{name: "nvme0n1", devnum: "259:0", serial: "s", model: "m", parts: []fakePart{{"esp", ""}, {"dstack-rootfs", ""}}},
			{name: "vdb", devnum: "254:16", raw: make([]byte, 4096)}},
			wantOut: `dstack-prepare: error: DEV/nvme0n1p2 \(dstack.data_dev=/dev/nvme0n1p2\) is on nvme0n1, the disk that holds the rootfs; refusing it as the data disk\n$`},
		{name: "rootfs disk refused", cmdline: "dstack.data_dev=/dev/vda", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: make([]byte, 4096)}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/vda \(dstack.data_dev=/dev/vda\) is on vda, the disk that holds the rootfs; refusing it as the data disk\n$`},
		{name: "other partition of the rootfs disk refused", cmdline: "dstack.rootfs_device=PARTUUID=1b0e5a3c-7d2f-4e61-9a8b-0c1d2e3f4a5b dstack.data_dev=PARTLABEL=esp", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: make([]byte, 4096)}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/vda1 \(dstack.data_dev=PARTLABEL=esp\) is on vda, the disk that holds the rootfs; refusing it as the data disk\n$`},
		{name: "dstack-data partition on the rootfs disk refused", cmdline: "dstack.rootfs_device=/dev/vdc", disks: []fakeDisk{
			{name: "vdc", devnum: "254:32", parts: []fakePart{{"dstack-rootfs", ""}, {"dstack-data", ""}}}}, rootDM: "vdc1",
			wantOut: `dstack-prepare: error: DEV/vdc2 \(PARTLABEL=dstack-data\) is on vdc, the disk that holds the rootfs; refusing it as the data disk\n$`},
		{name: "verity device refused", cmdline: "dstack.data_dev=/dev/mapper/dstack-rootfs", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: make([]byte, 4096)}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/mapper/dstack-rootfs \(dstack.data_dev=/dev/mapper/dstack-rootfs\) is the verified rootfs \(dstack-rootfs\); refusing it as the data disk\n$`},
		{name: "verity dm node refused", cmdline: "dstack.data_dev=/dev/dm-0", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", raw: make([]byte, 4096)}}, rootDM: rootDM,
			wantOut: `dstack-prepare: error: DEV/dm-0 \(dstack.data_dev=/dev/dm-0\) is the verified rootfs \(dstack-rootfs\); refusing it as the data disk\n$`},

		// numbers are decimal: a leading zero is refused, never octal
		{name: "device_timeout=08", cmdline: "dstack.device_timeout=08", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: luks}}, rootDM: rootDM,
			wantOut: `^dstack-prepare: error: dstack.device_timeout='08' is malformed: seconds expected \(0-9999, decimal, no leading zero\)\n$`},
		{name: "device_timeout=0019", cmdline: "dstack.device_timeout=0019", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: luks}}, rootDM: rootDM,
			wantOut: `^dstack-prepare: error: dstack.device_timeout='0019' is malformed`},
		{name: "device_timeout=0010", cmdline: "dstack.device_timeout=0010", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: luks}}, rootDM: rootDM,
			wantOut: `^dstack-prepare: error: dstack.device_timeout='0010' is malformed`},
		{name: "device_timeout=0", cmdline: "dstack.device_timeout=0", disks: []fakeDisk{
			rootDisk, {name: "vdb", devnum: "254:16", rawFile: luks}}, rootDM: rootDM,
			wantOut:   `^dstack-prepare: data disk: DEV/vdb `,
			wantAgent: "DEV/vdb"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := newFakeTree(t, tc.disks...)
			if tc.rootDM != "" {
				ft.addRootDM(t, tc.rootDM)
			}
			timeout := "dstack.device_timeout=0 "
			if strings.Contains(tc.cmdline, "device_timeout") {
				timeout = ""
			}
			writeFile(t, ft.cmdline, "console=ttyS0 "+timeout+tc.cmdline+"\n")
			before := snapshotDev(t, ft.dev)
			out, agent, agentEnv, err := ft.runPrepare(t)
			out = strings.ReplaceAll(out, ft.dev, "DEV")
			agent = strings.ReplaceAll(agent, ft.dev, "DEV")
			wantErr := tc.wantAgent == ""
			if (err != nil) != wantErr {
				t.Fatalf("exit error %v, want error %v\n%s", err, wantErr, out)
			}
			if err != nil {
				if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
					t.Errorf("exit %v, want status 1", err)
				}
				if n := strings.Count(out, "dstack-prepare: error: "); n != 1 {
					t.Errorf("%d error lines, want 1:\n%s", n, out)
				}
			}
			if !regexp.MustCompile(tc.wantOut).MatchString(out) {
				t.Errorf("output\n%s\ndoes not match %q", out, tc.wantOut)
			}
			wantAgent := ""
			if tc.wantAgent != "" {
				wantAgent = fmt.Sprintf(agentCall, tc.wantAgent)
			}
			if agent != wantAgent {
				t.Errorf("agent called with %q, want %q", agent, wantAgent)
			}
			if after := snapshotDev(t, ft.dev); after != before {
				t.Errorf("dstack-prepare changed the disks")
			}
			if tc.wantAgent != "" {
				rec, err := os.ReadFile(filepath.Join(ft.root, "run", "dstack", "data_dev"))
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.ReplaceAll(string(rec), ft.dev, "DEV"); got != tc.wantAgent+"\n" {
					t.Errorf("run/dstack/data_dev holds %q, want %q", got, tc.wantAgent)
				}
				wantCleanEnv(t, agentEnv, "PATH="+filepath.Join(ft.root, "bin"))
			}
			for _, d := range tc.disks {
				if d.rawFile != "" {
					if got, want := fileSum(t, filepath.Join(ft.dev, d.name)), fileSum(t, d.rawFile); got != want {
						t.Errorf("/dev/%s changed", d.name)
					}
					if d.rawFile == luks {
						testutil.Run(t, "cryptsetup", "isLuks", filepath.Join(ft.dev, d.name))
					}
				}
			}
		})
	}
}

// wantCleanEnv checks an environment dump (env output) holds the given PATH
// and nothing a caller could have set: at most the variables busybox sh sets
// itself (PWD, SHLVL).
func wantCleanEnv(t *testing.T, dump, path string) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(dump), "\n") {
		name, _, _ := strings.Cut(line, "=")
		switch {
		case line == path:
		case name == "PWD" || name == "SHLVL" || name == "OLDPWD":
		default:
			t.Errorf("environment line %q (want only %s)", line, path)
		}
	}
	if !strings.Contains("\n"+dump, "\n"+path+"\n") {
		t.Errorf("environment lacks %s:\n%s", path, dump)
	}
}

// TestPrepareIgnoresEnvironment: the environment systemd.setenv= could give
// dstack-prepare (every former DSTACK_* override, LD_PRELOAD, PATH, IFS)
// changes nothing: same output, same disk, and dstack-util setup gets an
// environment holding PATH only.
func TestPrepareIgnoresEnvironment(t *testing.T) {
	luks := luksImage(t)
	var outs [2]string
	for i, hostile := range []bool{false, true} {
		ft := newFakeTree(t,
			fakeDisk{name: "vda", devnum: "254:0", parts: []fakePart{{"esp", ""}, {"dstack-rootfs", ""}}},
			fakeDisk{name: "vdb", devnum: "254:16", rawFile: luks})
		ft.addRootDM(t, "vda2")
		writeFile(t, ft.cmdline, "console=ttyS0 dstack.device_timeout=0\n")
		writeFile(t, filepath.Join(ft.root, "evil-cmdline"), "dstack.data_dev=/dev/vda dstack.device_timeout=0\n")
		var env []string
		if hostile {
			env = hostileEnv(ft)
		}
		out, agent, agentEnv, err := ft.runPrepare(t, env...)
		if err != nil {
			t.Fatalf("hostile=%v: %v\n%s", hostile, err, out)
		}
		outs[i] = strings.ReplaceAll(out, ft.root, "ROOT")
		if want := fmt.Sprintf(agentCall, filepath.Join(ft.dev, "vdb")); agent != want {
			t.Errorf("hostile=%v: agent called with %q, want %q", hostile, agent, want)
		}
		wantCleanEnv(t, agentEnv, "PATH="+filepath.Join(ft.root, "bin"))
		if fileSum(t, filepath.Join(ft.dev, "vdb")) != fileSum(t, luks) {
			t.Errorf("hostile=%v: /dev/vdb changed", hostile)
		}
	}
	if outs[0] != outs[1] {
		t.Errorf("the environment changed the output:\nclean:\n%s\nhostile:\n%s", outs[0], outs[1])
	}
}

// TestPrepareUsage: only no argument or --test-root DIR is accepted.
func TestPrepareUsage(t *testing.T) {
	bin := busybox(t)
	script := filepath.Join(testutil.RepoRoot(t), PreparePath)
	for _, args := range [][]string{{"--data-dev", "/dev/vda"}, {"--test-root"}, {"--env-cleared", "--test-root", "rel"}, {"--env-cleared", "x"}} {
		out, err := exec.Command(filepath.Join(bin, "sh"), append([]string{script}, args...)...).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("%v: exit %v, want 2\n%s", args, err, out)
		}
		if !strings.HasPrefix(string(out), "dstack-prepare: error: ") {
			t.Errorf("%v: output %q", args, out)
		}
	}
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// snapshotDev hashes every file of the fake /dev (names and contents).
func snapshotDev(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			fmt.Fprintf(&b, "%s %d %s\n", p, fi.Size(), fileSum(t, p))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
