package dist

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/disk"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/gcptar"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/sqfs"
)

// tdxOVMF is Debian's OVMF.fd (package ovmf), which carries TDX metadata
// (OVMF_CODE_4M.fd does not).
const tdxOVMF = "/usr/share/ovmf/OVMF.fd"

const testEpoch = 1700000000

func baseOptions(in testutil.DistInputs, out string) Options {
	return Options{
		Kernel: in.Kernel, Initrd: in.Initrd, Rootfs: in.Rootfs, Stub: in.Stub, OVMF: in.OVMF,
		DistName: "dstack", Version: "0.5.0", Flavor: "dev", GitRevision: "0123abc",
		OutDir: out, GCPCmdlineExtra: []string{"dstack.data_dev=/dev/nvme0n2"},
	}
}

// tree lists every regular file under dir (relative paths) with its bytes' sha256.
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			m[rel+"/"] = "dir"
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		m[rel] = fmt.Sprintf("%x", sha256.Sum256(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDist runs the chain twice and checks the outputs with the independent
// tools: byte-identical runs, sha256sum -c, digest, veritysetup verify with the
// metadata's command line, objcopy's view of the UKI's .cmdline, GNU tar's view
// of both tarballs (extracted files equal the directory's), sgdisk on disk.raw.
func TestDist(t *testing.T) {
	testutil.Need(t, "mksquashfs", "veritysetup", "objcopy", "tar", "sha256sum", "sgdisk", "gzip")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 3<<20, 1)
	// A firmware with TDX metadata, so that measurement.tdx.cbor is written
	// (TestDistNoGCPAndRerun covers one without).
	testutil.NeedFile(t, tdxOVMF, "ovmf")
	in.OVMF = tdxOVMF
	t.Setenv("SOURCE_DATE_EPOCH", fmt.Sprint(testEpoch)) // after mksquashfs, which refuses it beside -mkfs-time
	var results [2]*Result
	var outs [2]string
	var log bytes.Buffer
	// The first run has every speed-up; the second none (BenchmarkDistAB's
	// variants): plain hashing, no two-lane SHA-256, no early writeback.
	// Both must give the same bytes and holes.
	defer func() {
		for _, v := range abVariants {
			v.set(false)
		}
	}()
	for i := range 2 {
		outs[i] = filepath.Join(dir, fmt.Sprintf("out%d", i), "images") // created by Run
		o := baseOptions(in, outs[i])
		o.Log = &log
		for _, v := range abVariants {
			v.set(i == 1)
		}
		res, err := Run(o)
		if err != nil {
			t.Fatal(err)
		}
		results[i] = res
	}
	a, b := tree(t, outs[0]), tree(t, outs[1])
	if fmt.Sprint(a) != fmt.Sprint(b) {
		t.Fatalf("two runs differ:\n%v\n%v", a, b)
	}
	var maps [2]string
	for i := range 2 {
		f, err := os.Open(filepath.Join(outs[i], "dstack-0.5.0", GCPDir, DiskName))
		if err != nil {
			t.Fatal(err)
		}
		regions, size, err := gcptar.SparseMap(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		maps[i] = fmt.Sprint(regions, size)
	}
	if maps[0] != maps[1] {
		t.Errorf("disk.raw's data regions differ with and without the speed-ups: %s, %s", maps[0], maps[1])
	}
	want := []string{
		"dstack-0.5.0/", "dstack-0.5.0.tar.gz", "dstack-0.5.0-gcp.tar.gz",
		"dstack-0.5.0/bzImage", "dstack-0.5.0/initramfs.cpio.gz", "dstack-0.5.0/ovmf.fd",
		"dstack-0.5.0/rootfs.img.verity", "dstack-0.5.0/dstack-uki.efi", "dstack-0.5.0/dstack-uki.efi.auth_hash.txt",
		"dstack-0.5.0/metadata.json", "dstack-0.5.0/sha256sum.txt", "dstack-0.5.0/digest.txt",
		"dstack-0.5.0/measurement.tdx.cbor", "dstack-0.5.0/measurement.gcp.cbor", "dstack-0.5.0/measurements.json",
		"dstack-0.5.0/gcp/", "dstack-0.5.0/gcp/disk.raw", "./",
	}
	for _, w := range want {
		if _, ok := a[w]; !ok {
			t.Errorf("output %s missing", w)
		}
	}
	if len(a) != len(want) {
		t.Errorf("outputs: %v, want exactly %v", a, want)
	}
	if results[0].NoTDX != "" {
		t.Errorf("NoTDX %q with a TDX firmware", results[0].NoTDX)
	}
	for _, stage := range []string{"verity", "uki", "disk", "gcp", "tarball"} {
		if !regexp.MustCompile(`(?m)^imgpost dist: ` + stage + ` .* in [0-9.]+ s \(`).MatchString(log.String()) {
			t.Errorf("no log line for stage %s:\n%s", stage, log.String())
		}
	}
	res := results[0]
	d := filepath.Join(outs[0], "dstack-0.5.0")

	// The summary's hashes are the files' (sha256sum(1)), with the
	// speed-ups and without.
	for i, r := range results {
		if len(r.Artifacts) != 15 {
			t.Errorf("run %d: %d artifacts in the summary, want 15", i, len(r.Artifacts))
		}
		for _, art := range r.Artifacts {
			o := testutil.Run(t, "sha256sum", art.Path)
			if !strings.HasPrefix(o, art.SHA256+" ") {
				t.Errorf("run %d: summary says %s %s; sha256sum: %s", i, art.SHA256, art.Path, o)
			}
		}
	}
	// sha256sum.txt verifies with GNU sha256sum, lists upstream's files, and digest.txt is its hash.
	cmd := exec.Command("sha256sum", "-c", "--strict", SumName)
	cmd.Dir = d
	if o, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c: %v\n%s", err, o)
	}
	sumText, _ := os.ReadFile(filepath.Join(d, SumName))
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(sumText)), "\n") {
		names = append(names, strings.Fields(l)[1])
	}
	if got := strings.Join(names, " "); got != "ovmf.fd bzImage initramfs.cpio.gz metadata.json measurement.tdx.cbor measurement.gcp.cbor measurements.json" {
		t.Errorf("sha256sum.txt lists %q", got)
	}
	o := testutil.Run(t, "sha256sum", filepath.Join(d, SumName))
	dg, _ := os.ReadFile(filepath.Join(d, DigestName))
	if string(dg) != strings.Fields(o)[0]+"\n" {
		t.Errorf("digest.txt %q, sha256sum says %s", dg, o)
	}
	// metadata.json: keys in upstream's order, values as expected.
	mj, _ := os.ReadFile(filepath.Join(d, MetadataName))
	var keys []string
	for _, m := range regexp.MustCompile(`(?m)^    "([a-z_]+)":`).FindAllStringSubmatch(string(mj), -1) {
		keys = append(keys, m[1])
	}
	if got := strings.Join(keys, " "); got != "bios kernel cmdline initrd rootfs version git_revision shared_ro is_dev ovmf_variant" {
		t.Errorf("metadata.json keys: %s", got)
	}
	var md map[string]any
	if err := json.Unmarshal(mj, &md); err != nil {
		t.Fatal(err)
	}
	wantCmd := DefaultCmdlineBase + " coherent_pool=8M dstack.rootfs_hash=" + res.Verity.RootHashHex() +
		fmt.Sprintf(" dstack.rootfs_size=%d", res.Verity.DataSize())
	if md["bios"] != "ovmf.fd" || md["kernel"] != "bzImage" || md["initrd"] != "initramfs.cpio.gz" || md["rootfs"] != "rootfs.img.verity" ||
		md["version"] != "0.5.0" || md["git_revision"] != "0123abc" || md["shared_ro"] != true || md["is_dev"] != true || md["cmdline"] != wantCmd ||
		md["ovmf_variant"] != "pre202505" {
		t.Errorf("metadata.json:\n%s", mj)
	}
	// The measurement files are what measure computes from the set, and
	// their material is the set's: measurement.gcp.cbor holds the UKI's
	// Authenticode SHA-256 (auth_hash.txt), measurement.tdx.cbor the
	// initrd's SHA-384 (sha384sum).
	if err := measure.Check(d); err != nil {
		t.Error(err)
	}
	gb, _ := os.ReadFile(filepath.Join(d, measure.GCPFileName))
	ah, _ := os.ReadFile(filepath.Join(d, AuthHashName))
	if g, err := measure.DecodeGCPMaterial(gb); err != nil || fmt.Sprintf("%x\n", g) != string(ah) {
		t.Errorf("measurement.gcp.cbor %x (%v), auth_hash.txt %s", g, err, ah)
	}
	tb, _ := os.ReadFile(filepath.Join(d, measure.TDXFileName))
	is := testutil.Run(t, "sha384sum", filepath.Join(d, InitrdName))
	if m, err := measure.DecodeTDXMaterial(tb); err != nil || fmt.Sprintf("%x", m.InitrdSHA384) != strings.Fields(is)[0] {
		t.Errorf("measurement.tdx.cbor initrd %x (%v), sha384sum %s", m.InitrdSHA384, err, is)
	}
	// veritysetup accepts the rootfs with the command line's hash and size.
	rootfs := filepath.Join(d, RootfsName)
	testutil.Run(t, "veritysetup", "verify", rootfs, rootfs, res.Verity.RootHashHex(), fmt.Sprintf("--hash-offset=%d", res.Verity.DataSize()))
	// objcopy reads back the UKI's command line.
	cl := filepath.Join(dir, "cmdline.bin")
	testutil.Run(t, "objcopy", "-O", "binary", "--only-section=.cmdline", filepath.Join(d, UKIName), cl)
	got, _ := os.ReadFile(cl)
	wantUKI := wantCmd + " dstack.rootfs_device=PARTLABEL=dstack-rootfs dstack.data_dev=/dev/nvme0n2"
	if strings.TrimRight(string(got), "\x00") != wantUKI || res.UKICmdline != wantUKI {
		t.Errorf("UKI .cmdline %q, want %q", got, wantUKI)
	}
	// GNU tar: the bare-metal tarball is sorted, root-owned, dated SOURCE_DATE_EPOCH, and extracts to the same files.
	tgz := filepath.Join(outs[0], "dstack-0.5.0.tar.gz")
	list := testutil.Run(t, "tar", "--numeric-owner", "--full-time", "--utc", "-tvzf", tgz)
	stamp := time.Unix(testEpoch, 0).UTC().Format("2006-01-02 15:04:05")
	var members []string
	for _, l := range strings.Split(strings.TrimSpace(list), "\n") {
		f := strings.Fields(l)
		if f[1] != "0/0" || f[3]+" "+f[4] != stamp {
			t.Errorf("tar member not 0/0 at %s: %s", stamp, l)
		}
		members = append(members, f[5])
	}
	if got := strings.Join(members, " "); got != "dstack-0.5.0/ dstack-0.5.0/bzImage dstack-0.5.0/digest.txt dstack-0.5.0/dstack-uki.efi dstack-0.5.0/dstack-uki.efi.auth_hash.txt dstack-0.5.0/initramfs.cpio.gz dstack-0.5.0/measurement.gcp.cbor dstack-0.5.0/measurement.tdx.cbor dstack-0.5.0/measurements.json dstack-0.5.0/metadata.json dstack-0.5.0/ovmf.fd dstack-0.5.0/rootfs.img.verity dstack-0.5.0/sha256sum.txt" {
		t.Errorf("tarball members: %s", got)
	}
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	testutil.Run(t, "tar", "-xzf", tgz, "-C", x)
	for _, m := range members[1:] {
		e, _ := os.ReadFile(filepath.Join(x, m))
		f, _ := os.ReadFile(filepath.Join(outs[0], m))
		if !bytes.Equal(e, f) {
			t.Errorf("tarball member %s differs from the file", m)
		}
	}
	if hdr, _ := os.ReadFile(tgz); hdr[3] != 0 || !bytes.Equal(hdr[4:8], []byte{0, 0, 0, 0}) {
		t.Errorf("gzip header has flags %#x mtime % x; want no name, no time", hdr[3], hdr[4:8])
	}
	// The rootfs member's compressed bytes are the GCP archive's compressed
	// rootfs partition, spliced in; gzip -dc gives the same tar stream as
	// compressing everything afresh.
	checkTarballReuse(t, d, tgz, filepath.Join(outs[0], "dstack-0.5.0-gcp.tar.gz"), members[1:])
	// The GCP tarball holds one sparse disk.raw.
	glist := testutil.Run(t, "tar", "-tvzf", filepath.Join(outs[0], "dstack-0.5.0-gcp.tar.gz"))
	if f := strings.Fields(glist); len(strings.Split(strings.TrimSpace(glist), "\n")) != 1 || f[len(f)-1] != "disk.raw" {
		t.Errorf("GCP tarball lists:\n%s", glist)
	}
	// sgdisk finds the rootfs partition by name and no problem.
	diskRaw := filepath.Join(d, GCPDir, DiskName)
	if o := testutil.Run(t, "sgdisk", "-v", diskRaw); !strings.Contains(o, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", o)
	}
	if o := testutil.Run(t, "sgdisk", "-i", "2", diskRaw); !strings.Contains(o, "'dstack-rootfs'") {
		t.Errorf("sgdisk -i 2:\n%s", o)
	}
	// No staging directory left behind.
	ents, _ := os.ReadDir(outs[0])
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("leftover %s", e.Name())
		}
	}
}

// TestDistNoGCPAndRerun checks that NoGCP produces no GCP files (and removes
// a previous run's GCP tarball), and that a rerun replaces the previous set.
func TestDistNoGCPAndRerun(t *testing.T) {
	testutil.Need(t, "mksquashfs")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 1<<20, 2)
	out := filepath.Join(dir, "images")
	o := baseOptions(in, out)
	// Debian's OVMF_CODE_4M.fd has no TDX metadata: no measurement.tdx.cbor,
	// and the result says why; then no firmware at all.
	var res *Result
	for i, want := range []string{testutil.DebianOVMF + ": firmware:", NoFirmware} {
		if i == 1 {
			o.NoGCP = true
			o.OVMF = ""
		}
		var err error
		res, err = Run(o)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(res.NoTDX, want) || !strings.Contains(res.NoTDX, "firmware") {
			t.Errorf("run %d: NoTDX %q, want it to start with %q", i, res.NoTDX, want)
		}
		sums, _ := os.ReadFile(filepath.Join(out, "dstack-0.5.0", SumName))
		if strings.Contains(string(sums), measure.TDXFileName) || !strings.Contains(string(sums), measure.GCPFileName) {
			t.Errorf("run %d: sha256sum.txt:\n%s", i, sums)
		}
		if _, err := os.Stat(filepath.Join(out, "dstack-0.5.0", measure.TDXFileName)); err == nil {
			t.Errorf("run %d: %s written", i, measure.TDXFileName)
		}
	}
	for _, p := range []string{"dstack-0.5.0-gcp.tar.gz", "dstack-0.5.0/gcp", "dstack-0.5.0/ovmf.fd"} {
		if _, err := os.Stat(filepath.Join(out, p)); err == nil {
			t.Errorf("%s exists after a --no-gcp run without --ovmf", p)
		}
	}
	for _, a := range res.Artifacts {
		if strings.Contains(a.Path, "gcp") && filepath.Base(a.Path) != measure.GCPFileName {
			t.Errorf("summary lists %s", a.Path)
		}
	}
	mj, _ := os.ReadFile(filepath.Join(out, "dstack-0.5.0", MetadataName))
	if !strings.Contains(string(mj), `"bios": "",`) {
		t.Errorf("metadata.json without --ovmf:\n%s", mj)
	}
	if _, err := os.Stat(filepath.Join(out, "dstack-0.5.0.tar.gz")); err != nil {
		t.Error(err)
	}
}

// TestDistBadInputs: each bad input gets its error and leaves nothing in the
// output directory.
func TestDistBadInputs(t *testing.T) {
	testutil.Need(t, "mksquashfs")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 100000, 3)
	notSq := filepath.Join(dir, "not.squashfs")
	os.WriteFile(notSq, bytes.Repeat([]byte("text "), 2000), 0o644)
	notPE := filepath.Join(dir, "stub.txt")
	os.WriteFile(notPE, bytes.Repeat([]byte("MZ not really a PE "), 200), 0o644)
	kb, _ := os.ReadFile(in.Kernel)
	truncK := filepath.Join(dir, "truncated-bzImage")
	os.WriteFile(truncK, kb[:len(kb)/2], 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	// A directory nobody can create files in: root ignores permission bits, so
	// as root use /sys (read-only to everyone).
	roParent := filepath.Join(dir, "ro")
	os.Mkdir(roParent, 0o555)
	if os.Geteuid() == 0 {
		roParent = "/sys"
	}
	cases := []struct {
		name  string
		mod   func(o *Options)
		field string // the FieldError's Field ("": not a FieldError)
		is    error  // what it wraps (nil: not checked)
		want  string // in the message
	}{
		{"missing-kernel", func(o *Options) { o.Kernel = filepath.Join(dir, "nope") }, "Kernel", fs.ErrNotExist, "nope"},
		{"no-kernel", func(o *Options) { o.Kernel = "" }, "Kernel", ErrRequired, "Kernel is required"},
		{"missing-initrd", func(o *Options) { o.Initrd = filepath.Join(dir, "nope") }, "Initrd", fs.ErrNotExist, "nope"},
		{"missing-ovmf", func(o *Options) { o.OVMF = filepath.Join(dir, "nope") }, "OVMF", fs.ErrNotExist, "nope"},
		{"stub-is-dir", func(o *Options) { o.Stub = dir }, "Stub", ErrNotRegular, dir},
		{"empty-initrd", func(o *Options) { o.Initrd = empty }, "Initrd", ErrEmptyFile, empty},
		{"rootfs-not-squashfs", func(o *Options) { o.Rootfs = notSq }, "Rootfs", sqfs.ErrInvalid, "not a squashfs"},
		{"stub-not-pe", func(o *Options) { o.Stub = notPE }, "Stub", nil, notPE + ": not a PE image"},
		{"kernel-not-pe", func(o *Options) { o.Kernel = notPE }, "Kernel", nil, "not an EFI-stub kernel"},
		{"kernel-truncated", func(o *Options) { o.Kernel = truncK }, "Kernel", nil, "truncated-bzImage: PE section"},
		{"bad-flavor", func(o *Options) { o.Flavor = "staging" }, "Flavor", nil, `"staging": want prod or dev`},
		{"bad-name", func(o *Options) { o.DistName = "a/b" }, "DistName", nil, `"a/b"`},
		{"bad-version", func(o *Options) { o.Version = "" }, "Version", nil, "no slash, not empty"},
		{"bad-extra", func(o *Options) { o.GCPCmdlineExtra = []string{"a b"} }, "GCPCmdlineExtra", nil, `"a b"`},
		{"base-has-rootfs-hash", func(o *Options) { o.CmdlineBase = "console=ttyS0 dstack.rootfs_hash=00" }, "CmdlineBase", ErrReservedArg, "adds dstack.rootfs_hash itself"},
		{"extra-has-device", func(o *Options) { o.GCPCmdlineExtra = []string{"dstack.rootfs_device=/dev/sda"} }, "GCPCmdlineExtra", ErrReservedArg, "adds dstack.rootfs_device itself"},
		{"out-dir-is-file", func(o *Options) { o.OutDir = in.Initrd }, "OutDir", syscall.ENOTDIR, in.Initrd},
		{"out-dir-unwritable", func(o *Options) { o.OutDir = roParent }, "OutDir", nil, roParent},
		{"out-dir-under-unwritable", func(o *Options) { o.OutDir = filepath.Join(roParent, "images") }, "OutDir", nil, roParent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, "out-"+tc.name)
			o := baseOptions(in, out)
			tc.mod(&o)
			_, err := Run(o)
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("err = %v, want a FieldError for %s", err, tc.field)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want one wrapping %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), tc.field) {
				t.Errorf("err = %v, want one starting with %s and mentioning %q", err, tc.field, tc.want)
			}
			fe.Label = "--x"
			if !strings.HasPrefix(err.Error(), "--x") {
				t.Errorf("Label not used: %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			if o.OutDir != out {
				out = o.OutDir
			}
			if ents, _ := os.ReadDir(out); len(ents) != 0 && out != "/sys" {
				t.Errorf("output directory not empty: %v", ents)
			}
			if m, _ := filepath.Glob(filepath.Join(out, "*dstack-0.5.0*")); len(m) != 0 {
				t.Errorf("left behind: %v", m)
			}
		})
	}
}

// TestDistStageFailureLeavesNothing makes a late stage fail (the disk: an ESP
// too small for the UKI) after verity, UKI and metadata were written, and
// checks nothing that looks finished is left.
func TestDistStageFailureLeavesNothing(t *testing.T) {
	testutil.Need(t, "mksquashfs")
	dir := t.TempDir()
	in := testutil.MakeDistInputs(t, dir, 100000, 4)
	out := filepath.Join(dir, "images")
	o := baseOptions(in, out)
	o.ESPSize = 1 << 20 // far too small for a FAT32 ESP
	_, err := Run(o)
	if err == nil || !strings.Contains(err.Error(), "stage disk") {
		t.Fatalf("err = %v, want a disk stage failure", err)
	}
	if ents, _ := os.ReadDir(out); len(ents) != 0 {
		t.Errorf("output directory not empty after a failed stage: %v", ents)
	}
}

func TestRootfsArgs(t *testing.T) {
	h := strings.Repeat("ab", 32)
	cases := []struct {
		cmd  string
		ok   bool
		size int64
	}{
		{"a dstack.rootfs_hash=" + h + " dstack.rootfs_size=4096", true, 4096},
		{"dstack.rootfs_size=4096", false, 0},
		{"dstack.rootfs_hash=" + h, false, 0},
		{"dstack.rootfs_hash=" + h[:62] + " dstack.rootfs_size=4096", false, 0},
		{"dstack.rootfs_hash=" + h + " dstack.rootfs_size=-1", false, 0},
		{"dstack.rootfs_hash=" + h + " dstack.rootfs_size=12x", false, 0},
		{"dstack.rootfs_hash=" + h + " dstack.rootfs_size=1 dstack.rootfs_size=2", false, 0},
	}
	for _, tc := range cases {
		_, size, err := RootfsArgs(tc.cmd)
		if (err == nil) != tc.ok || size != tc.size || (err != nil && !errors.Is(err, ErrMalformed)) {
			t.Errorf("RootfsArgs(%q) = %d, %v", tc.cmd, size, err)
		}
	}
}

// checkTarballReuse recomputes where the GCP archive holds the rootfs
// partition compressed, checks that those bytes appear in the bare-metal
// tarball, that gzip(1) decodes the tarball to the same tar stream
// WriteTarball writes without reuse, and that a reuse whose size or CRC does
// not match the file is refused.
func checkTarballReuse(t *testing.T, dir, tgz, gcpTgz string, members []string) {
	t.Helper()
	dk, err := disk.Open(filepath.Join(dir, GCPDir, DiskName))
	if err != nil {
		t.Fatal(err)
	}
	part, err := dk.Partition(disk.RootfsName)
	dk.Close()
	if err != nil {
		t.Fatal(err)
	}
	df, err := os.Open(filepath.Join(dir, GCPDir, DiskName))
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	st, err := os.Stat(filepath.Join(dir, RootfsName))
	if err != nil {
		t.Fatal(err)
	}
	mtime := time.Unix(testEpoch, 0)
	var g bytes.Buffer
	r, err := gcptar.Write(&g, df, gcptar.Options{MTime: &mtime})
	rseg, ok := r.Segment(gcptar.Region{Offset: part.Offset, Size: st.Size()})
	if err != nil || !ok {
		t.Fatalf("gcptar.Write: %v; no segment for the rootfs among %v", err, r.Segments)
	}
	if gcp, _ := os.ReadFile(gcpTgz); !bytes.Equal(gcp, g.Bytes()) {
		t.Fatalf("GCP archive differs from a fresh gcptar.Write of its disk")
	}
	seg := g.Bytes()[rseg.Offset : rseg.Offset+rseg.Size]
	tb, _ := os.ReadFile(tgz)
	if !bytes.Contains(tb, seg) {
		t.Errorf("the tarball does not contain the GCP archive's compressed rootfs (%d bytes): not reused", len(seg))
	}
	var plain bytes.Buffer
	names := []string{}
	for _, m := range members {
		names = append(names, strings.TrimPrefix(m, filepath.Base(dir)+"/"))
	}
	if _, err := WriteTarball(&plain, dir, filepath.Base(dir), names, mtime, nil); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(testutil.Gunzip(t, tb), testutil.Gunzip(t, plain.Bytes())) {
		t.Errorf("the tarball with the reused rootfs decodes differently from one compressed afresh")
	}
	for _, bad := range []Reuse{
		{Name: RootfsName, Archive: gcpTgz, Segment: gcptar.Segment{Region: rseg.Region, Offset: rseg.Offset, Size: rseg.Size, CRC: rseg.CRC ^ 1}},
		{Name: RootfsName, Archive: gcpTgz, Segment: gcptar.Segment{Region: gcptar.Region{Offset: rseg.Region.Offset, Size: rseg.Region.Size - 4096}, Offset: rseg.Offset, Size: rseg.Size, CRC: rseg.CRC}},
	} {
		if _, err := WriteTarball(io.Discard, dir, filepath.Base(dir), names, mtime, &bad); err == nil || !strings.Contains(err.Error(), RootfsName) {
			t.Errorf("a reuse that does not match the file: err = %v", err)
		}
	}
}
