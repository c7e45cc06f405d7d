package bootscripts

import (
	"bytes"
	"fmt"
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
	ft := &fakeTree{root: root, sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev"), cmdline: filepath.Join(root, "cmdline")}
	for _, d := range []string{filepath.Join(ft.sys, "class", "block"), ft.dev} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range disks {
		ddir := filepath.Join(ft.sys, "devices", "pci0000:00", "block", d.name)
		writeFile(t, filepath.Join(ddir, "dev"), d.devnum+"\n")
		writeFile(t, filepath.Join(ddir, "uevent"), fmt.Sprintf("MAJOR=%s\nMINOR=%s\nDEVNAME=%s\nDEVTYPE=disk\n", strings.Split(d.devnum, ":")[0], strings.Split(d.devnum, ":")[1], d.name))
		writeFile(t, filepath.Join(ddir, "size"), "16384\n")
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
		{"bad timeout", h + " " + s + " dstack.device_timeout=1s", "err dstack.device_timeout='1s' is malformed: seconds (0-9999) expected"},
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

// runPrepare runs dstack-prepare on the fake tree with a fake guest agent that
// records its arguments.
func (ft *fakeTree) runPrepare(t *testing.T) (string, string, error) {
	t.Helper()
	bin := busybox(t)
	root := testutil.RepoRoot(t)
	agentLog := filepath.Join(ft.root, "agent.log")
	agent := filepath.Join(ft.root, "dstack-util")
	writeFile(t, agent, "#!"+filepath.Join(bin, "sh")+"\nprintf '%s\\n' \"$*\" >"+agentLog+"\n")
	if err := os.Chmod(agent, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "sh"), filepath.Join(root, PreparePath))
	cmd.Env = []string{
		"PATH=" + bin,
		"DSTACK_DEVSPEC=" + filepath.Join(root, DevspecPath),
		"DSTACK_SYSFS=" + ft.sys,
		"DSTACK_DEV=" + ft.dev,
		"DSTACK_CMDLINE=" + ft.cmdline,
		"DSTACK_RUN=" + filepath.Join(ft.root, "run"),
		"DSTACK_UTIL=" + agent,
		"DSTACK_DEVICE_TIMEOUT=0",
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	agentArgs, _ := os.ReadFile(agentLog)
	return stdout.String() + stderr.String(), string(agentArgs), err
}

// TestPrepareChoice covers dstack-prepare's choices that need no real kernel:
// the partitioning of an empty disk is checked by the QEMU boot tests.
func TestPrepareChoice(t *testing.T) {
	nonBlank := make([]byte, 8192)
	copy(nonBlank[1024:], "some filesystem")
	for _, tc := range []struct {
		name      string
		cmdline   string
		disks     []fakeDisk
		wantOut   string // regexp
		wantAgent string // "" = agent not run
		wantErr   bool
	}{
		{name: "partlabel beats vdb", disks: []fakeDisk{
			{name: "vda", devnum: "254:0", parts: []fakePart{{"dstack-rootfs", ""}}},
			{name: "vdb", devnum: "254:16", raw: make([]byte, 4096)},
			{name: "nvme0n1", devnum: "259:0", serial: "s", model: "m", parts: []fakePart{{"x", ""}, {"dstack-data", ""}}}},
			wantOut:   `^dstack-prepare: data disk: DEV/nvme0n1p2 \(PARTLABEL=dstack-data\)\n`,
			wantAgent: "setup --work-dir /var/volatile/dstack --device DEV/nvme0n1p2 --mount-point /var/volatile/dstack/persistent\n"},
		{name: "data_dev partition", cmdline: "dstack.data_dev=/dev/vda1", disks: []fakeDisk{
			{name: "vda", devnum: "254:0", parts: []fakePart{{"dstack-data", ""}}},
			{name: "nvme0n1", devnum: "259:0", serial: "s", model: "m", parts: []fakePart{{"dstack-data", ""}}}},
			wantOut:   `^dstack-prepare: data disk: DEV/vda1 \(dstack.data_dev=/dev/vda1\)\n`,
			wantAgent: "setup --work-dir /var/volatile/dstack --device DEV/vda1 --mount-point /var/volatile/dstack/persistent\n"},
		{name: "data_dev disk with dstack-data", cmdline: "dstack.data_dev=/dev/disk/by-id/nvme-m_s", disks: []fakeDisk{
			{name: "nvme0n1", devnum: "259:0", serial: "s", model: "m", parts: []fakePart{{"a", ""}, {"dstack-data", ""}}}},
			wantOut:   `^dstack-prepare: data disk: DEV/nvme0n1p2 \(dstack.data_dev=/dev/disk/by-id/nvme-m_s\)\n`,
			wantAgent: "setup --work-dir /var/volatile/dstack --device DEV/nvme0n1p2 --mount-point /var/volatile/dstack/persistent\n"},
		{name: "foreign partitions refused", disks: []fakeDisk{
			{name: "vdb", devnum: "254:16", parts: []fakePart{{"home", ""}, {"swap", ""}}}},
			wantOut: `dstack-prepare: error: DEV/vdb \(default /dev/vdb \(no PARTLABEL=dstack-data partition\)\) has partitions \(vdb1 vdb2\) but none named dstack-data; not touching it\n$`,
			wantErr: true},
		{name: "data on unpartitioned disk refused", disks: []fakeDisk{
			{name: "vdb", devnum: "254:16", raw: nonBlank}},
			wantOut: `dstack-prepare: error: DEV/vdb \(default /dev/vdb \(no PARTLABEL=dstack-data partition\)\) has no partition table but is not blank; not touching it\n$`,
			wantErr: true},
		{name: "no disk", disks: []fakeDisk{
			{name: "vda", devnum: "254:0", parts: []fakePart{{"dstack-rootfs", ""}}}},
			wantOut: `dstack-prepare: error: no data disk: no PARTLABEL=dstack-data partition, and device /dev/vdb not found after 0s; block devices seen: vda vda1\n$`,
			wantErr: true},
		{name: "data_dev missing", cmdline: "dstack.data_dev=PARTUUID=01234567-89ab-cdef-0123-456789abcdef", disks: []fakeDisk{
			{name: "vda", devnum: "254:0", parts: []fakePart{{"dstack-data", ""}}}},
			wantOut: `dstack-prepare: error: dstack.data_dev: device PARTUUID=01234567-89ab-cdef-0123-456789abcdef not found after 0s; block devices seen: vda vda1\n$`,
			wantErr: true},
		{name: "data_dev glob", cmdline: "dstack.data_dev=/dev/vd*", disks: []fakeDisk{
			{name: "vda", devnum: "254:0", parts: []fakePart{{"dstack-data", ""}}}},
			wantOut: `dstack-prepare: error: dstack.data_dev: invalid device spec '/dev/vd\*'`,
			wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := newFakeTree(t, tc.disks...)
			writeFile(t, ft.cmdline, "console=ttyS0 "+tc.cmdline+"\n")
			before := snapshotDev(t, ft.dev)
			out, agent, err := ft.runPrepare(t)
			out = strings.ReplaceAll(out, ft.dev, "DEV")
			agent = strings.ReplaceAll(agent, ft.dev, "DEV")
			if (err != nil) != tc.wantErr {
				t.Fatalf("exit error %v, want error %v\n%s", err, tc.wantErr, out)
			}
			if !regexp.MustCompile(tc.wantOut).MatchString(out) {
				t.Errorf("output\n%s\ndoes not match %q", out, tc.wantOut)
			}
			if agent != tc.wantAgent {
				t.Errorf("agent called with %q, want %q", agent, tc.wantAgent)
			}
			if after := snapshotDev(t, ft.dev); after != before {
				t.Errorf("dstack-prepare changed the disks")
			}
			if tc.wantAgent != "" {
				rec, err := os.ReadFile(filepath.Join(ft.root, "run", "data_dev"))
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.ReplaceAll(string(rec), ft.dev, "DEV"); !strings.Contains(tc.wantAgent, "--device "+strings.TrimSpace(got)+" ") {
					t.Errorf("run/data_dev holds %q", got)
				}
			}
		})
	}
}

// snapshotDev hashes every file of the fake /dev (names and contents).
func snapshotDev(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %d %x\n", e.Name(), len(data), data)
	}
	return b.String()
}
