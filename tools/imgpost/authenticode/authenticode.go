// Package authenticode computes the Authenticode digest of a PE/COFF image:
// the hash UEFI firmware measures for an EFI application
// (EV_EFI_BOOT_SERVICES_APPLICATION) and that signing tools sign.
//
// The digest follows the PE/COFF specification's Authenticode appendix and
// EDK2's DxeTpm2MeasureBootLib: the headers up to SizeOfHeaders without the
// CheckSum field and the certificate-table directory entry; every section's
// raw data in file order (sorted by PointerToRawData); then the bytes after
// the hashed sections (from SizeOfHeaders + the sum of the sections' raw
// sizes) up to the certificate table or the end of the file; finally, for a
// file whose hashed part does not end at a multiple of 8 bytes, zero bytes up
// to the next multiple of 8, because signing tools pad the file so before appending the
// certificate table (a signed copy's digest then equals the unsigned file's).
//
// The image is streamed: memory use does not depend on its size. Its headers
// are read by package pe, which checks every count, size and offset against
// the file first.
//
// Two digests differ for a file whose hashed part does not end at a
// multiple of 8: Digest pads it (osslsigncode, sbsign: a signed copy hashes
// the same), FirmwareDigest does not (EDK2's DxeTpm2MeasureBootLib, hence
// the TCG event log and what dstack's verifier compares). imgpost's UKIs are
// always 8-byte aligned, so both are equal for them.
//
// Why not github.com/foxboron/go-uefi's authenticode package (evaluated at
// v0.0.0-20251010190908-d29549a44f29): its Parse matches osslsigncode (for
// the Debian stub, 83,297 bytes, it gives 32cab00c…, as Digest does) but
// always pads, so it has no firmware value (FirmwareDigest gives 28fd6b9a…
// for the same file, the value a TPM event log holds); it relies on
// debug/pe alone, assumes 16 data directories when locating the
// certificate-table entry, buffers the bytes after the sections and the
// certificate table in memory, and panics ("bytes.Buffer: truncation out of
// range") on an image whose certificate-table size exceeds the bytes after
// the sections, so it fails the hostile-input rule; and it would add
// dependencies (pkg/errors, x/crypto, x/text) outside the project's list.
package authenticode

import (
	"crypto"
	_ "crypto/sha256" // register SHA-256
	_ "crypto/sha512" // register SHA-384/512
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/pe"
)

// HashFileSuffix is appended to a UKI's name for the file holding its
// SHA-256 Authenticode digest (dstack-uki.efi.auth_hash.txt).
const HashFileSuffix = ".auth_hash.txt"

type region struct{ off, n int64 }

// layout reads the headers of the image in r (package pe, strictly) and
// returns the regions to hash, in order, and the end of the last one. With
// firmware set, the bytes after the sections are those EDK2 hashes: from
// SizeOfHeaders + the sections' raw sizes to the file size minus the
// certificate table's size; otherwise they end at the certificate table (or
// the end of the file), as signing tools read them.
func layout(r io.ReaderAt, size int64, firmware bool, name string) ([]region, error) {
	f, err := pe.NewFile(r, size, name)
	if err != nil {
		return nil, err
	}
	sizeOfHeaders := int64(f.SizeOfHeaders)
	csOff := f.CheckSumOffset
	regs := []region{{0, csOff}}
	cert, hasCert := f.CertTable()
	if len(f.DataDirectory) > 4 {
		cdOff := f.DataDirectoryOffset + 8*4
		regs = append(regs, region{csOff + 4, cdOff - csOff - 4}, region{cdOff + 8, sizeOfHeaders - cdOff - 8})
	} else {
		regs = append(regs, region{csOff + 4, sizeOfHeaders - csOff - 4})
	}
	hashed := sizeOfHeaders
	for _, s := range f.RawOrder() {
		regs = append(regs, region{int64(s.PointerToRawData), int64(s.SizeOfRawData)})
		hashed += int64(s.SizeOfRawData)
	}
	var end int64
	switch {
	case firmware:
		// DxeTpm2MeasureBootLib: ImageSize - CertSize - SumOfBytesHashed,
		// refused when negative.
		end = size - int64(cert.Size)
		if hashed > size {
			return regs, nil
		}
		if end < hashed {
			return nil, &pe.Error{File: f.Name, Field: "certificate table", Msg: fmt.Sprintf("size %d larger than the %d bytes after the sections", cert.Size, size-hashed)}
		}
	case hasCert:
		end = int64(cert.VirtualAddress) // the table is at the end; anything after it is not hashed by signers
	default:
		end = size
	}
	if end > hashed {
		regs = append(regs, region{hashed, end - hashed})
	}
	return regs, nil
}

// Digest returns the Authenticode digest (algorithm h: crypto.SHA256,
// crypto.SHA384, ...) of the PE image in r, which is size bytes long, as
// signing tools (osslsigncode, sbsign) compute it: the hashed part of the
// file is zero-padded to a multiple of 8. FirmwareDigest is what UEFI
// firmware measures; they differ only for a file whose length (or
// certificate table's offset) is not a multiple of 8.
func Digest(r io.ReaderAt, size int64, h crypto.Hash) ([]byte, error) {
	return digest(r, size, h, false, "PE image")
}

// FirmwareDigest returns the Authenticode digest of the PE image in r as
// EDK2's DxeTpm2MeasureBootLib (MeasurePeImage) computes it for the TCG
// event log: like Digest, but the bytes after the sections are hashed as
// they are, without padding to 8.
func FirmwareDigest(r io.ReaderAt, size int64, h crypto.Hash) ([]byte, error) {
	return digest(r, size, h, true, "PE image")
}

func digest(r io.ReaderAt, size int64, h crypto.Hash, firmware bool, name string) ([]byte, error) {
	if !h.Available() {
		return nil, fmt.Errorf("hash %v not available", h)
	}
	regs, err := layout(r, size, firmware, name)
	if err != nil {
		return nil, err
	}
	d := h.New()
	var end int64
	buf := make([]byte, 1<<20)
	for _, g := range regs {
		if _, err := io.CopyBuffer(d, io.NewSectionReader(r, g.off, g.n), buf); err != nil {
			return nil, fmt.Errorf("read [%d, +%d): %w", g.off, g.n, err)
		}
		end = max(end, g.off+g.n)
	}
	// Signers pad the file itself (not the hashed byte count) to 8.
	if pad := (8 - end%8) % 8; pad != 0 && !firmware {
		d.Write(make([]byte, pad))
	}
	return d.Sum(nil), nil
}

// FileFirmwareDigest is FirmwareDigest for the file at path; errors name the
// file.
func FileFirmwareDigest(path string, h crypto.Hash) ([]byte, error) {
	return fileDigest(path, h, true)
}

// FileDigest is Digest for the file at path; errors name the file.
func FileDigest(path string, h crypto.Hash) ([]byte, error) {
	return fileDigest(path, h, false)
}

func fileDigest(path string, h crypto.Hash, firmware bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	sum, err := digest(f, st.Size(), h, firmware, path)
	if err != nil {
		if errors.Is(err, pe.ErrFormat) {
			return nil, err // names the file already
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sum, nil
}

// WriteHashFile writes the SHA-256 Authenticode digest as firmware measures
// it (FirmwareDigest; for an 8-aligned file, as imgpost's UKIs are, the same
// as Digest) of the PE image at
// pePath to out (atomically) as lower-case hex and a newline, the format of
// dstack's auth_hash.txt. An empty out means pePath + HashFileSuffix. It
// returns the hex digest.
func WriteHashFile(pePath, out string) (string, error) {
	if out == "" {
		out = pePath + HashFileSuffix
	}
	if err := atomicfile.CheckNotInput(out, pePath); err != nil {
		return "", err
	}
	sum, err := FileFirmwareDigest(pePath, crypto.SHA256)
	if err != nil {
		return "", err
	}
	s := hex.EncodeToString(sum)
	if err := atomicfile.WriteFile(out, []byte(s+"\n"), 0o644); err != nil {
		return "", err
	}
	return s, nil
}
