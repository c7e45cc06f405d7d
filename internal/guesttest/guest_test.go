package guesttest

import (
	"bytes"
	"crypto/aes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
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

// bootTimeout bounds each wait of a boot of the systemd guest under TCG (a
// loaded 2-core machine needs up to 10 minutes to the app's marker).
const bootTimeout = 20 * time.Minute

// Console lines the tests wait for.
const (
	markApp      = "GUESTTEST-APP boot="
	markBash     = "GUESTTEST-BASH "
	markSwitch   = "[init] verified rootfs mounted; switching root"
	markPowerOff = "reboot: Power down"
	markRestart  = "reboot: Restarting system"
)

// testDiskKey is the disk key of testdata/dstack-util-double (its KMS
// stand-in), as the passphrase of the upgrade test's LUKS keyslot.
const testDiskKey = "64737461636b2d677565737474657374000000000000000000000000000000aa"

type fixture struct {
	dir     string
	distDir string
	meta    *dist.Metadata
	image   string // the app's image, docker-save tar, attached as a disk
	err     error
}

var (
	fixOnce sync.Once
	fix     fixture
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fix.dir != "" {
		if err := removeTree(fix.dir); err != nil {
			fmt.Fprintln(os.Stderr, "guesttest:", err)
		}
	}
	os.Exit(code)
}

// skipOrFail skips the test with msg, or fails it under CI (where .ci/run
// installs everything the test needs).
func skipOrFail(t *testing.T, msg string) {
	t.Helper()
	if testutil.InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func need(t *testing.T) demo.Host {
	t.Helper()
	if testing.Short() {
		t.Skip("guest boot test: several minutes of QEMU (TCG); skipped with -short")
	}
	testutil.Need(t, "qemu-system-x86_64", "mksquashfs", "mmdebstrap", "cryptsetup", "mkfs.ext4", "sgdisk", "depmod", "chroot", "tar")
	if os.Geteuid() != 0 {
		skipOrFail(t, "guest boot test: needs root (mmdebstrap and the root tree's file owners)")
	}
	h, miss := demo.FindHost()
	if len(miss) > 0 {
		skipOrFail(t, fmt.Sprintf("host parts missing: %v (install Debian packages %s)", miss, strings.Join(demo.MissingPackages(miss), " ")))
	}
	return h
}

func getFixture(t *testing.T) *fixture {
	t.Helper()
	h := need(t)
	imgpost := testutil.Imgpost(t)
	root := testutil.RepoRoot(t)
	fixOnce.Do(func() { fix.err = buildFixture(t, h, imgpost, root) })
	if fix.err != nil {
		t.Fatalf("guest fixture: %v", fix.err)
	}
	return &fix
}

func cacheDir() string {
	if d := os.Getenv("DSTACK_GUESTTEST_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "dstack-guesttest-cache")
}

func buildFixture(t *testing.T, h demo.Host, imgpost, root string) error {
	dir, err := os.MkdirTemp("", "guesttest-")
	if err != nil {
		return err
	}
	fix.dir = dir
	start := time.Now()
	debTar, err := debianRootfs(cacheDir())
	if err != nil {
		return err
	}
	t.Logf("Debian root %s (%v)", debTar, time.Since(start).Round(time.Second))
	deploy := filepath.Join(dir, "deploy")
	if err := os.MkdirAll(deploy, 0o755); err != nil {
		return err
	}
	rootfs := filepath.Join(deploy, demo.RootfsName)
	key, err := rootfsKey(root, debTar, h.KernelVersion)
	if err != nil {
		return err
	}
	cached := filepath.Join(cacheDir(), "rootfs-"+key+".squashfs")
	if err := copyFile(cached, rootfs, 0o644); err == nil {
		t.Logf("guest root from the cache: %s", cached)
	} else {
		build := filepath.Join(dir, "build")
		if err := buildDoubles(root, build); err != nil {
			return err
		}
		stage := filepath.Join(dir, "stage")
		if err := buildStage(h, root, debTar, stage, build); err != nil {
			return err
		}
		if out, err := exec.Command("mksquashfs", stage, rootfs, "-noappend", "-comp", "zstd", "-Xcompression-level", "3", "-mkfs-time", "0",
			"-all-time", "0", "-no-progress", "-quiet", "-processors", "2").CombinedOutput(); err != nil {
			return fmt.Errorf("mksquashfs: %v\n%s", err, out)
		}
		if err := removeTree(stage); err != nil {
			return err
		}
		if err := copyFile(rootfs, cached+".tmp", 0o644); err == nil {
			os.Rename(cached+".tmp", cached)
		}
	}
	initrd := filepath.Join(deploy, demo.InitrdName)
	f, err := os.Create(initrd)
	if err != nil {
		return err
	}
	if err := demo.BuildInitramfs(h, root, f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	out, err := exec.Command(imgpost, "dist", "--kernel", h.Kernel, "--initrd", initrd, "--rootfs", rootfs,
		"--stub", h.Stub, "--ovmf", h.OVMF, "--dist-name", "dstack-guesttest", "--version", "1",
		"--flavor", "dev", "--out-dir", filepath.Join(dir, "images"), "--no-tarball", "--no-gcp", "--quiet").CombinedOutput()
	if err != nil {
		return fmt.Errorf("imgpost dist: %v\n%s", err, out)
	}
	fix.distDir = filepath.Join(dir, "images", "dstack-guesttest-1")
	b, err := os.ReadFile(filepath.Join(fix.distDir, "metadata.json"))
	if err != nil {
		return err
	}
	if fix.meta, err = dist.ParseMetadata(b); err != nil {
		return err
	}
	fix.image = filepath.Join(dir, "app-image.tar")
	if err := writeImageTar(fix.image, h.Busybox); err != nil {
		return err
	}
	if st, err := os.Stat(filepath.Join(fix.distDir, fix.meta.Rootfs)); err == nil {
		t.Logf("guest fixture ready in %v: rootfs.img.verity %d MiB", time.Since(start).Round(time.Second), st.Size()>>20)
	}
	return nil
}

// composeApp is the docker-compose app: the image comes from the disk
// /dev/vdc (pre_launch_script loads it; no registry), the
// container writes to a named volume (on the data disk through
// /var/lib/docker), prints its marker on the serial console and signals the
// test's poweroff unit.
func composeApp() map[string]any {
	compose := `services:
  app:
    image: ` + appImage + `
    command: ["/bin/sh", "/app.sh"]
    devices:
      - "/dev/ttyS0:/dev/ttyS0"
    volumes:
      - data:/data
      - /run/guesttest:/signal
      - /run/dstack.sock:/var/run/dstack.sock
volumes:
  data: {}
`
	return map[string]any{
		"manifest_version":    2,
		"name":                "guesttest",
		"runner":              "docker-compose",
		"docker_compose_file": compose,
		"kms_enabled":         true,
		"gateway_enabled":     true,
		"public_logs":         true,
		"storage_fs":          "ext4",
		"pre_launch_script":   "docker load -i /dev/vdc",
		"init_script":         `echo "GUESTTEST-INIT in $(pwd), data disk $(findmnt -n -o SOURCE /dstack/persistent)"`,
	}
}

// bashApp is the bash runner's app: it queries both agent sockets, writes to
// the data disk, reads the upstream-layout disk attached as /dev/vdd through
// the guest's dm-crypt (checking the upgrade test's disk maker) and signals
// the poweroff unit.
func bashApp() map[string]any {
	script := `set -e
d=$(curl -sf --unix-socket /run/dstack.sock http://dstack/Info)
t=$(curl -sf --unix-socket /run/tappd.sock http://tappd/Info)
echo "bash runner was here" >/dstack/persistent/bash-runner.txt
sync
printf %s ` + testDiskKey + ` | cryptsetup open --readonly --type luks2 -d- /dev/vdd upstream-check
u=$(sha256sum </dev/mapper/upstream-check | cut -d' ' -f1)
cryptsetup close upstream-check
echo "` + markBash + `pwd=$(pwd) upstream-disk-sha256=$u dstack.sock=$d tappd.sock=$t"
mkdir -p /run/guesttest && touch /run/guesttest/app-done
`
	return map[string]any{
		"manifest_version": 2,
		"name":             "guesttest-bash",
		"runner":           "bash",
		"bash_script":      script,
		"kms_enabled":      true,
		"storage_fs":       "ext4",
	}
}

// hostShared writes a host-shared directory: app-compose.json (unless app is
// nil) and .sys-config.json.
func hostShared(t *testing.T, app map[string]any) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "host-shared")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, v any) {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if app != nil {
		write("app-compose.json", app)
	}
	write(".sys-config.json", map[string]any{"kms_urls": []string{"https://kms.invalid:8000"}, "pccs_url": "", "host_api_url": "vsock://2:10000/api"})
	return dir
}

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

// vmConfig is the bare-metal boot of the fixture (metadata.json's kernel,
// initramfs and command line plus extra words) with the data disk as
// /dev/vdb, the app image as /dev/vdc and shared as the 9p host-shared tag.
// (Drives given a serial would come first: none has one.)
func (f *fixture) vmConfig(t *testing.T, data, shared string, extra ...string) qemu.Config {
	t.Helper()
	cfg, err := demo.BareMetalConfig(f.distDir, data)
	if err != nil {
		t.Fatal(err)
	}
	// apparmor=0: Debian's kernel enables AppArmor, which docker then
	// insists on loading profiles for; the layer's kernel has no AppArmor.
	cfg.Append = strings.Join(append([]string{cfg.Append, "panic=-1", "apparmor=0"}, extra...), " ")
	cfg.Drives = append(cfg.Drives, qemu.Drive{Path: f.image, ReadOnly: true})
	cfg.MemoryMiB = 1536
	cfg.CPUs = 2
	cfg.ExtraArgs = append(cfg.ExtraArgs,
		"-virtfs", "local,path="+qemu.Escape(shared)+",mount_tag=host-shared,security_model=none,readonly=on",
		"-device", "virtio-rng-pci")
	return cfg
}

// timings of one boot: from QEMU's start to switch_root and to the app's marker.
type timings struct {
	switchRoot, marker time.Duration
}

// bootTo boots cfg, waits for the marker regexp, then for QEMU to end by
// itself (the test's poweroff unit), and returns the console and timings.
func bootTo(t *testing.T, name string, cfg qemu.Config, marker *regexp.Regexp) (string, timings) {
	t.Helper()
	var tm timings
	cfg.LogPath = filepath.Join(t.TempDir(), name+"-console.log")
	if d := os.Getenv("DSTACK_GUESTTEST_LOGDIR"); d != "" {
		cfg.LogPath = filepath.Join(d, t.Name()+"-"+name+"-console.log")
	}
	start := time.Now()
	vm, err := qemu.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if _, err := vm.WaitFor(regexp.MustCompile(regexp.QuoteMeta(markSwitch)), bootTimeout); err != nil {
		t.Fatalf("%s: %v\n--- whole console ---\n%s", name, err, vm.Output())
	}
	tm.switchRoot = time.Since(start)
	if _, err := vm.WaitFor(marker, bootTimeout); err != nil {
		t.Fatalf("%s: %v\n--- whole console ---\n%s", name, err, vm.Output())
	}
	tm.marker = time.Since(start)
	if err := vm.Wait(3 * time.Minute); err != nil {
		t.Fatalf("%s: the guest did not power off after the app's marker: %v\n--- console ---\n%s", name, err, tail(vm.Output(), 6000))
	}
	out := vm.Output()
	if testing.Verbose() {
		t.Logf("--- %s console ---\n%s", name, out)
	}
	t.Logf("%s: switch_root after %v, app marker after %v, powered off after %v",
		name, tm.switchRoot.Round(100*time.Millisecond), tm.marker.Round(100*time.Millisecond), time.Since(start).Round(time.Second))
	return out, tm
}

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// wantLines checks the console (systemd's colours removed) has each line.
func wantLines(t *testing.T, name, out string, lines ...string) {
	t.Helper()
	out = ansiEscape.ReplaceAllString(out, "")
	for _, s := range lines {
		if !strings.Contains(out, s) {
			t.Errorf("%s: console lacks %q", name, s)
		}
	}
	if t.Failed() {
		t.Logf("--- %s console ---\n%s", name, tail(out, 20000))
	}
}

func wantNone(t *testing.T, name, out string, lines ...string) {
	t.Helper()
	out = ansiEscape.ReplaceAllString(out, "")
	for _, s := range lines {
		if strings.Contains(out, s) {
			t.Errorf("%s: console shows %q", name, s)
		}
	}
}

// luksAt reads the LUKS2 binary header at byte off of img and returns its
// UUID; it fails the test when there is none.
func luksAt(t *testing.T, img string, off int64) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, 512)
	if _, err := f.ReadAt(hdr, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hdr[:6], []byte("LUKS\xba\xbe")) || hdr[6] != 0 || hdr[7] != 2 {
		t.Fatalf("%s: no LUKS2 header at byte %d", img, off)
	}
	return string(bytes.TrimRight(hdr[168:208], "\x00"))
}

// partitionStart returns the byte offset of partition n of a GPT image (sgdisk).
func partitionStart(t *testing.T, img string, n int) int64 {
	t.Helper()
	info := testutil.Run(t, "sgdisk", "-i", strconv.Itoa(n), img)
	m := regexp.MustCompile(`First sector: (\d+)`).FindStringSubmatch(info)
	if m == nil {
		t.Fatalf("sgdisk -i %d %s: no partition:\n%s", n, img, info)
	}
	first, _ := strconv.ParseInt(m[1], 10, 64)
	return first * 512
}

func sha(t *testing.T, path string, n int64) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, n)); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

var appMarker = regexp.MustCompile(`GUESTTEST-APP boot=(\d+) boots=\[([^\]\r\n]*)\]`)

// 1 and 2. A blank data disk, the docker-compose app: dstack-prepare
// partitions the disk, the double formats LUKS2+ext4, the agent serves, docker
// starts on the data disk, the app's container (image from a local tarball)
// prints its marker. A second boot of the same disk (rootfs verification on
// demand this time) finds the app's volume with the first boot's line.
func TestComposeAppPersists(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	data := blankDisk(t, "data.img", 1<<30)
	shared := hostShared(t, composeApp())

	out1, tm1 := bootTo(t, "boot1", f.vmConfig(t, data, shared, "dstack.rootfs_verify=full"), appMarker)
	wantLines(t, "boot1", out1,
		"dstack-rootfs-rw: /etc: writable overlay (changes kept in RAM)",
		"dstack-rootfs-rw: /var: writable overlay (changes kept in RAM)",
		"dstack-prepare: stepping the clock (chronyc makestep)",
		"dstack-prepare: data disk: /dev/vdb1",
		"dstack-util-double: no LUKS header on /dev/vdb1: formatting",
		"dstack-util-double: data disk /dev/vdb1 mounted on /var/volatile/dstack/persistent (ext4, LUKS2)",
		"dstack-util-double: wrote /etc/wireguard/dstack-wg0.conf",
		"dstack-prepare: data disk /var/volatile/dstack/persistent holds /var/lib/docker and /var/lib/containerd",
		"GUESTTEST-INIT in /dstack, data disk /dev/mapper/dstack_data_disk",
		"dstack-util-double: remove-orphans -f docker-compose.yaml: test double, nothing removed",
		"dstack-guest-agent-double: serving /run/dstack.sock and /run/tappd.sock (config /dstack/agent.json",
		"app-compose: running pre_launch_script",
		"Loaded image: "+appImage,
		"dstack-util-double: notify-host boot.progress: done",
		"GUESTTEST-APP boot=1 boots=[boot 1,]",
		markPowerOff)
	wantNone(t, "boot1", out1, "Kernel panic", markRestart)
	uuid := luksAt(t, data, partitionStart(t, data, 1))
	hdr := sha(t, data, partitionStart(t, data, 1)+16<<20)

	out2, tm2 := bootTo(t, "boot2", f.vmConfig(t, data, shared, "dstack.rootfs_verify=ondemand"), appMarker)
	wantLines(t, "boot2", out2,
		"dstack-util-double: LUKS header on /dev/vdb1: opening",
		"GUESTTEST-APP boot=2 boots=[boot 1,boot 2,]",
		markPowerOff)
	wantNone(t, "boot2", out2, "Kernel panic", markRestart, "formatting", "creating ext4")
	if got := luksAt(t, data, partitionStart(t, data, 1)); got != uuid {
		t.Errorf("LUKS UUID %s after the second boot, was %s", got, uuid)
	}
	if got := sha(t, data, partitionStart(t, data, 1)+16<<20); got != hdr {
		t.Errorf("the partition table or the LUKS header area changed in the second boot")
	}
	t.Logf("power-on to app marker: %v (first boot, formats the disk, rootfs_verify=full), %v (second boot, rootfs_verify=ondemand); switch_root after %v (full) vs %v (ondemand)",
		tm1.marker.Round(100*time.Millisecond), tm2.marker.Round(100*time.Millisecond),
		tm1.switchRoot.Round(100*time.Millisecond), tm2.switchRoot.Round(100*time.Millisecond))
}

// 3. The bash runner: its script reaches both agent sockets and the data disk.
func TestBashRunner(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	data := blankDisk(t, "data.img", 512<<20)
	shared := hostShared(t, bashApp())
	upstream, plain, _ := upstreamDisk(t, 32<<20)
	cfg := f.vmConfig(t, data, shared)
	cfg.Drives = append(cfg.Drives, qemu.Drive{Path: upstream, ReadOnly: true})
	marker := regexp.MustCompile(regexp.QuoteMeta(markBash) + `.*`)
	out, _ := bootTo(t, "bash", cfg, marker)
	m := marker.FindString(out)
	for _, s := range []string{"pwd=/dstack", "upstream-disk-sha256=" + sha(t, plain, 1<<40),
		`dstack.sock={"data_disks":["/","/var/volatile/dstack/persistent"],"double":"dstack-guest-agent-double","path":"/Info","socket":"dstack.sock"}`,
		`tappd.sock={"data_disks":["/","/var/volatile/dstack/persistent"],"double":"dstack-guest-agent-double","path":"/Info","socket":"tappd.sock"}`} {
		if !strings.Contains(m, s) {
			t.Errorf("bash runner's line %q lacks %q", m, s)
		}
	}
	wantLines(t, "bash", out, "app-compose: running bash_script", "dstack-util-double: notify-host boot.progress: done", markPowerOff)
	wantNone(t, "bash", out, "Kernel panic", markRestart, "GUESTTEST-INIT")
}

// 4. A failing preparation (the host shared no app-compose.json: setup
// refuses) reboots the machine (-no-reboot: QEMU exits) and nothing of the
// app starts.
func TestFailingPrepareReboots(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	data := blankDisk(t, "data.img", 512<<20)
	shared := hostShared(t, nil)
	cfg := f.vmConfig(t, data, shared)
	cfg.LogPath = filepath.Join(t.TempDir(), "fail-console.log")
	if d := os.Getenv("DSTACK_GUESTTEST_LOGDIR"); d != "" {
		cfg.LogPath = filepath.Join(d, t.Name()+"-console.log")
	}
	start := time.Now()
	out, err := qemu.Run(cfg, bootTimeout)
	if err != nil {
		t.Fatalf("QEMU did not end by itself: %v\n--- console ---\n%s", err, tail(out, 8000))
	}
	t.Logf("failing prepare: QEMU ended after %v", time.Since(start).Round(time.Second))
	wantLines(t, "fail", out,
		"dstack-util-double: error: Source file app-compose.json does not exist",
		"Reached target reboot.target",
		markRestart)
	wantNone(t, "fail", out, "app-compose:", "GUESTTEST-APP", "dstack-guest-agent-double: serving", markPowerOff)
}

// xtsEncrypt encrypts data in place with AES-XTS (key: 32 bytes data key,
// then 32 bytes tweak key) in 512-byte sectors, the IV of each being its
// sector number (dm-crypt's aes-xts-plain64), starting at sector first.
func xtsEncrypt(key, data []byte, first uint64) error {
	k1, err := aes.NewCipher(key[:32])
	if err != nil {
		return err
	}
	k2, err := aes.NewCipher(key[32:])
	if err != nil {
		return err
	}
	var tweak [16]byte
	for off := 0; off < len(data); off += 512 {
		for i := range tweak {
			tweak[i] = 0
		}
		binary.LittleEndian.PutUint64(tweak[:8], first+uint64(off/512))
		k2.Encrypt(tweak[:], tweak[:])
		for b := off; b < off+512; b += 16 {
			blk := data[b : b+16]
			for i := range blk {
				blk[i] ^= tweak[i]
			}
			k1.Encrypt(blk, blk)
			for i := range blk {
				blk[i] ^= tweak[i]
			}
			// tweak *= x in GF(2^128), little-endian
			carry := tweak[15] >> 7
			for i := 15; i > 0; i-- {
				tweak[i] = tweak[i]<<1 | tweak[i-1]>>7
			}
			tweak[0] <<= 1
			if carry != 0 {
				tweak[0] ^= 0x87
			}
		}
	}
	return nil
}

// upstreamDisk makes a data disk as an upstream dstack 0.5.x image leaves it:
// a whole-disk LUKS2 volume on /dev/vdb (no partition table; payload at
// 16 MiB, aes-xts-plain64, 512-byte sectors, pbkdf2, as dstack-util formats
// it), unlocked by the disk key, holding an ext4 file system with the app's
// docker volume from an earlier boot. The LUKS header is written by
// cryptsetup with a chosen volume key; the file system by mkfs.ext4 -d, then
// encrypted here; the guest's dm-crypt reading it back checks both.
// It returns the image, the plain file system image and the passphrase file.
func upstreamDisk(t *testing.T, size int64) (img, plain, pass string) {
	t.Helper()
	dir := t.TempDir()
	img = filepath.Join(dir, "upstream-0.5.x.img")
	pass = filepath.Join(dir, "passphrase")
	if err := os.WriteFile(pass, []byte(testDiskKey), 0o600); err != nil {
		t.Fatal(err)
	}
	vk := make([]byte, 64)
	for i := range vk {
		vk[i] = byte(i*37 + 11)
	}
	if err := os.WriteFile(filepath.Join(dir, "volume-key"), vk, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	testutil.Run(t, "cryptsetup", "luksFormat", "-q", "--type", "luks2", "--offset", "32768", "--sector-size", "512",
		"--cipher", "aes-xts-plain64", "--key-size", "512", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--volume-key-file", filepath.Join(dir, "volume-key"), "-d", pass, img)
	src := filepath.Join(dir, "fs")
	vol := filepath.Join(src, "var/lib/docker/volumes/dstack_data/_data")
	if err := os.MkdirAll(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(src, "var/lib/containerd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(vol, "boots"), []byte("boot 1 (dstack 0.5.x)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	plain = filepath.Join(dir, "fs.img")
	testutil.Run(t, "mkfs.ext4", "-q", "-F", "-d", src, plain, strconv.FormatInt((size-16<<20)/1024, 10)+"k")
	data, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	if err := xtsEncrypt(vk, data, 0); err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := out.WriteAt(data, 16<<20); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return img, plain, pass
}

// 5. Upgrade in place: a data disk laid out as upstream dstack 0.5.x leaves
// it (whole-disk LUKS2 on /dev/vdb, no partition table) is used as it is:
// the app finds its volume with the earlier boot's line, and the first
// 16 MiB (LUKS header and keyslots; where a partition table would go) are
// unchanged.
func TestUpstreamDiskUnchanged(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	data, _, _ := upstreamDisk(t, 256<<20)
	uuid := luksAt(t, data, 0)
	head := sha(t, data, 16<<20)
	shared := hostShared(t, composeApp())
	cfg := f.vmConfig(t, data, shared, "dstack.rootfs_verify=ondemand")
	cfg.LogPath = filepath.Join(t.TempDir(), "upstream-console.log")
	if d := os.Getenv("DSTACK_GUESTTEST_LOGDIR"); d != "" {
		cfg.LogPath = filepath.Join(d, t.Name()+"-console.log")
	}
	vm, err := qemu.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	refused := "has no partition table but is not blank; not touching it"
	m, err := vm.WaitFor(regexp.MustCompile(appMarker.String()+`|`+regexp.QuoteMeta(refused)), bootTimeout)
	if err != nil {
		t.Fatalf("%v\n--- whole console ---\n%s", err, vm.Output())
	}
	if err := vm.Wait(3 * time.Minute); err != nil {
		t.Fatalf("QEMU did not end: %v", err)
	}
	out := vm.Output()
	if got := sha(t, data, 16<<20); got != head {
		t.Errorf("the first 16 MiB of the upstream disk (LUKS header, keyslots) changed")
	}
	if got := luksAt(t, data, 0); got != uuid {
		t.Errorf("LUKS UUID %s, was %s", got, uuid)
	}
	if strings.Contains(m[0], refused) {
		t.Fatalf("dstack-prepare refused the whole-disk LUKS volume of an upstream 0.5.x disk (upgrade in place): %s",
			regexp.MustCompile(`dstack-prepare: error: [^\r\n]*`).FindString(out))
	}
	wantLines(t, "upstream", out,
		"dstack-util-double: LUKS header on /dev/vdb: opening",
		"GUESTTEST-APP boot=2 boots=[boot 1 (dstack 0.5.x),boot 2,]",
		markPowerOff)
	wantNone(t, "upstream", out, "formatting", "creating ext4", "Creating a GPT", markRestart)
}
