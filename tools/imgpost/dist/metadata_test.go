package dist

import (
	"errors"
	"strings"
	"testing"
)

const goodMetadata = `{
    "bios": "ovmf.fd",
    "kernel": "bzImage",
    "cmdline": "console=ttyS0 dstack.rootfs_hash=` + "aa" + `",
    "initrd": "initramfs.cpio.gz",
    "rootfs": "rootfs.img.verity",
    "version": "1.0",
    "git_revision": "",
    "shared_ro": true,
    "is_dev": false,
    "ovmf_variant": "pre202505"
}
`

// TestParseMetadataStrict: what dist writes parses; what another JSON
// reader could read differently is refused (issue 14).
func TestParseMetadataStrict(t *testing.T) {
	m := &Metadata{BIOS: OVMFName, Kernel: KernelName, Cmdline: "a b", Initrd: InitrdName, Rootfs: RootfsName, Version: "1", SharedRO: true, OVMFVariant: OVMFVariant}
	got, err := ParseMetadata(m.JSON())
	if err != nil || *got != *m {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if _, err := ParseMetadata([]byte(goodMetadata)); err != nil {
		t.Fatal(err)
	}
	rep := func(old, new string) string { return strings.Replace(goodMetadata, old, new, 1) }
	cases := []struct{ name, text, want string }{
		{"keys differing in case", rep(`"kernel": "bzImage",`, `"kernel": "evil", "Kernel": "bzImage",`), `unknown key "Kernel"`},
		{"duplicate key", rep(`"kernel": "bzImage",`, `"kernel": "evil", "kernel": "bzImage",`), `key "kernel" appears twice`},
		{"rootfs outside the directory", rep(`"rootfs.img.verity"`, `"../elsewhere/r"`), `rootfs: "../elsewhere/r" is not a plain file name`},
		{"absolute kernel", rep(`"bzImage"`, `"/boot/vmlinuz"`), "kernel"},
		{"dot-dot initrd", rep(`"initramfs.cpio.gz"`, `".."`), "initrd"},
		{"backslash", rep(`"bzImage"`, `"a\\b"`), "plain file name"},
		{"unknown key", rep(`"is_dev": false`, `"is_dev": false, "extra": 1`), `unknown key "extra"`},
		{"missing key", rep(`"is_dev": false`, `"shared_ro2": false`), "unknown key"},
		{"missing ovmf_variant", rep(`,
    "ovmf_variant": "pre202505"`, ``), `key "ovmf_variant" missing`},
		{"unknown ovmf_variant", rep(`"pre202505"`, `"post202505"`), `ovmf_variant "post202505"`},
		{"ovmf_variant not a string", rep(`"pre202505"`, `1`), "want a string"},
		{"wrong type", rep(`"is_dev": false`, `"is_dev": "false"`), "want true or false"},
		{"nested value", rep(`"version": "1.0"`, `"version": {"a": 1}`), "want a string"},
		{"trailing data", goodMetadata + "{}", "data after the object"},
		{"not an object", `[1]`, "not a JSON object"},
		{"invalid UTF-8", rep(`"1.0"`, "\"1.\xff\""), "UTF-8"},
		{"control character in a name", rep(`"bzImage"`, `"bz\u0001"`), "control character"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseMetadata([]byte(c.text))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "metadata.json: ") {
				t.Fatalf("error %v, want %q", err, c.want)
			}
		})
	}
	// Missing keys.
	if _, err := ParseMetadata([]byte(`{"bios": ""}`)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), `key "kernel" missing`) {
		t.Fatalf("missing keys: %v", err)
	}
}

func TestParseSHA256SumStrict(t *testing.T) {
	h := strings.Repeat("ab", 32)
	good := h + "  bzImage\n" + h + " *metadata.json\n"
	if e, err := ParseSHA256Sum([]byte(good)); err != nil || len(e) != 2 || e[1].Name != "metadata.json" {
		t.Fatalf("%+v %v", e, err)
	}
	cases := []struct{ name, text, want string }{
		{"duplicate name", good + h + "  bzImage\n", "listed twice"},
		{"path", h + "  ../x\n", "plain file name"},
		{"escaped name", "\\" + h + "  a\\nb\n", "HASH  NAME"},
		{"no final newline", strings.TrimSuffix(good, "\n"), "newline"},
		{"empty", "", "empty"},
		{"short hash", "abc  x\n", "HASH  NAME"},
		{"not hex", strings.Repeat("zz", 32) + "  x\n", "not a sha256"},
		{"dot", h + "  .\n", "not a file name"},
		{"blank line", good + "\n", "HASH  NAME"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseSHA256Sum([]byte(c.text))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), SumName) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
		})
	}
}

// FuzzParseMetadata: whatever parses renders back to the same values, and
// its file names are plain.
func FuzzParseMetadata(f *testing.F) {
	f.Add([]byte(goodMetadata))
	m := &Metadata{Kernel: KernelName, Cmdline: "x", Initrd: InitrdName, Rootfs: RootfsName, SharedRO: true, OVMFVariant: OVMFVariant}
	f.Add(m.JSON())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseMetadata(b)
		if err != nil {
			return
		}
		for _, n := range []string{m.Kernel, m.Initrd, m.Rootfs} {
			if PlainName(n) != nil {
				t.Fatalf("accepted file name %q", n)
			}
		}
		again, err := ParseMetadata(m.JSON())
		if err != nil || *again != *m {
			t.Fatalf("re-rendered metadata parses to %+v, %v", again, err)
		}
	})
}

// FuzzParseSHA256Sum: whatever parses renders back byte for byte (modulo
// the binary-mode marker and hex case).
func FuzzParseSHA256Sum(f *testing.F) {
	h := strings.Repeat("0123456789abcdef", 4)
	f.Add([]byte(h + "  ovmf.fd\n" + h + "  bzImage\n" + h + "  initramfs.cpio.gz\n" + h + "  metadata.json\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseSHA256Sum(b)
		if err != nil {
			return
		}
		again, err := ParseSHA256Sum(SHA256SumText(e))
		if err != nil || len(again) != len(e) {
			t.Fatalf("re-rendered list: %v", err)
		}
		for i := range e {
			if again[i] != e[i] || PlainName(e[i].Name) != nil {
				t.Fatalf("entry %d: %+v vs %+v", i, again[i], e[i])
			}
		}
	})
}
