package boottest

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/demo"
	"github.com/Dstack-TEE/meta-dstack/internal/qemu"
	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/dist"
)

// bootTimeout bounds one boot; a TCG boot of the demo takes about 20-40 s.
const bootTimeout = 5 * time.Minute

// fixture is the deploy directory and the imgpost dist output shared by
// every test of the package (built once; tests copy what they tamper with).
type fixture struct {
	dir     string
	deploy  demo.Deploy
	distDir string // images/<dist>-<ver>
	meta    *dist.Metadata
	verity  string // rootfs.img.verity: squashfs + hash tree
	diskRaw string // gcp/disk.raw
	hash    string // dstack.rootfs_hash of metadata.json's cmdline
	size    int64  // dstack.rootfs_size
	err     error
}

var (
	fixOnce sync.Once
	fix     fixture
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fix.dir != "" {
		os.RemoveAll(fix.dir)
	}
	os.Exit(code)
}

// need checks the host has everything the boot tests use.
func need(t *testing.T) {
	t.Helper()
	testutil.Need(t, "qemu-system-x86_64", "mksquashfs", "sgdisk")
	if _, miss := demo.FindHost(); len(miss) > 0 {
		msg := fmt.Sprintf("host parts missing: %v (install Debian packages %s)", miss, strings.Join(demo.MissingPackages(miss), " "))
		if testutil.InCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

func getFixture(t *testing.T) *fixture {
	t.Helper()
	need(t)
	imgpost := testutil.Imgpost(t)
	root := testutil.RepoRoot(t)
	fixOnce.Do(func() { fix.err = buildFixture(imgpost, root) })
	if fix.err != nil {
		t.Fatalf("boot fixture: %v", fix.err)
	}
	return &fix
}

func buildFixture(imgpost, root string) error {
	dir, err := os.MkdirTemp("", "boottest-")
	if err != nil {
		return err
	}
	fix.dir = dir
	h, _ := demo.FindHost()
	if fix.deploy, err = demo.Assemble(h, root, filepath.Join(dir, "deploy")); err != nil {
		return err
	}
	d := fix.deploy
	out, err := runCmd(imgpost, "dist", "--kernel", d.Kernel, "--initrd", d.Initrd, "--rootfs", d.Rootfs,
		"--stub", d.Stub, "--ovmf", d.OVMF, "--dist-name", "dstack-boottest", "--version", "1",
		"--flavor", "dev", "--out-dir", filepath.Join(dir, "images"), "--no-tarball", "--quiet",
		"--gcp-cmdline-extra", "dstack.data_dev="+demo.GCPDataDev, "--gcp-cmdline-extra", noTimerCheck)
	if err != nil {
		return fmt.Errorf("imgpost dist: %v\n%s", err, out)
	}
	fix.distDir = filepath.Join(dir, "images", "dstack-boottest-1")
	b, err := os.ReadFile(filepath.Join(fix.distDir, "metadata.json"))
	if err != nil {
		return err
	}
	if fix.meta, err = dist.ParseMetadata(b); err != nil {
		return err
	}
	fix.verity = filepath.Join(fix.distDir, fix.meta.Rootfs)
	fix.diskRaw = filepath.Join(fix.distDir, "gcp", "disk.raw")
	for _, w := range strings.Fields(fix.meta.Cmdline) {
		if v, ok := strings.CutPrefix(w, "dstack.rootfs_hash="); ok {
			fix.hash = v
		}
		if v, ok := strings.CutPrefix(w, "dstack.rootfs_size="); ok {
			fix.size, _ = strconv.ParseInt(v, 10, 64)
		}
	}
	if len(fix.hash) != 64 || fix.size <= 0 {
		return fmt.Errorf("metadata.json cmdline %q: no dstack.rootfs_hash/size", fix.meta.Cmdline)
	}
	return nil
}

// noTimerCheck skips the kernel's IO-APIC timer check, which a TCG guest on a
// loaded host can fail ("IO-APIC + timer doesn't work!", a panic before /init
// runs) though nothing is wrong with the image under test.
const noTimerCheck = "no_timer_check"

// cmdline is the bare-metal command line for the fixture plus extra words.
func (f *fixture) cmdline(extra ...string) string {
	words := []string{"console=ttyS0", "panic=-1", "loglevel=4", noTimerCheck,
		"dstack.rootfs_hash=" + f.hash, "dstack.rootfs_size=" + strconv.FormatInt(f.size, 10)}
	return strings.Join(append(words, extra...), " ")
}

// copyOf copies the fixture's verity image (or another file) into the test's
// temporary directory.
func copyOf(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), filepath.Base(src))
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
	return dst
}

// blankDisk makes a sparse all-zero disk image.
func blankDisk(t *testing.T, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return p
}

func sha(t *testing.T, path string) string {
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
	return hex.EncodeToString(h.Sum(nil))
}

// boot runs a VM to its end and returns the console. QEMU must exit by
// itself: -no-reboot turns the guest's poweroff and the panic=-1 reboot after
// a kernel panic into an exit.
func boot(t *testing.T, cfg qemu.Config) string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "console.log")
	cfg.LogPath = logPath
	start := time.Now()
	out, err := qemu.Run(cfg, bootTimeout)
	if testing.Verbose() {
		t.Logf("--- console ---\n%s", out)
	}
	t.Logf("boot took %v", time.Since(start).Round(time.Second))
	if err != nil {
		t.Fatalf("QEMU did not end by itself: %v\n--- console ---\n%s", err, out)
	}
	return out
}

const panicLine = "Kernel panic - not syncing: Attempted to kill init!"

// wantBooted checks the verified rootfs came up with the fixture's hash and
// powered the VM off, and returns the data disk the demo reported.
func wantBooted(t *testing.T, f *fixture, out string) string {
	t.Helper()
	for _, s := range []string{"[init] verified rootfs mounted; switching root", demo.MarkRootUp,
		"[demo] / is /dev/mapper/dstack-rootfs (squashfs, ro",
		demo.MarkRootHash + f.hash, demo.MarkDone, "reboot: Power down"} {
		if !strings.Contains(out, s) {
			t.Errorf("console lacks %q", s)
		}
	}
	if strings.Contains(out, "Kernel panic") {
		t.Errorf("console shows a kernel panic")
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(demo.MarkDataDisk) + `(\S+)`).FindStringSubmatch(out)
	if t.Failed() || m == nil {
		t.Fatalf("boot did not reach the demo rootfs's end\n--- console ---\n%s", out)
	}
	return m[1]
}

// wantRefused checks /init refused the boot with one [init] line matching re,
// then PID 1 exited (kernel panic, panic=-1 reboot, QEMU exit), and nothing of
// the rootfs ran.
func wantRefused(t *testing.T, out string, re string) {
	t.Helper()
	if !regexp.MustCompile(`(?m)^\[init\] ` + re + `\r?$`).MatchString(out) {
		t.Errorf("console lacks an [init] line matching %q", re)
	}
	if !strings.Contains(out, "[init] boot refused; halting") {
		t.Errorf("console lacks the halt line")
	}
	if !strings.Contains(out, panicLine) {
		t.Errorf("console lacks %q", panicLine)
	}
	for _, s := range []string{"switching root", demo.MarkRootUp, "[demo]"} {
		if strings.Contains(out, s) {
			t.Errorf("console shows %q: the rootfs was reached", s)
		}
	}
	if t.Failed() {
		t.Logf("--- console ---\n%s", out)
	}
}

// bareMetal boots the deploy dir's kernel + initramfs with the command line.
func bareMetal(f *fixture, cmdline string, drives ...qemu.Drive) qemu.Config {
	return qemu.Config{Kernel: f.deploy.Kernel, Initrd: f.deploy.Initrd, Append: cmdline, Drives: drives}
}

// sgdiskInfo returns `sgdisk -i N` of an image.
func sgdiskInfo(t *testing.T, img string, n int) string {
	t.Helper()
	return testutil.Run(t, "sgdisk", "-i", strconv.Itoa(n), img)
}

// wantDataPartition checks with sgdisk that img now holds a sound GPT whose
// only partition is named dstack-data.
func wantDataPartition(t *testing.T, img string) {
	t.Helper()
	if out := testutil.Run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v %s:\n%s", img, out)
	}
	if info := sgdiskInfo(t, img, 1); !strings.Contains(info, "Partition name: 'dstack-data'") {
		t.Errorf("sgdisk -i 1 %s: no dstack-data partition:\n%s", img, info)
	}
	if info := sgdiskInfo(t, img, 2); strings.Contains(info, "First sector") {
		t.Errorf("sgdisk -i 2 %s: unexpected second partition:\n%s", img, info)
	}
}

// 1. Bare metal, default /dev/vda: the dist set booted as a dstack host does
// (its ovmf.fd, kernel, initramfs and metadata.json's command line as is);
// the blank /dev/vdb becomes the data disk.
func TestBootBareMetalDefaultVda(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	if strings.Contains(f.meta.Cmdline, "dstack.rootfs_device") {
		t.Fatalf("metadata.json's cmdline names a rootfs device: %s", f.meta.Cmdline)
	}
	data := blankDisk(t, "data.img", 64<<20)
	cfg, err := demo.BareMetalConfig(f.distDir, data)
	if err != nil {
		t.Fatal(err)
	}
	out := boot(t, cfg)
	if !strings.Contains(out, "[init] rootfs device /dev/vda is /dev/vda") {
		t.Errorf("console lacks the default device line")
	}
	if got := wantBooted(t, f, out); got != "/dev/vdb1" {
		t.Errorf("data disk %s, want /dev/vdb1", got)
	}
	if !strings.Contains(out, "dstack-prepare: data disk: /dev/vdb1 (default /dev/vdb (no PARTLABEL=dstack-data partition), partitioned)") {
		t.Errorf("dstack-prepare did not report partitioning /dev/vdb")
	}
	if !strings.Contains(out, "[demo] dstack-util stand-in called: setup --work-dir /var/volatile/dstack --device /dev/vdb1 --mount-point /var/volatile/dstack/persistent") {
		t.Errorf("dstack-prepare did not hand /dev/vdb1 to dstack-util setup")
	}
	wantDataPartition(t, data)
}

// 2. (and dist's disk boot test) The GCP disk built by imgpost dist boots
// under QEMU+OVMF attached as NVMe: OVMF loads the UKI from the ESP, /init
// finds PARTLABEL=dstack-rootfs (baked into the UKI's command line), opens
// verity with the hash and size from that command line and mounts the
// squashfs; the UKI's dstack.data_dev=/dev/nvme0n2 picks the second
// namespace, which gets its dstack-data partition.
func TestBootGCPDiskNVMe(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	data := blankDisk(t, "gcp-data.img", 64<<20)
	out := boot(t, demo.GCPConfig(f.diskRaw, data))
	if !strings.Contains(out, "[init] rootfs device PARTLABEL=dstack-rootfs is /dev/nvme0n1p2") {
		t.Errorf("console lacks the PARTLABEL=dstack-rootfs resolution line")
	}
	if got := wantBooted(t, f, out); got != "/dev/nvme0n2p1" {
		t.Errorf("data disk %s, want /dev/nvme0n2p1", got)
	}
	if !strings.Contains(out, "dstack-prepare: data disk: /dev/nvme0n2p1 (dstack.data_dev=/dev/nvme0n2, partitioned)") {
		t.Errorf("dstack-prepare did not report partitioning /dev/nvme0n2")
	}
	wantDataPartition(t, data)
}

// partitionedDisk makes a GPT disk image (with sgdisk) holding a small decoy
// partition 1 and the verity image in partition 2, with the given unique
// GUID and name, and returns the image path.
func partitionedDisk(t *testing.T, f *fixture, guid, name string) string {
	t.Helper()
	st, err := os.Stat(f.verity)
	if err != nil {
		t.Fatal(err)
	}
	img := blankDisk(t, "parted.img", 4<<20+(st.Size()+1<<20-1)/(1<<20)*(1<<20)+1<<20)
	testutil.Run(t, "sgdisk", "--new=1:0:+1M", "--change-name=1:decoy",
		fmt.Sprintf("--new=2:0:+%dK", (st.Size()+1023)/1024), "--change-name=2:"+name,
		"--partition-guid=2:"+guid, img)
	info := sgdiskInfo(t, img, 2)
	if !strings.Contains(info, "Partition unique GUID: "+strings.ToUpper(guid)) {
		t.Fatalf("sgdisk did not set the GUID:\n%s", info)
	}
	m := regexp.MustCompile(`First sector: (\d+)`).FindStringSubmatch(info)
	if m == nil {
		t.Fatalf("sgdisk -i 2: no first sector:\n%s", info)
	}
	first, _ := strconv.ParseInt(m[1], 10, 64)
	src, err := os.Open(f.verity)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dst.Seek(first*512, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return img
}

// 3. PARTUUID= override: the rootfs in partition 2 of an NVMe disk, found by
// its unique GUID (as sgdisk set and reports it), given in lower case. Also
// covers dstack.rootfs_verify=ondemand, and dstack-prepare's default choice of
// an existing PARTLABEL=dstack-data partition (used as is, not rewritten).
func TestBootPartUUID(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	const guid = "5E1F2A3B-4C5D-4E6F-8A9B-0C1D2E3F4A5B"
	img := partitionedDisk(t, f, guid, "not-the-label")
	data := blankDisk(t, "data.img", 32<<20)
	testutil.Run(t, "sgdisk", "--new=1:0:+8M", "--change-name=1:scratch", "--new=2:0:0", "--change-name=2:dstack-data", data)
	dataSum := sha(t, data)
	out := boot(t, bareMetal(f, f.cmdline("dstack.rootfs_device=PARTUUID="+strings.ToLower(guid), "dstack.rootfs_verify=ondemand"),
		qemu.Drive{Path: data},
		qemu.Drive{Path: img, Interface: qemu.NVMe, ReadOnly: true}))
	if !strings.Contains(out, "[init] rootfs device PARTUUID="+strings.ToLower(guid)+" is /dev/nvme0n1p2") {
		t.Errorf("console lacks the PARTUUID resolution line")
	}
	if got := wantBooted(t, f, out); got != "/dev/vda2" {
		t.Errorf("data disk %s, want /dev/vda2", got)
	}
	if !strings.Contains(out, "dstack-prepare: data disk: /dev/vda2 (PARTLABEL=dstack-data, empty)") {
		t.Errorf("dstack-prepare did not pick the existing dstack-data partition")
	}
	if sha(t, data) != dataSum {
		t.Errorf("the data disk with an existing dstack-data partition was modified")
	}
}

// 4. /dev/disk/by-id/ override: the rootfs and the data disk are virtio disks
// named by their serials as udev would (virtio-<serial>); the data disk is
// found the same way.
func TestBootByID(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	data := blankDisk(t, "data.img", 32<<20)
	cfg := bareMetal(f, f.cmdline("dstack.rootfs_device=/dev/disk/by-id/virtio-dstack-root-01",
		"dstack.data_dev=/dev/disk/by-id/virtio-dstack-data-01"),
		qemu.Drive{Path: data, Serial: "dstack-data-01"},
		qemu.Drive{Path: f.verity, ReadOnly: true, Serial: "dstack-root-01"})
	out := boot(t, cfg)
	m := regexp.MustCompile(`\[init\] rootfs device /dev/disk/by-id/virtio-dstack-root-01 is /dev/(vd[ab])\b`).FindStringSubmatch(out)
	if m == nil {
		t.Errorf("console lacks the by-id resolution line")
	}
	got := wantBooted(t, f, out)
	if m != nil && (got == "/dev/"+m[1]+"1" || !regexp.MustCompile(`^/dev/vd[ab]1$`).MatchString(got)) {
		t.Errorf("data disk %s, rootfs on /dev/%s", got, m[1])
	}
	wantDataPartition(t, data)
}

// 5. dstack.data_dev selects the named disk (an empty NVMe namespace, which
// gets its dstack-data partition) over /dev/vdb, which holds foreign
// partitions and is left untouched.
func TestBootDataDev(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	foreign := blankDisk(t, "foreign.img", 32<<20)
	testutil.Run(t, "sgdisk", "--new=1:0:+4M", "--change-name=1:home", "--new=2:0:0", "--change-name=2:swap", foreign)
	foreignSum := sha(t, foreign)
	data := blankDisk(t, "nvme-data.img", 64<<20)
	out := boot(t, bareMetal(f, f.cmdline("dstack.data_dev=/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_dstackdata"),
		qemu.Drive{Path: f.verity, ReadOnly: true},
		qemu.Drive{Path: foreign},
		qemu.Drive{Path: data, Interface: qemu.NVMe, Serial: "dstackdata"}))
	if got := wantBooted(t, f, out); got != "/dev/nvme0n1p1" {
		t.Errorf("data disk %s, want /dev/nvme0n1p1", got)
	}
	if !strings.Contains(out, "dstack-prepare: data disk: /dev/nvme0n1p1 (dstack.data_dev=/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_dstackdata, partitioned)") {
		t.Errorf("dstack-prepare did not report partitioning the NVMe disk")
	}
	wantDataPartition(t, data)
	if sha(t, foreign) != foreignSum {
		t.Errorf("the disk with foreign partitions was modified")
	}
}

// 6. One flipped byte in the rootfs data: refused before switch_root.
func TestBootFlippedByteRefused(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	img := copyOf(t, f.verity)
	testutil.FlipByte(t, img, f.size/2+123)
	out := boot(t, bareMetal(f, f.cmdline(), qemu.Drive{Path: img, ReadOnly: true}))
	wantRefused(t, out, regexp.QuoteMeta("rootfs verification failed: the contents of /dev/vda do not match dstack.rootfs_hash (wrong hash, or a modified image)"))
	if !regexp.MustCompile(`device-mapper: verity: .*: data block \d+ is corrupted`).MatchString(out) {
		t.Errorf("the kernel did not report the corrupted data block")
	}
}

// 7. No dstack.rootfs_hash: refused with its message.
func TestBootMissingHashRefused(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	cmdline := strings.Replace(f.cmdline(), "dstack.rootfs_hash="+f.hash+" ", "", 1)
	out := boot(t, bareMetal(f, cmdline, qemu.Drive{Path: f.verity, ReadOnly: true}))
	wantRefused(t, out, regexp.QuoteMeta("dstack.rootfs_hash missing from the kernel command line"))
}

// 8. A wrong (well-formed) hash: refused by verity.
func TestBootWrongHashRefused(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	wrong := []byte(f.hash)
	if wrong[10] == '0' {
		wrong[10] = '1'
	} else {
		wrong[10] = '0'
	}
	cmdline := strings.Replace(f.cmdline(), f.hash, string(wrong), 1)
	out := boot(t, bareMetal(f, cmdline, qemu.Drive{Path: f.verity, ReadOnly: true}))
	// veritysetup opens the device (the kernel checks hashes on read); the
	// full read before switch_root then fails on the first block
	wantRefused(t, out, regexp.QuoteMeta("rootfs verification failed: the contents of /dev/vda do not match dstack.rootfs_hash (wrong hash, or a modified image)"))
}

// 8b. A wrong dstack.rootfs_size (the hash tree is not where it says):
// veritysetup refuses to open the device.
func TestBootWrongSizeRefused(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	wrong := strconv.FormatInt(f.size-4096, 10)
	cmdline := strings.Replace(f.cmdline(), "dstack.rootfs_size="+strconv.FormatInt(f.size, 10), "dstack.rootfs_size="+wrong, 1)
	out := boot(t, bareMetal(f, cmdline, qemu.Drive{Path: f.verity, ReadOnly: true}))
	wantRefused(t, out, regexp.QuoteMeta("veritysetup refused /dev/vda: no usable verity hash tree at byte "+wrong+" (dstack.rootfs_size)"))
}

// 9. Glob characters in the command line are not expanded: refused, the
// message showing them literally.
func TestBootGlobRefused(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	out := boot(t, bareMetal(f, f.cmdline("dstack.rootfs_device=/dev/*"), qemu.Drive{Path: f.verity, ReadOnly: true}))
	wantRefused(t, out, regexp.QuoteMeta("dstack.rootfs_device: invalid device spec '/dev/*': only letters, digits and / . _ : = @ + , % # - are allowed (no glob characters)"))
}

// 10. A device that never appears: the bounded wait ends with the block
// devices seen.
func TestBootDeviceNeverAppears(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	out := boot(t, bareMetal(f, f.cmdline("dstack.rootfs_device=PARTLABEL=no-such-partition", "dstack.device_timeout=3"),
		qemu.Drive{Path: f.verity, ReadOnly: true}))
	wantRefused(t, out, regexp.QuoteMeta("dstack.rootfs_device: device PARTLABEL=no-such-partition not found after 3s; block devices seen: ")+`.*\bvda\b.*`)
}

// 11. The kernel passes unknown NAME=VALUE words of its command line to PID 1
// as environment and other words as arguments: an LD_PRELOAD naming a disk,
// every former DSTACK_* override and PATH change nothing. /init re-executes
// itself with an empty environment before veritysetup (dynamically linked
// here) runs, and the rootfs's init and dstack-prepare inherit nothing.
func TestBootHostileEnvironment(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	data := blankDisk(t, "data.img", 64<<20)
	decoy := filepath.Join(t.TempDir(), "decoy.img")
	if err := os.WriteFile(decoy, bytes.Repeat([]byte("not an ELF object\n"), 1<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	decoySum := sha(t, decoy)
	out := boot(t, bareMetal(f, f.cmdline("LD_PRELOAD=/dev/vdc", "LD_LIBRARY_PATH=/dev", "PATH=/dev",
		"DSTACK_DEVSPEC=/proc/cmdline", "DSTACK_MODULES=/proc/cmdline", "DSTACK_CMDLINE=/dev/vdc",
		"DSTACK_SYSFS=/nonexistent", "DSTACK_DEV=/nonexistent", "DSTACK_UTIL=/bin/false", "DSTACK_RUN=/nonexistent",
		"DSTACK_DEVICE_TIMEOUT=08", "NEWROOT=/dev", "R=/dev", "/dev/vdc"),
		qemu.Drive{Path: f.verity, ReadOnly: true},
		qemu.Drive{Path: data},
		qemu.Drive{Path: decoy, ReadOnly: true}))
	if got := wantBooted(t, f, out); got != "/dev/vdb1" {
		t.Errorf("data disk %s, want /dev/vdb1", got)
	}
	for _, s := range []string{"ld.so", "LD_PRELOAD", "ERROR:", "[init] boot refused"} {
		if strings.Contains(out, s) {
			t.Errorf("console shows %q", s)
		}
	}
	if !strings.Contains(out, "[demo] dstack-util stand-in called: setup --work-dir /var/volatile/dstack --device /dev/vdb1 --mount-point /var/volatile/dstack/persistent") {
		t.Errorf("dstack-prepare did not hand /dev/vdb1 to dstack-util setup")
	}
	if sha(t, decoy) != decoySum {
		t.Errorf("the decoy disk changed")
	}
}

// luksDisk makes a whole-disk LUKS2 volume as upstream dstack 0.5.x's
// dstack-util setup leaves /dev/vdb: cryptsetup luksFormat on the whole
// disk, payload at 16 MiB, no partition table.
func luksDisk(t *testing.T, size int64) string {
	t.Helper()
	testutil.Need(t, "cryptsetup")
	img := blankDisk(t, "luks.img", size)
	key := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(key, []byte("0123456789abcdef"), 0o600); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--offset", "32768",
		"--cipher", "aes-xts-plain64", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--key-file", key, img)
	return img
}

// 12. Upgrade in place: the data disk an upstream 0.5.x image left (LUKS2 on
// the whole /dev/vdb) is handed to dstack-util setup as /dev/vdb, unchanged.
func TestBootUpgradeInPlaceLUKS(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	data := luksDisk(t, 64<<20)
	dataSum := sha(t, data)
	out := boot(t, bareMetal(f, f.cmdline(), qemu.Drive{Path: f.verity, ReadOnly: true}, qemu.Drive{Path: data}))
	if got := wantBooted(t, f, out); got != "/dev/vdb" {
		t.Errorf("data disk %s, want /dev/vdb", got)
	}
	if !strings.Contains(out, "dstack-prepare: data disk: /dev/vdb (default /dev/vdb (no PARTLABEL=dstack-data partition), LUKS, used as it is)") {
		t.Errorf("dstack-prepare did not report the whole-disk LUKS volume")
	}
	if !strings.Contains(out, "[demo] dstack-util stand-in called: setup --work-dir /var/volatile/dstack --device /dev/vdb --mount-point /var/volatile/dstack/persistent") {
		t.Errorf("dstack-prepare did not hand /dev/vdb to dstack-util setup")
	}
	if sha(t, data) != dataSum {
		t.Errorf("the LUKS data disk was modified")
	}
	testutil.Run(t, "cryptsetup", "isLuks", data)
}

// 13. A number with a leading zero (shell arithmetic would read it as octal,
// and "08" would abort the shell): refused with an [init] line.
func TestBootDeviceTimeoutLeadingZeroRefused(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	out := boot(t, bareMetal(f, f.cmdline("dstack.device_timeout=08"), qemu.Drive{Path: f.verity, ReadOnly: true}))
	wantRefused(t, out, regexp.QuoteMeta("dstack.device_timeout='08' is malformed: seconds expected (0-9999, decimal, no leading zero)"))
}

// 14. dstack.data_dev naming another partition of the disk that holds the
// rootfs: dstack-prepare refuses it (the kernel's own sysfs layout: the
// verity device's slave, the partition's parent), writes nothing, and the
// agent is not called.
func TestBootDataDevOnRootDiskRefused(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	const guid = "7A1B2C3D-4E5F-4A6B-8C7D-9E0F1A2B3C4D"
	img := partitionedDisk(t, f, guid, "dstack-rootfs")
	imgSum := sha(t, img)
	spare := blankDisk(t, "spare.img", 32<<20)
	out := boot(t, bareMetal(f, f.cmdline("dstack.rootfs_device=PARTLABEL=dstack-rootfs", "dstack.data_dev=PARTLABEL=decoy"),
		qemu.Drive{Path: spare},
		qemu.Drive{Path: img, Interface: qemu.NVMe}))
	if got := wantBooted(t, f, out); got != "(none)" {
		t.Errorf("data disk %s, want none", got)
	}
	if !strings.Contains(out, "dstack-prepare: error: /dev/nvme0n1p1 (dstack.data_dev=PARTLABEL=decoy) is on nvme0n1, the disk that holds the rootfs; refusing it as the data disk") {
		t.Errorf("dstack-prepare did not refuse the rootfs disk's partition")
	}
	if strings.Contains(out, "dstack-util stand-in called") {
		t.Errorf("dstack-util setup was called")
	}
	if sha(t, img) != imgSum {
		t.Errorf("the rootfs disk was modified")
	}
}

func runCmd(name string, args ...string) (string, error) {
	var b bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}
