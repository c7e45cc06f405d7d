package measure

import (
	"bytes"
	"crypto"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/Dstack-TEE/meta-dstack/tools/imgpost/authenticode"
)

// File names of the measurement files a dist directory ships.
const (
	TDXFileName  = "measurement.tdx.cbor"
	GCPFileName  = "measurement.gcp.cbor"
	JSONFileName = "measurements.json"
	// UKIFileName is the UKI of the bare-metal set (what gcp/disk.raw boots).
	UKIFileName = "dstack-uki.efi"
)

// TDXMaterialVersion is dstack-types' TdxOsImageMeasurement::VERSION.
const TDXMaterialVersion = 3

// TDXMaterial is the image-static TDX measurement material dstack ships as
// measurement.tdx.cbor (dstack-types TdxOsImageMeasurement): everything a
// verifier needs, with the VM's shape and the ACPI digests of its event
// log, to recompute MRTD and RTMR0-2 without downloading the image.
type TDXMaterial struct {
	CmdlineSHA384      []byte // RTMR2 command-line event digest
	KernelAuthenticode []byte // RTMR1 kernel digest for >= 0xB0000000 (or exactly 2 GiB) of RAM
	InitrdSHA384       []byte // RTMR2 initrd event digest
	OVMFVariant        string // "pre202505"
	MRTDSinglePass     []byte
	MRTDTwoPass        []byte
	TDHOBWitness       []byte // TdHobWitnessV1
}

// CBOR encodes m as dstack-types does (ciborium over serde): a map
// {version, image{cmdline_sha384, kernel_authenticode, initrd_sha384},
// tdvf{ovmf, mrtd{single_pass, two_pass}, td_hob}}, byte strings as CBOR
// byte strings, keys in that order.
func (m TDXMaterial) CBOR() []byte {
	img := (&CBORMap{}).Add("cmdline_sha384", m.CmdlineSHA384).
		Add("kernel_authenticode", m.KernelAuthenticode).
		Add("initrd_sha384", m.InitrdSHA384)
	mrtd := (&CBORMap{}).Add("single_pass", m.MRTDSinglePass).Add("two_pass", m.MRTDTwoPass)
	tdvf := (&CBORMap{}).Add("ovmf", m.OVMFVariant).Add("mrtd", mrtd).Add("td_hob", m.TDHOBWitness)
	top := (&CBORMap{}).Add("version", uint64(TDXMaterialVersion)).Add("image", img).Add("tdvf", tdvf)
	b, err := EncodeCBOR(top)
	if err != nil {
		panic(err) // only supported types above
	}
	return b
}

func cborField(m *CBORMap, key string) (CBORValue, error) {
	v, ok := m.Get(key)
	if !ok {
		return nil, fmt.Errorf("missing %q", key)
	}
	return v, nil
}

func cborMapField(m *CBORMap, key string) (*CBORMap, error) {
	v, err := cborField(m, key)
	if err != nil {
		return nil, err
	}
	mm, ok := v.(*CBORMap)
	if !ok {
		return nil, fmt.Errorf("%q is not a map", key)
	}
	return mm, nil
}

func cborBytesField(m *CBORMap, key string, n int) ([]byte, error) {
	v, err := cborField(m, key)
	if err != nil {
		return nil, err
	}
	b, ok := v.([]byte)
	if !ok || (n > 0 && len(b) != n) {
		return nil, fmt.Errorf("%q is not a %d-byte byte string", key, n)
	}
	return b, nil
}

// DecodeTDXMaterial parses measurement.tdx.cbor as dstack's verifier does
// (version 3, unknown keys ignored by serde are rejected here only if a
// required one is missing), checking each digest's length.
func DecodeTDXMaterial(b []byte) (TDXMaterial, error) {
	var m TDXMaterial
	wrap := func(err error) (TDXMaterial, error) {
		return TDXMaterial{}, fmt.Errorf("%s: %w", TDXFileName, err)
	}
	v, err := DecodeCBOR(b)
	if err != nil {
		return wrap(err)
	}
	top, ok := v.(*CBORMap)
	if !ok {
		return wrap(errors.New("not a map"))
	}
	ver, err := cborField(top, "version")
	if err != nil {
		return wrap(err)
	}
	if ver != uint64(TDXMaterialVersion) {
		return wrap(fmt.Errorf("version %v, want %d", ver, TDXMaterialVersion))
	}
	img, err := cborMapField(top, "image")
	if err != nil {
		return wrap(err)
	}
	tdvf, err := cborMapField(top, "tdvf")
	if err != nil {
		return wrap(err)
	}
	mrtd, err := cborMapField(tdvf, "mrtd")
	if err != nil {
		return wrap(err)
	}
	for _, f := range []struct {
		m   *CBORMap
		key string
		n   int
		dst *[]byte
	}{
		{img, "cmdline_sha384", 48, &m.CmdlineSHA384},
		{img, "kernel_authenticode", 48, &m.KernelAuthenticode},
		{img, "initrd_sha384", 48, &m.InitrdSHA384},
		{mrtd, "single_pass", 48, &m.MRTDSinglePass},
		{mrtd, "two_pass", 48, &m.MRTDTwoPass},
		{tdvf, "td_hob", 0, &m.TDHOBWitness},
	} {
		if *f.dst, err = cborBytesField(f.m, f.key, f.n); err != nil {
			return wrap(err)
		}
	}
	ov, err := cborField(tdvf, "ovmf")
	if err != nil {
		return wrap(err)
	}
	if m.OVMFVariant, ok = ov.(string); !ok || m.OVMFVariant != OVMFPre202505 {
		return wrap(fmt.Errorf("ovmf variant %v is not %q", ov, OVMFPre202505))
	}
	if _, err := DecodeWitness(m.TDHOBWitness); err != nil {
		return wrap(err)
	}
	return m, nil
}

// GCPMaterial returns measurement.gcp.cbor: {version: 1, uki_auth: the
// UKI's Authenticode SHA-256 as firmware measures it}.
func GCPMaterial(ukiAuthSHA256 []byte) ([]byte, error) {
	if len(ukiAuthSHA256) != 32 {
		return nil, fmt.Errorf("UKI Authenticode digest of %d bytes, want 32", len(ukiAuthSHA256))
	}
	return EncodeCBOR((&CBORMap{}).Add("version", uint64(1)).Add("uki_auth", ukiAuthSHA256))
}

// DecodeGCPMaterial parses measurement.gcp.cbor and returns uki_auth.
func DecodeGCPMaterial(b []byte) ([]byte, error) {
	v, err := DecodeCBOR(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", GCPFileName, err)
	}
	m, ok := v.(*CBORMap)
	if !ok {
		return nil, fmt.Errorf("%s: not a map", GCPFileName)
	}
	if ver, _ := m.Get("version"); ver != uint64(1) {
		return nil, fmt.Errorf("%s: version %v, want 1", GCPFileName, ver)
	}
	d, err := cborBytesField(m, "uki_auth", 32)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", GCPFileName, err)
	}
	return d, nil
}

// Metadata is the part of metadata.json a prediction reads.
type Metadata struct {
	BIOS        string `json:"bios"`
	Kernel      string `json:"kernel"`
	Initrd      string `json:"initrd"`
	Cmdline     string `json:"cmdline"`
	Version     string `json:"version"`
	OVMFVariant string `json:"ovmf_variant"`
}

const maxMetadataSize = 1 << 20

// ReadMetadata reads dir/metadata.json; file names in it must be plain
// names inside dir.
func ReadMetadata(dir string) (*Metadata, error) {
	p := filepath.Join(dir, "metadata.json")
	b, err := readLimited(p, maxMetadataSize)
	if err != nil {
		return nil, err
	}
	var m Metadata
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	for _, f := range []struct{ key, v string }{{"kernel", m.Kernel}, {"initrd", m.Initrd}, {"bios", m.BIOS}} {
		if f.v == "" && f.key != "bios" {
			return nil, fmt.Errorf("%s: %q is empty", p, f.key)
		}
		if f.v != "" && (strings.ContainsAny(f.v, `/\`) || f.v == "." || f.v == "..") {
			return nil, fmt.Errorf("%s: %q = %q is not a file name in the directory", p, f.key, f.v)
		}
	}
	if m.OVMFVariant != "" && m.OVMFVariant != OVMFPre202505 {
		return nil, fmt.Errorf("%s: ovmf_variant %q: only %q is modelled", p, m.OVMFVariant, OVMFPre202505)
	}
	return &m, nil
}

func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", p, limit)
	}
	return b, nil
}

// OpenImage reads the dist directory dir: metadata.json, the firmware, the
// initrd's digest and size, and opens the kernel. Close the returned file.
func OpenImage(dir string) (*Image, *Metadata, *os.File, error) {
	md, err := ReadMetadata(dir)
	if err != nil {
		return nil, nil, nil, err
	}
	if md.BIOS == "" {
		return nil, nil, nil, fmt.Errorf("%s: no firmware (\"bios\" is empty): TDX measurements need ovmf.fd", filepath.Join(dir, "metadata.json"))
	}
	fwPath := filepath.Join(dir, md.BIOS)
	fwBytes, err := readLimited(fwPath, maxFirmwareSize)
	if err != nil {
		return nil, nil, nil, err
	}
	fw, err := ParseFirmware(fwBytes)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", fwPath, err)
	}
	initrdPath := filepath.Join(dir, md.Initrd)
	sum, size, err := sha384File(initrdPath)
	if err != nil {
		return nil, nil, nil, err
	}
	if size >= 1<<32 {
		return nil, nil, nil, fmt.Errorf("%s: %d bytes, QEMU loads at most 4 GiB", initrdPath, size)
	}
	kp := filepath.Join(dir, md.Kernel)
	kf, err := os.Open(kp)
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := kf.Stat()
	if err != nil {
		kf.Close()
		return nil, nil, nil, err
	}
	img := &Image{Firmware: fw, Kernel: kf, KernelSize: st.Size(), InitrdSHA384: sum, InitrdSize: uint64(size), Cmdline: md.Cmdline}
	return img, md, kf, nil
}

func sha384File(p string) ([]byte, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	h := sha512.New384()
	n, err := io.Copy(h, f)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", p, err)
	}
	return h.Sum(nil), n, nil
}

// UKIAuthenticodeSHA256 returns the firmware-mode Authenticode SHA-256 of
// the UKI at path: the digest Google's firmware logs and dstack's GCP
// verifier compares.
func UKIAuthenticodeSHA256(path string) ([]byte, error) {
	return authenticode.FileFirmwareDigest(path, crypto.SHA256)
}

// Material computes the TDX measurement material of an image.
func Material(img *Image) (TDXMaterial, error) {
	w, err := img.Firmware.Witness()
	if err != nil {
		return TDXMaterial{}, err
	}
	k, err := PatchedKernelAuthenticode(img.Kernel, img.KernelSize, img.InitrdSize, highMemThreshold, crypto.SHA384)
	if err != nil {
		return TDXMaterial{}, err
	}
	return TDXMaterial{
		CmdlineSHA384:      sha384(UTF16Z(MeasuredCmdline(img.Cmdline, InitrdSuffix))),
		KernelAuthenticode: k,
		InitrdSHA384:       img.InitrdSHA384,
		OVMFVariant:        OVMFPre202505,
		MRTDSinglePass:     img.Firmware.MRTD(SinglePass),
		MRTDTwoPass:        img.Firmware.MRTD(TwoPass),
		TDHOBWitness:       w.Encode(),
	}, nil
}

// DefaultShapes are the VM shapes measurements.json lists: dstack's common
// memory sizes on QEMU 8.2 (two-pass) and 9.1 (single-pass).
var DefaultShapes = []Shape{
	{MemoryBytes: 2 << 30, QEMUVersion: "8.2.2"},
	{MemoryBytes: 2 << 30, QEMUVersion: "9.1.0"},
	{MemoryBytes: 4 << 30, QEMUVersion: "9.1.0"},
	{MemoryBytes: 8 << 30, QEMUVersion: "9.1.0"},
}

// hexBytes marshals as lower-case hex.
type hexBytes []byte

func (h hexBytes) MarshalJSON() ([]byte, error) {
	if h == nil {
		return []byte("null"), nil
	}
	return json.Marshal(hex.EncodeToString(h))
}

type jsonShape struct {
	MemoryBytes  uint64   `json:"memory_bytes"`
	QEMUVersion  string   `json:"qemu_version"`
	PageOrder    string   `json:"mrtd_page_order"`
	MRTD         hexBytes `json:"mrtd"`
	TDHOBSHA384  hexBytes `json:"td_hob_sha384"`
	RTMR1        hexBytes `json:"rtmr1"`
	RTMR2        hexBytes `json:"rtmr2"`
	RTMR0Comment string   `json:"rtmr0"`
}

type jsonMeasurements struct {
	OVMFVariant        string      `json:"ovmf_variant"`
	MeasuredCmdline    string      `json:"measured_cmdline"`
	CmdlineSHA384      hexBytes    `json:"cmdline_sha384"`
	InitrdSHA384       hexBytes    `json:"initrd_sha384"`
	KernelAuthenticode hexBytes    `json:"kernel_authenticode_sha384_high_mem"`
	CFVSHA384          hexBytes    `json:"cfv_sha384"`
	TDHOBWitness       hexBytes    `json:"td_hob_witness"`
	MRTDSinglePass     hexBytes    `json:"mrtd_single_pass"`
	MRTDTwoPass        hexBytes    `json:"mrtd_two_pass"`
	UKIAuthSHA256      hexBytes    `json:"uki_authenticode_sha256,omitempty"`
	Shapes             []jsonShape `json:"shapes"`
}

// File is one measurement file to write into a dist directory.
type File struct {
	Name string
	Data []byte
}

// Set is the measurement files of a dist directory, and why
// measurement.tdx.cbor is not among them.
type Set struct {
	Files []File // sorted by name
	// NoTDX says why there is no measurement.tdx.cbor ("" when there is
	// one): no firmware in metadata.json, or a firmware without TDX metadata.
	NoTDX string
}

// Files computes the measurement files of the dist directory dir:
// measurement.tdx.cbor (when metadata.json names a firmware with TDX
// metadata), measurement.gcp.cbor (when dstack-uki.efi is there) and
// measurements.json (the human-readable values for DefaultShapes). The
// result is sorted by name and deterministic; nothing is written.
func Files(dir string) ([]File, error) {
	s, err := Compute(dir)
	return s.Files, err
}

// Compute is Files, also saying why measurement.tdx.cbor is absent. A
// firmware without TDX metadata (ErrNotTDX) is not an error: the image can
// still boot on GCP or without TDX, it only has no TDX measurements.
func Compute(dir string) (Set, error) {
	var out []File
	var js jsonMeasurements
	var set Set
	uki := filepath.Join(dir, UKIFileName)
	if _, err := os.Stat(uki); err == nil {
		d, err := UKIAuthenticodeSHA256(uki)
		if err != nil {
			return Set{}, err
		}
		g, err := GCPMaterial(d)
		if err != nil {
			return Set{}, err
		}
		out = append(out, File{GCPFileName, g})
		js.UKIAuthSHA256 = d
	} else if !errors.Is(err, os.ErrNotExist) {
		return Set{}, err
	}
	md, err := ReadMetadata(dir)
	if err != nil {
		return Set{}, err
	}
	if md.BIOS == "" {
		set.NoTDX = filepath.Join(dir, "metadata.json") + ": no firmware (\"bios\" is empty)"
	} else {
		f, err := tdxFiles(dir, &js)
		switch {
		case errors.Is(err, ErrNotTDX):
			set.NoTDX = err.Error()
		case err != nil:
			return Set{}, err
		default:
			out = append(out, f)
		}
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(js); err != nil {
		return Set{}, err
	}
	out = append(out, File{JSONFileName, b.Bytes()})
	// Sorted by name: measurement.gcp.cbor, measurement.tdx.cbor, measurements.json.
	sortFiles(out)
	set.Files = out
	return set, nil
}

// tdxFiles computes measurement.tdx.cbor and fills the TDX part of js.
func tdxFiles(dir string, js *jsonMeasurements) (File, error) {
	img, _, kf, err := OpenImage(dir)
	if err != nil {
		return File{}, err
	}
	defer kf.Close()
	m, err := Material(img)
	if err != nil {
		return File{}, err
	}
	cfv, err := img.Firmware.CFV()
	if err != nil {
		return File{}, err
	}
	js.OVMFVariant = m.OVMFVariant
	js.MeasuredCmdline = MeasuredCmdline(img.Cmdline, InitrdSuffix)
	js.CmdlineSHA384, js.InitrdSHA384, js.KernelAuthenticode = m.CmdlineSHA384, m.InitrdSHA384, m.KernelAuthenticode
	js.CFVSHA384, js.TDHOBWitness = sha384(cfv), m.TDHOBWitness
	js.MRTDSinglePass, js.MRTDTwoPass = m.MRTDSinglePass, m.MRTDTwoPass
	for _, s := range DefaultShapes {
		p, err := Predict(*img, s)
		if err != nil {
			return File{}, err
		}
		order, _ := s.PageOrder()
		js.Shapes = append(js.Shapes, jsonShape{
			MemoryBytes: s.MemoryBytes, QEMUVersion: s.QEMUVersion, PageOrder: order.String(),
			MRTD: p.MRTD, TDHOBSHA384: p.Events[0].Digest, RTMR1: p.RTMR[1], RTMR2: p.RTMR[2],
			RTMR0Comment: "depends on the VM's ACPI tables: imgpost measure --event-log",
		})
	}
	return File{TDXFileName, m.CBOR()}, nil
}

func sortFiles(fs []File) {
	for i := 1; i < len(fs); i++ {
		for j := i; j > 0 && fs[j].Name < fs[j-1].Name; j-- {
			fs[j], fs[j-1] = fs[j-1], fs[j]
		}
	}
}

// Check recomputes the measurement files of dir and compares them with the
// ones on disk; it reports the first file that is missing or differs.
func Check(dir string) error {
	s, err := Compute(dir)
	if err != nil {
		return err
	}
	return s.Check(dir)
}

// ErrDiffers is wrapped by Check's error for a measurement file that is not
// the recomputed one.
var ErrDiffers = errors.New("differs from the measurements recomputed from the image")

// Check compares the files of s with those in dir; it reports the first
// file that is missing or differs.
func (s Set) Check(dir string) error {
	for _, f := range s.Files {
		p := filepath.Join(dir, f.Name)
		got, err := readLimited(p, 1<<20)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, f.Data) {
			return fmt.Errorf("%s: %w", p, ErrDiffers)
		}
	}
	return nil
}
