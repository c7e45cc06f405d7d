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
// The image is streamed: memory use does not depend on its size.
package authenticode

import (
	"crypto"
	_ "crypto/sha256" // register SHA-256
	_ "crypto/sha512" // register SHA-384/512
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/atomicfile"
)

// HashFileSuffix is appended to a UKI's name for the file holding its
// SHA-256 Authenticode digest (dstack-uki.efi.auth_hash.txt).
const HashFileSuffix = ".auth_hash.txt"

type region struct{ off, n int64 }

// layout parses the headers of the image in r and returns the regions to
// hash, in order.
func layout(r io.ReaderAt, size int64) ([]region, error) {
	le := binary.LittleEndian
	var dos [0x40]byte
	if _, err := r.ReadAt(dos[:], 0); err != nil || string(dos[:2]) != "MZ" {
		return nil, errors.New("not a PE image (no MZ header)")
	}
	peOff := int64(le.Uint32(dos[0x3c:]))
	var coff [24]byte
	if _, err := r.ReadAt(coff[:], peOff); err != nil || string(coff[:4]) != "PE\x00\x00" {
		return nil, errors.New("not a PE image (no PE signature)")
	}
	nsec := int64(le.Uint16(coff[6:]))
	optSize := int64(le.Uint16(coff[20:]))
	optOff := peOff + 24
	opt := make([]byte, optSize)
	if _, err := r.ReadAt(opt, optOff); err != nil {
		return nil, fmt.Errorf("optional header: %w", err)
	}
	var dirsOff int64
	switch m := le.Uint16(opt); {
	case m == 0x10b && optSize >= 96:
		dirsOff = 96
	case m == 0x20b && optSize >= 112:
		dirsOff = 112
	default:
		return nil, fmt.Errorf("optional header magic 0x%x / size %d not PE32 or PE32+", m, optSize)
	}
	sizeOfHeaders := int64(le.Uint32(opt[60:]))
	csOff := optOff + 64
	nDirs := int64(le.Uint32(opt[dirsOff-4:]))
	secTable := optOff + optSize
	if sizeOfHeaders > size || secTable+40*nsec > sizeOfHeaders {
		return nil, fmt.Errorf("SizeOfHeaders %d inconsistent with the section table / file size %d", sizeOfHeaders, size)
	}
	regs := []region{{0, csOff}}
	var certOff, certSize int64
	if nDirs > 4 && dirsOff+8*5 <= optSize {
		cdOff := optOff + dirsOff + 8*4
		certOff = int64(le.Uint32(opt[dirsOff+32:]))
		certSize = int64(le.Uint32(opt[dirsOff+36:]))
		regs = append(regs, region{csOff + 4, cdOff - csOff - 4}, region{cdOff + 8, sizeOfHeaders - cdOff - 8})
	} else {
		regs = append(regs, region{csOff + 4, sizeOfHeaders - csOff - 4})
	}
	if certSize != 0 && (certOff < sizeOfHeaders || certOff+certSize > size) {
		return nil, fmt.Errorf("certificate table [%d, +%d) outside the file", certOff, certSize)
	}
	tab := make([]byte, 40*nsec)
	if _, err := r.ReadAt(tab, secTable); err != nil {
		return nil, fmt.Errorf("section table: %w", err)
	}
	var secs []region
	for i := int64(0); i < nsec; i++ {
		e := tab[40*i:]
		n, off := int64(le.Uint32(e[16:])), int64(le.Uint32(e[20:]))
		if n == 0 {
			continue
		}
		if off+n > size {
			return nil, fmt.Errorf("section %d raw data [%d, +%d) beyond the end of the file (%d)", i, off, n, size)
		}
		secs = append(secs, region{off, n})
	}
	sort.SliceStable(secs, func(i, j int) bool { return secs[i].off < secs[j].off })
	hashed := sizeOfHeaders
	for _, s := range secs {
		regs = append(regs, s)
		hashed += s.n
	}
	end := size - certSize
	if certSize != 0 {
		end = certOff // the table is at the end; anything after it is not hashed by signers
	}
	if end > hashed {
		regs = append(regs, region{hashed, end - hashed})
	}
	return regs, nil
}

// Digest returns the Authenticode digest (algorithm h: crypto.SHA256,
// crypto.SHA384, ...) of the PE image in r, which is size bytes long.
func Digest(r io.ReaderAt, size int64, h crypto.Hash) ([]byte, error) {
	if !h.Available() {
		return nil, fmt.Errorf("hash %v not available", h)
	}
	regs, err := layout(r, size)
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
	if pad := (8 - end%8) % 8; pad != 0 {
		d.Write(make([]byte, pad))
	}
	return d.Sum(nil), nil
}

// FileDigest is Digest for the file at path; errors name the file.
func FileDigest(path string, h crypto.Hash) ([]byte, error) {
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
	sum, err := Digest(f, st.Size(), h)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return sum, nil
}

// WriteHashFile writes the SHA-256 Authenticode digest of the PE image at
// pePath to out (atomically) as lower-case hex and a newline, the format of
// dstack's auth_hash.txt. An empty out means pePath + HashFileSuffix. It
// returns the hex digest.
func WriteHashFile(pePath, out string) (string, error) {
	if out == "" {
		out = pePath + HashFileSuffix
	}
	sum, err := FileDigest(pePath, crypto.SHA256)
	if err != nil {
		return "", err
	}
	s := hex.EncodeToString(sum)
	if err := atomicfile.WriteFile(out, []byte(s+"\n"), 0o644); err != nil {
		return "", err
	}
	return s, nil
}
