package dist

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
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
}

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

// ParseMetadata reads metadata.json strictly: every key present, no unknown key.
func ParseMetadata(b []byte) (*Metadata, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("metadata.json: %w", err)
	}
	for _, k := range []string{"bios", "kernel", "cmdline", "initrd", "rootfs", "version", "git_revision", "shared_ro", "is_dev"} {
		if _, ok := raw[k]; !ok {
			return nil, fmt.Errorf("metadata.json: key %q missing", k)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Metadata
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("metadata.json: %w", err)
	}
	return &m, nil
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

// ParseSHA256Sum parses sha256sum(1) text output (text or binary mode marker).
func ParseSHA256Sum(b []byte) ([]SumEntry, error) {
	var out []SumEntry
	for i, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		h, name, ok := strings.Cut(line, " ")
		if !ok || len(h) != 64 || (!strings.HasPrefix(name, " ") && !strings.HasPrefix(name, "*")) {
			return nil, fmt.Errorf("sha256sum.txt line %d: %q is not \"HASH  NAME\"", i+1, line)
		}
		if _, err := hex.DecodeString(h); err != nil {
			return nil, fmt.Errorf("sha256sum.txt line %d: %q is not a sha256", i+1, h)
		}
		name = name[1:]
		if name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("sha256sum.txt line %d: bad file name %q", i+1, name)
		}
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
		return "", 0, fmt.Errorf("command line has %d dstack.rootfs_hash and %d dstack.rootfs_size arguments, want one each", len(hashes), len(sizes))
	}
	if b, err := hex.DecodeString(hashes[0]); err != nil || len(b) != sha256.Size {
		return "", 0, fmt.Errorf("dstack.rootfs_hash=%q is not 64 hex digits", hashes[0])
	}
	if _, err := fmt.Sscanf(sizes[0], "%d", &size); err != nil || size <= 0 || fmt.Sprint(size) != sizes[0] {
		return "", 0, fmt.Errorf("dstack.rootfs_size=%q is not a positive byte count", sizes[0])
	}
	return strings.ToLower(hashes[0]), size, nil
}
