package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

const debianStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// runImgpost runs the built binary and returns stdout+stderr and the exit code.
func runIP(t *testing.T, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(testutil.Imgpost(t), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		}
		t.Fatal(err)
	}
	return string(out), 0
}

func sha256File(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestDiskGCPInspectCLI runs disk → inspect → gcp → GNU tar extraction.
func TestDiskGCPInspectCLI(t *testing.T) {
	testutil.NeedFile(t, debianStub, "systemd-boot-efi")
	testutil.Need(t, "sgdisk", "tar", "cmp")
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs.img.verity")
	testutil.WriteRandom(t, rootfs, 5<<20+7, 11)
	img := filepath.Join(dir, "disk.raw")
	out, code := runIP(t, "disk", "--uki", debianStub, "--rootfs", rootfs, "--out", img, "--esp-size", "64MiB")
	if code != 0 {
		t.Fatalf("imgpost disk: exit %d\n%s", code, out)
	}
	if o := testutil.Run(t, "sgdisk", "-v", img); !strings.Contains(o, "No problems found") {
		t.Fatalf("sgdisk -v:\n%s", o)
	}

	// inspect: text and JSON agree with sgdisk's view and the UKI's hash.
	out, code = runIP(t, "inspect", img)
	if code != 0 {
		t.Fatalf("inspect: exit %d\n%s", code, out)
	}
	for _, want := range []string{"D5ACC000-0000-4000-8000-000000000000", "dstack-rootfs", "EFI System Partition",
		"D5ACC000-0000-4000-8000-000000000002", sha256File(t, debianStub), "GPT: primary and backup headers valid", ".sdmagic"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	out, code = runIP(t, "inspect", "--json", img)
	if code != 0 {
		t.Fatalf("inspect --json: exit %d\n%s", code, out)
	}
	var rep struct {
		DiskGUID   string `json:"disk_guid"`
		GPTValid   bool   `json:"gpt_valid"`
		Partitions []struct {
			Name     string `json:"name"`
			FirstLBA uint64 `json:"first_lba"`
		} `json:"partitions"`
		UKI struct {
			SHA256 string `json:"sha256"`
		} `json:"uki"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("inspect --json: %v\n%s", err, out)
	}
	sg := testutil.Run(t, "sgdisk", "-i", "2", img)
	if !rep.GPTValid || len(rep.Partitions) != 2 || rep.Partitions[1].Name != "dstack-rootfs" ||
		!strings.Contains(sg, "First sector: 133120 ") || rep.Partitions[1].FirstLBA != 133120 || rep.UKI.SHA256 != sha256File(t, debianStub) {
		t.Errorf("inspect --json: %+v\nsgdisk -i 2:\n%s", rep, sg)
	}

	// gcp, then GNU tar gives back the same disk.
	tgz := filepath.Join(dir, "dstack-gcp.tar.gz")
	out, code = runIP(t, "gcp", "--disk", img, "--out", tgz)
	if code != 0 {
		t.Fatalf("imgpost gcp: exit %d\n%s", code, out)
	}
	x := filepath.Join(dir, "x")
	os.Mkdir(x, 0o755)
	testutil.Run(t, "tar", "-xSzf", tgz, "-C", x)
	testutil.Run(t, "cmp", img, filepath.Join(x, "disk.raw"))
}

func TestDiskGCPCLIErrors(t *testing.T) {
	testutil.NeedFile(t, debianStub, "systemd-boot-efi")
	dir := t.TempDir()
	rootfs := filepath.Join(dir, "rootfs")
	testutil.WriteRandom(t, rootfs, 1<<20, 1)
	text := filepath.Join(dir, "text.efi")
	os.WriteFile(text, []byte("hello, not a PE\n"), 0o644)
	big := filepath.Join(dir, "big.efi")
	stub, _ := os.ReadFile(debianStub)
	os.WriteFile(big, stub, 0o644)
	os.Truncate(big, 60<<20)
	outDir := filepath.Join(dir, "out")
	os.Mkdir(outDir, 0o755)
	out := filepath.Join(outDir, "disk.raw")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no args", []string{"disk"}, 2, "required"},
		{"bad esp size", []string{"disk", "--uki", debianStub, "--rootfs", rootfs, "--out", out, "--esp-size", "lots"}, 2, "--esp-size"},
		{"extra arg", []string{"disk", "--uki", debianStub, "--rootfs", rootfs, "--out", out, "x"}, 2, "unexpected"},
		{"missing uki", []string{"disk", "--uki", filepath.Join(dir, "nope"), "--rootfs", rootfs, "--out", out}, 1, "nope"},
		{"not PE", []string{"disk", "--uki", text, "--rootfs", rootfs, "--out", out}, 1, "text.efi: not a PE image"},
		{"uki too big", []string{"disk", "--uki", big, "--rootfs", rootfs, "--out", out, "--esp-size", "64MiB"}, 1, "does not fit in an ESP of 64 MiB (use a larger --esp-size)"},
		{"bad guid", []string{"disk", "--uki", debianStub, "--rootfs", rootfs, "--out", out, "--disk-guid", "1234"}, 1, "not a GUID"},
		{"unwritable dir", []string{"disk", "--uki", debianStub, "--rootfs", rootfs, "--out", filepath.Join(dir, "no", "disk.raw")}, 1, "output directory"},
		{"gcp no args", []string{"gcp"}, 2, "required"},
		{"gcp bad level", []string{"gcp", "--disk", rootfs, "--out", out, "--level", "11"}, 2, "--level"},
		{"gcp missing disk", []string{"gcp", "--disk", filepath.Join(dir, "nope.raw"), "--out", out}, 1, "nope.raw"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, code := runIP(t, tc.args...)
			if code != tc.code || !strings.Contains(o, tc.want) {
				t.Errorf("exit %d, want %d; output should contain %q:\n%s", code, tc.code, tc.want, o)
			}
			if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
				t.Errorf("left %s behind", ents[0].Name())
			}
		})
	}
}
