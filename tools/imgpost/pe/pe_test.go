package pe

import (
	"bytes"
	"debug/pe"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

func stub(t testing.TB) []byte {
	t.Helper()
	testutil.NeedFile(t, testutil.DebianStub, "systemd-boot-efi")
	b, err := os.ReadFile(testutil.DebianStub)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAgainstDebugPE: for the Debian stub and kernel, the headers read here
// are debug/pe's.
func TestAgainstDebugPE(t *testing.T) {
	for _, p := range []string{testutil.DebianStub, testutil.DebianKernel(t)} {
		f, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		df, err := pe.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if f.FileHeader != df.FileHeader {
			t.Errorf("%s: file header %+v, debug/pe %+v", p, f.FileHeader, df.FileHeader)
		}
		oh := df.OptionalHeader.(*pe.OptionalHeader64)
		if f.SizeOfHeaders != oh.SizeOfHeaders || f.SizeOfImage != oh.SizeOfImage || f.CheckSum != oh.CheckSum ||
			f.Subsystem != oh.Subsystem || len(f.DataDirectory) != int(oh.NumberOfRvaAndSizes) {
			t.Errorf("%s: optional header differs from debug/pe's", p)
		}
		for i, s := range df.Sections {
			g := f.Sections[i]
			if g.Name != s.Name || g.VirtualSize != s.VirtualSize || g.VirtualAddress != s.VirtualAddress ||
				g.SizeOfRawData != s.Size || g.PointerToRawData != s.Offset || g.Characteristics != s.Characteristics {
				t.Errorf("%s: section %d %+v, debug/pe %+v", p, i, g, s.SectionHeader)
			}
		}
		df.Close()
		f.Close()
	}
}

// TestRefuses: the malformed images of issue 14 (and their kin) are refused
// with an *Error naming the file and the field.
func TestRefuses(t *testing.T) {
	b := stub(t)
	le := binary.LittleEndian
	peOff := int(le.Uint32(b[0x3c:]))
	coff, opt := peOff+4, peOff+24
	sec := opt + int(le.Uint16(b[coff+16:]))
	mod := func(f func(b []byte)) []byte { c := bytes.Clone(b); f(c); return c }
	cases := []struct {
		name, field string
		data        []byte
	}{
		{"SizeOfOptionalHeader 0", "SizeOfOptionalHeader", mod(func(b []byte) { le.PutUint16(b[coff+16:], 0) })},
		{"SizeOfOptionalHeader too small for the data directories", "SizeOfOptionalHeader", mod(func(b []byte) { le.PutUint16(b[coff+16:], 120) })},
		{"0xFFFF sections", "NumberOfSections", mod(func(b []byte) { le.PutUint16(b[coff+2:], 0xFFFF) })},
		{"section raw size 0xFFFFFE00", "section 1", mod(func(b []byte) { le.PutUint32(b[sec+16:], 0xFFFFFE00) })},
		{"SizeOfHeaders 0xFFFFFFFF", "SizeOfHeaders", mod(func(b []byte) { le.PutUint32(b[opt+60:], 0xFFFFFFFF) })},
		{"SizeOfHeaders before the end of the section table", "SizeOfHeaders", mod(func(b []byte) { le.PutUint32(b[opt+60:], uint32(sec)) })},
		{"overlapping sections", "sections", mod(func(b []byte) { le.PutUint32(b[sec+40+20:], le.Uint32(b[sec+20:])+512) })},
		{"section inside the headers", "section 1", mod(func(b []byte) { le.PutUint32(b[sec+20:], 0x200) })},
		{"truncated", "section", b[:len(b)/2]},
		{"NumberOfRvaAndSizes 0x7FFFFFFF", "NumberOfRvaAndSizes", mod(func(b []byte) { le.PutUint32(b[opt+108:], 0x7FFFFFFF) })},
		{"e_lfanew past the end", "e_lfanew", mod(func(b []byte) { le.PutUint32(b[0x3c:], 0xFFFFFFF0) })},
		{"FileAlignment 0", "FileAlignment", mod(func(b []byte) { le.PutUint32(b[opt+36:], 0) })},
		{"certificate table past the end", "certificate table", mod(func(b []byte) {
			le.PutUint32(b[opt+112+32:], uint32(len(b)-4))
			le.PutUint32(b[opt+112+36:], 64)
		})},
		{"optional header magic", "magic", mod(func(b []byte) { le.PutUint16(b[opt:], 0x999) })},
		{"too short", "", b[:40]},
		{"no PE signature", "signature", mod(func(b []byte) { b[peOff] = 'X' })},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewFile(bytes.NewReader(c.data), int64(len(c.data)), "x.efi")
			var pe *Error
			if !errors.As(err, &pe) || !errors.Is(err, ErrFormat) {
				t.Fatalf("error %v, want a *pe.Error", err)
			}
			if !strings.HasPrefix(err.Error(), "x.efi: ") || !strings.Contains(pe.Field+" "+pe.Msg, c.field) {
				t.Fatalf("error %q: want the file and %q", err, c.field)
			}
		})
	}
}

// FuzzNewFile: any bytes give an error or headers whose every offset lies
// in the file; nothing panics or allocates beyond the file's size.
func FuzzNewFile(f *testing.F) {
	f.Add(stub(f))
	if m := testutil.DebianKernel(f); m != "" {
		b, _ := os.ReadFile(m)
		f.Add(b[:min(len(b), 32<<10)]) // headers; sections past the end
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := NewFile(bytes.NewReader(b), int64(len(b)), "fuzz")
		if err != nil {
			return
		}
		if int64(p.SizeOfHeaders) > p.Size || p.RawEnd() > p.Size {
			t.Fatalf("accepted headers %d / sections to %d in %d bytes", p.SizeOfHeaders, p.RawEnd(), p.Size)
		}
		for _, s := range p.Sections {
			if _, err := p.SectionData(s, 1<<20); err != nil && !errors.Is(err, ErrFormat) {
				t.Fatal(err)
			}
		}
	})
}

// sizeOfOptionalHeader0 is the issue-14 crash input: a 512-byte PE32+
// image header with one section and SizeOfOptionalHeader 0 (imgpost
// authenticode and verify used to index past the optional header).
func sizeOfOptionalHeader0() []byte {
	b := make([]byte, 1024)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], 0x40)
	copy(b[0x40:], "PE\x00\x00")
	binary.LittleEndian.PutUint16(b[0x44:], 0x8664) // machine
	binary.LittleEndian.PutUint16(b[0x46:], 1)      // one section
	binary.LittleEndian.PutUint16(b[0x54:], 0)      // SizeOfOptionalHeader
	copy(b[0x58:], ".text")
	binary.LittleEndian.PutUint32(b[0x58+16:], 512) // raw size
	binary.LittleEndian.PutUint32(b[0x58+20:], 512) // raw pointer
	return b
}

func TestHostileTestdata(t *testing.T) {
	p := filepath.Join("..", "testdata", "hostile", "pe-size-of-optional-header-0.efi")
	b := sizeOfOptionalHeader0()
	if os.Getenv("IMGPOST_WRITE_TESTDATA") == "1" {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("%s is not what the generator makes (%v); regenerate with IMGPOST_WRITE_TESTDATA=1", p, err)
	}
	var pe *Error
	if _, err := NewFile(bytes.NewReader(b), int64(len(b)), "x"); !errors.As(err, &pe) || pe.Field != "SizeOfOptionalHeader" {
		t.Fatalf("error %v", err)
	}
}
