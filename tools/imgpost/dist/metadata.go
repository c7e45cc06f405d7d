package dist

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/Dstack-TEE/meta-dstack/internal/errkind"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/measure"
)

// Metadata is metadata.json, the file dstack's VMM reads to boot the
// bare-metal set. The field order is fixed (the upstream order).
type Metadata struct {
	// BIOS is the firmware file name ("ovmf.fd"), empty when none was shipped.
	BIOS string `json:"bios"`
	// Kernel is the kernel file name ("bzImage").
	Kernel string `json:"kernel"`
	// Cmdline is the bare-metal kernel command line.
	Cmdline string `json:"cmdline"`
	// Initrd is the initramfs file name ("initramfs.cpio.gz").
	Initrd string `json:"initrd"`
	// Rootfs is the verity-protected rootfs file name ("rootfs.img.verity").
	Rootfs string `json:"rootfs"`
	// Version is the dist version.
	Version string `json:"version"`
	// GitRevision is the source revision the image was built from.
	GitRevision string `json:"git_revision"`
	// SharedRO is always true: the rootfs is shared read-only.
	SharedRO bool `json:"shared_ro"`
	// IsDev is true for the dev flavor.
	IsDev bool `json:"is_dev"`
	// OVMFVariant names the firmware's boot-time RTMR0 event layout the
	// measurements assume (upstream's OVMF_VARIANT; OVMFVariant, the only
	// one measure models).
	OVMFVariant string `json:"ovmf_variant"`
}

// OVMFVariant is the ovmf_variant dist records: upstream dstack-ovmf's
// (edk2-stable202502) "pre202505", the layout imgpost measure predicts.
const OVMFVariant = measure.OVMFPre202505

// JSON renders m as upstream's metadata.json does: 4-space indentation, the
// fixed key order, a final newline.
func (m *Metadata) JSON() []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "    ")
	if err := enc.Encode(m); err != nil {
		panic(err) // plain strings and bools always encode
	}
	return b.Bytes()
}

// metadataKeys are metadata.json's keys, exactly as written; true for the
// booleans.
var metadataKeys = map[string]bool{
	"bios": false, "kernel": false, "cmdline": false, "initrd": false, "rootfs": false,
	"version": false, "git_revision": false, "shared_ro": true, "is_dev": true, "ovmf_variant": false,
}

// ErrMalformed is wrapped by every error of ParseMetadata, ParseSHA256Sum
// and RootfsArgs: the text breaks the format dist writes.
var ErrMalformed = errors.New("not in the format dist writes")

// ParseMetadata reads metadata.json strictly, so that every JSON reader sees
// the same thing: valid UTF-8, one object, each key exactly as dist writes it
// (encoding/json's case-insensitive matching does not apply), none twice,
// none unknown, none missing, strings and booleans of the right type, nothing
// after the object; and the file names (bios when set, kernel, initrd,
// rootfs) plain names inside the directory.
func ParseMetadata(b []byte) (*Metadata, error) {
	bad := func(format string, a ...any) error {
		return errkind.Errorf(ErrMalformed, "%s: %s", MetadataName, fmt.Sprintf(format, a...))
	}
	if !utf8.Valid(b) {
		return nil, bad("not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, bad("not a JSON object")
	}
	var m Metadata
	strs := map[string]*string{"bios": &m.BIOS, "kernel": &m.Kernel, "cmdline": &m.Cmdline, "initrd": &m.Initrd,
		"rootfs": &m.Rootfs, "version": &m.Version, "git_revision": &m.GitRevision, "ovmf_variant": &m.OVMFVariant}
	bools := map[string]*bool{"shared_ro": &m.SharedRO, "is_dev": &m.IsDev}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, bad("%v", err)
		}
		k, _ := t.(string)
		isBool, known := metadataKeys[k]
		switch {
		case !known:
			return nil, bad("unknown key %q (keys are matched exactly, case included)", k)
		case seen[k]:
			return nil, bad("key %q appears twice", k)
		}
		seen[k] = true
		v, err := dec.Token()
		if err != nil {
			return nil, bad("key %q: %v", k, err)
		}
		if isBool {
			bv, ok := v.(bool)
			if !ok {
				return nil, bad("key %q: want true or false", k)
			}
			*bools[k] = bv
		} else {
			sv, ok := v.(string)
			if !ok {
				return nil, bad("key %q: want a string", k)
			}
			*strs[k] = sv
		}
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return nil, bad("object not closed")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, bad("data after the object")
	}
	for _, k := range []string{"bios", "kernel", "cmdline", "initrd", "rootfs", "version", "git_revision", "shared_ro", "is_dev", "ovmf_variant"} {
		if !seen[k] {
			return nil, bad("key %q missing", k)
		}
	}
	if m.OVMFVariant != OVMFVariant {
		return nil, bad("ovmf_variant %q: only %q is known", m.OVMFVariant, OVMFVariant)
	}
	for _, f := range []struct{ key, v string }{{"kernel", m.Kernel}, {"initrd", m.Initrd}, {"rootfs", m.Rootfs}, {"bios", m.BIOS}} {
		if f.key == "bios" && f.v == "" {
			continue
		}
		if err := PlainName(f.v); err != nil {
			return nil, bad("%s: %v", f.key, err)
		}
	}
	return &m, nil
}

// PlainName reports why name is not a plain file name inside a directory
// (empty, ".", "..", a slash or backslash, a control character), or nil.
func PlainName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("%q is not a file name", name)
	case strings.ContainsAny(name, "/\\"):
		return fmt.Errorf("%q is not a plain file name in the directory", name)
	case strings.IndexFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f || r == utf8.RuneError }) >= 0:
		return fmt.Errorf("%q holds a control character", name)
	}
	return nil
}

// SumEntry is one line of sha256sum.txt.
type SumEntry struct {
	SHA256 string // lower-case hex
	Name   string
}

// SHA256SumText renders entries in sha256sum(1)'s text format ("HASH  NAME").
func SHA256SumText(entries []SumEntry) []byte {
	var b bytes.Buffer
	for _, e := range entries {
		fmt.Fprintf(&b, "%s  %s\n", e.SHA256, e.Name)
	}
	return b.Bytes()
}

// ParseSHA256Sum parses sha256sum(1) text output (text or binary mode
// marker) strictly: every line "HASH  NAME" or "HASH *NAME" ending in a
// newline, 64 hex digits, NAME a plain name (PlainName; sha256sum's
// backslash-escaped names are refused), no name twice.
func ParseSHA256Sum(b []byte) ([]SumEntry, error) {
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return nil, errkind.Errorf(ErrMalformed, "%s: empty or not ending in a newline", SumName)
	}
	if !utf8.Valid(b) {
		return nil, errkind.Errorf(ErrMalformed, "%s: not valid UTF-8", SumName)
	}
	var out []SumEntry
	seen := map[string]bool{}
	for i, line := range strings.Split(string(b[:len(b)-1]), "\n") {
		h, name, ok := strings.Cut(line, " ")
		if !ok || len(h) != 64 || (!strings.HasPrefix(name, " ") && !strings.HasPrefix(name, "*")) {
			return nil, errkind.Errorf(ErrMalformed, "%s line %d: %q is not \"HASH  NAME\"", SumName, i+1, line)
		}
		if _, err := hex.DecodeString(h); err != nil {
			return nil, errkind.Errorf(ErrMalformed, "%s line %d: %q is not a sha256", SumName, i+1, h)
		}
		name = name[1:]
		if err := PlainName(name); err != nil {
			return nil, errkind.Errorf(ErrMalformed, "%s line %d: %v", SumName, i+1, err)
		}
		if seen[name] {
			return nil, errkind.Errorf(ErrMalformed, "%s line %d: %s listed twice", SumName, i+1, name)
		}
		seen[name] = true
		out = append(out, SumEntry{SHA256: strings.ToLower(h), Name: name})
	}
	return out, nil
}

// DigestText is digest.txt: the sha256 of sha256sum.txt in hex, and a newline
// (upstream: `sha256sum sha256sum.txt | awk '{print $1}'`).
func DigestText(sha256sum []byte) []byte {
	s := sha256.Sum256(sha256sum)
	return []byte(hex.EncodeToString(s[:]) + "\n")
}

// RootfsArgs extracts dstack.rootfs_hash and dstack.rootfs_size from a kernel
// command line; both must be present exactly once and well-formed.
func RootfsArgs(cmdline string) (hash string, size int64, err error) {
	var hashes, sizes []string
	for _, a := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(a, "dstack.rootfs_hash="); ok {
			hashes = append(hashes, v)
		}
		if v, ok := strings.CutPrefix(a, "dstack.rootfs_size="); ok {
			sizes = append(sizes, v)
		}
	}
	if len(hashes) != 1 || len(sizes) != 1 {
		return "", 0, errkind.Errorf(ErrMalformed, "command line has %d dstack.rootfs_hash and %d dstack.rootfs_size arguments, want one each", len(hashes), len(sizes))
	}
	if b, err := hex.DecodeString(hashes[0]); err != nil || len(b) != sha256.Size {
		return "", 0, errkind.Errorf(ErrMalformed, "dstack.rootfs_hash=%q is not 64 hex digits", hashes[0])
	}
	if _, err := fmt.Sscanf(sizes[0], "%d", &size); err != nil || size <= 0 || fmt.Sprint(size) != sizes[0] {
		return "", 0, errkind.Errorf(ErrMalformed, "dstack.rootfs_size=%q is not a positive byte count", sizes[0])
	}
	return strings.ToLower(hashes[0]), size, nil
}
