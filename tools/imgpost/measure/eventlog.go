package measure

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// TCG algorithm identifiers (TPM_ALG_ID).
const (
	AlgSHA1   = 0x0004
	AlgSHA256 = 0x000B
	AlgSHA384 = 0x000C
	AlgSHA512 = 0x000D
)

// Event types used in the logs this package reads and predicts
// (TCG PC Client Platform Firmware Profile; UEFI event types are
// EV_EFI_EVENT_BASE 0x80000000 + n).
const (
	EvNoAction                 = 0x00000003
	EvSeparator                = 0x00000004
	EvAction                   = 0x00000005
	EvEventTag                 = 0x00000006
	EvPlatformConfigFlags      = 0x0000000A
	EvEFIVariableDriverConfig  = 0x80000001
	EvEFIVariableBoot          = 0x80000002
	EvEFIBootServicesApp       = 0x80000003
	EvEFIAction                = 0x80000007
	EvEFIPlatformFirmwareBlob2 = 0x8000000A
	EvEFIHandoffTables2        = 0x8000000B
	EvDstackRuntime            = 0x08000001
	maxEventLogSize            = 16 << 20
	maxEventDataSize           = 1 << 20
	maxEvents                  = 1 << 16
	maxDigestsPerEvent         = 8
)

// Event is one measured event: the register it extends (RTMR index for
// TDX, PCR index for a TPM), its type, the digest of the log's bank, and
// its event data.
type Event struct {
	Index  uint32 `json:"index"`
	Type   uint32 `json:"type"`
	Digest []byte `json:"-"`
	Data   []byte `json:"-"`
	// Name is a label: dstack's names for ACPI DATA and runtime events, or
	// this package's description of a predicted event.
	Name string `json:"name,omitempty"`
}

// Log is a parsed event log: the events of one digest bank, in order.
type Log struct {
	Alg    uint16 // the bank's TPM_ALG_ID
	CCEL   bool   // a TDX CC event log: Index is an RTMR index (MR index - 1)
	Events []Event
}

func algSize(alg uint16) int {
	switch alg {
	case AlgSHA1:
		return 20
	case AlgSHA256:
		return 32
	case AlgSHA384:
		return 48
	case AlgSHA512:
		return 64
	}
	return 0
}

// ParseTCG2 parses a binary crypto-agile event log (TCG2: a TCG_PCR_EVENT
// header holding the "Spec ID Event03" structure, then TCG_PCR_EVENT2
// records) as firmware writes it: a vTPM's binary_bios_measurements, or a
// TDX CCEL (where the index is the CC MR index: 1..4 = RTMR0..3, stored
// here as 0..3). It keeps the digests of bank alg. Parsing stops at the end
// of the data or at the 0xFF/0x00 padding of a CCEL area.
func ParseTCG2(b []byte, alg uint16, ccel bool) (*Log, error) {
	if len(b) > maxEventLogSize {
		return nil, fmt.Errorf("event log: %d bytes, more than %d", len(b), maxEventLogSize)
	}
	le := binary.LittleEndian
	r := reader{b: b}
	// TCG_PCR_EVENT header (SHA-1 format).
	r.u32("header PCR index")
	if t := r.u32("header event type"); r.err == nil && t != EvNoAction {
		return nil, fmt.Errorf("event log: first event has type %#x, want EV_NO_ACTION (not a crypto-agile log)", t)
	}
	r.bytes(20, "header digest")
	spec := r.bytes(int(r.u32("header event size")), "header event")
	if r.err != nil {
		return nil, r.err
	}
	if len(spec) < 29 || string(spec[:16]) != "Spec ID Event03\x00" {
		return nil, errors.New("event log: no \"Spec ID Event03\" header: not a crypto-agile (TCG2) log")
	}
	nalg := le.Uint32(spec[24:])
	if nalg == 0 || nalg > maxDigestsPerEvent || 28+int(nalg)*4 > len(spec) {
		return nil, fmt.Errorf("event log: Spec ID event lists %d algorithms", nalg)
	}
	sizes := map[uint16]int{}
	for i := 0; i < int(nalg); i++ {
		a, s := le.Uint16(spec[28+4*i:]), int(le.Uint16(spec[30+4*i:]))
		if s == 0 || s > 64 {
			return nil, fmt.Errorf("event log: algorithm %#x has digest size %d", a, s)
		}
		if k := algSize(a); k != 0 && k != s {
			return nil, fmt.Errorf("event log: algorithm %#x has digest size %d, want %d", a, s, k)
		}
		sizes[a] = s
	}
	if _, ok := sizes[alg]; !ok {
		return nil, fmt.Errorf("event log: no digest bank for algorithm %#x", alg)
	}
	log := &Log{Alg: alg, CCEL: ccel}
	for r.off < len(b) {
		rest := b[r.off:]
		if len(rest) < 8 || allBytes(rest[:8], 0xFF) || allBytes(rest[:8], 0x00) {
			break // end of a CCEL area (0xFF fill) or of a zeroed buffer
		}
		if len(log.Events) >= maxEvents {
			return nil, fmt.Errorf("event log: more than %d events", maxEvents)
		}
		at := r.off
		idx := r.u32("PCR index")
		typ := r.u32("event type")
		n := r.u32("digest count")
		if r.err == nil && (n == 0 || n > maxDigestsPerEvent) {
			return nil, fmt.Errorf("event log: event %d at offset %#x has %d digests", len(log.Events), at, n)
		}
		var digest []byte
		for i := uint32(0); i < n && r.err == nil; i++ {
			a := r.u16("digest algorithm")
			s, ok := sizes[a]
			if r.err == nil && !ok {
				return nil, fmt.Errorf("event log: event %d at offset %#x uses algorithm %#x not in the header", len(log.Events), at, a)
			}
			d := r.bytes(s, "digest")
			if a == alg {
				digest = append([]byte(nil), d...)
			}
		}
		size := r.u32("event size")
		if r.err == nil && size > maxEventDataSize {
			return nil, fmt.Errorf("event log: event %d at offset %#x has %d bytes of data", len(log.Events), at, size)
		}
		data := r.bytes(int(size), "event data")
		if r.err != nil {
			return nil, fmt.Errorf("%w (event %d at offset %#x)", r.err, len(log.Events), at)
		}
		if typ == EvNoAction {
			continue // not extended (e.g. StartupLocality, SP800-155 events)
		}
		if digest == nil {
			return nil, fmt.Errorf("event log: event %d at offset %#x has no digest for algorithm %#x", len(log.Events), at, alg)
		}
		if ccel {
			if idx < 1 || idx > 4 {
				return nil, fmt.Errorf("event log: event %d at offset %#x has CC MR index %d, want 1..4 (RTMR0..3)", len(log.Events), at, idx)
			}
			idx--
		} else if idx > 23 {
			return nil, fmt.Errorf("event log: event %d at offset %#x has PCR index %d", len(log.Events), at, idx)
		}
		log.Events = append(log.Events, Event{Index: idx, Type: typ, Digest: digest, Data: append([]byte(nil), data...)})
	}
	return log, nil
}

func allBytes(b []byte, v byte) bool {
	for _, c := range b {
		if c != v {
			return false
		}
	}
	return true
}

type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) bytes(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("event log: truncated %s at offset %#x", what, r.off)
		return nil
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s
}

func (r *reader) u32(what string) uint32 {
	if s := r.bytes(4, what); s != nil {
		return binary.LittleEndian.Uint32(s)
	}
	return 0
}

func (r *reader) u16(what string) uint16 {
	if s := r.bytes(2, what); s != nil {
		return binary.LittleEndian.Uint16(s)
	}
	return 0
}

// dstackEvent is one entry of the JSON event log dstack's guest agent
// returns (GetQuoteResponse.event_log).
type dstackEvent struct {
	IMR          *uint32 `json:"imr"`
	EventType    *uint32 `json:"event_type"`
	Digest       string  `json:"digest"`
	Event        string  `json:"event"`
	EventPayload string  `json:"event_payload"`
}

// ParseDstackJSON parses dstack's JSON event log: either the array itself,
// or a GetQuoteResponse object whose "event_log" holds it as a string.
// Runtime (RTMR3) events without a digest get dstack's V1 runtime digest:
// SHA-384(event_type LE || ":" || name || ":" || payload).
func ParseDstackJSON(b []byte) (*Log, error) {
	if len(b) > maxEventLogSize {
		return nil, fmt.Errorf("event log: %d bytes, more than %d", len(b), maxEventLogSize)
	}
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '{' {
		var resp struct {
			EventLog *string `json:"event_log"`
		}
		if err := json.Unmarshal(b, &resp); err != nil {
			return nil, fmt.Errorf("event log: %w", err)
		}
		if resp.EventLog == nil {
			return nil, errors.New("event log: JSON object without an \"event_log\" string")
		}
		b = []byte(*resp.EventLog)
	}
	var raw []dstackEvent
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	if len(raw) > maxEvents {
		return nil, fmt.Errorf("event log: %d events, more than %d", len(raw), maxEvents)
	}
	log := &Log{Alg: AlgSHA384, CCEL: true}
	for i, e := range raw {
		if e.IMR == nil || e.EventType == nil {
			return nil, fmt.Errorf("event log: event %d lacks \"imr\" or \"event_type\"", i)
		}
		if *e.IMR > 3 {
			return nil, fmt.Errorf("event log: event %d has imr %d, want 0..3", i, *e.IMR)
		}
		payload, err := hex.DecodeString(e.EventPayload)
		if err != nil {
			return nil, fmt.Errorf("event log: event %d: event_payload: %w", i, err)
		}
		var digest []byte
		switch {
		case e.Digest != "":
			if digest, err = hex.DecodeString(e.Digest); err != nil || len(digest) != 48 {
				return nil, fmt.Errorf("event log: event %d: digest %q is not 48 bytes of hex", i, e.Digest)
			}
		case *e.EventType == EvDstackRuntime:
			var pre []byte
			pre = binary.LittleEndian.AppendUint32(pre, EvDstackRuntime)
			pre = append(pre, ':')
			pre = append(pre, e.Event...)
			pre = append(pre, ':')
			pre = append(pre, payload...)
			s := sha512.Sum384(pre)
			digest = s[:]
		default:
			return nil, fmt.Errorf("event log: event %d has no digest", i)
		}
		log.Events = append(log.Events, Event{Index: *e.IMR, Type: *e.EventType, Digest: digest, Data: payload, Name: e.Event})
	}
	return log, nil
}

// ParseEventLog detects the format of b (dstack JSON, or binary TCG2/CCEL)
// and parses it. For a binary log, ccel says how to read the index field.
func ParseEventLog(b []byte, ccel bool) (*Log, error) {
	t := bytes.TrimSpace(b)
	if len(t) > 0 && (t[0] == '[' || t[0] == '{') {
		return ParseDstackJSON(b)
	}
	alg := uint16(AlgSHA384)
	return ParseTCG2(b, alg, ccel)
}

// Replay extends each register from zero with the log's events and returns
// the final values by index (RTMR0..3 for a CC log, PCR0..23 for a TPM log).
func (l *Log) Replay() map[uint32][]byte {
	out := map[uint32][]byte{}
	size := algSize(l.Alg)
	for _, e := range l.Events {
		cur, ok := out[e.Index]
		if !ok {
			cur = make([]byte, size)
		}
		out[e.Index] = extend(l.Alg, cur, e.Digest)
	}
	return out
}

func extend(alg uint16, cur, digest []byte) []byte {
	switch alg {
	case AlgSHA256:
		s := sha256.Sum256(append(append([]byte(nil), cur...), digest...))
		return s[:]
	default:
		s := sha512.Sum384(append(append([]byte(nil), cur...), digest...))
		return s[:]
	}
}

// ReplayDigests extends a register from zero with digests (SHA-384): an
// RTMR's value after the given events.
func ReplayDigests(digests [][]byte) []byte {
	cur := make([]byte, 48)
	for _, d := range digests {
		cur = extend(AlgSHA384, cur, d)
	}
	return cur
}
