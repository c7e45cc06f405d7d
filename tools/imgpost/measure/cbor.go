package measure

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// A tiny CBOR (RFC 8949) subset: unsigned integers, byte strings, text
// strings and maps with text keys — what dstack's measurement files hold.
// Encoding is deterministic and matches ciborium's serde output for the
// structs dstack-types defines: shortest-form integers and lengths,
// definite-length maps with keys in the struct's field order.

// CBORValue is a decoded CBOR item: uint64, []byte, string or *CBORMap.
type CBORValue any

// CBORMap is a CBOR map with text keys, in encoding order.
type CBORMap struct {
	Keys   []string
	Values []CBORValue
}

// Get returns the value of key k.
func (m *CBORMap) Get(k string) (CBORValue, bool) {
	for i, key := range m.Keys {
		if key == k {
			return m.Values[i], true
		}
	}
	return nil, false
}

// Add appends a key and value.
func (m *CBORMap) Add(k string, v CBORValue) *CBORMap {
	m.Keys = append(m.Keys, k)
	m.Values = append(m.Values, v)
	return m
}

func cborHead(out []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(out, m|byte(n))
	case n <= math.MaxUint8:
		return append(out, m|24, byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(out, m|25), uint16(n))
	case n <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(out, m|26), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(out, m|27), n)
}

// EncodeCBOR encodes v (uint64, uint32, int >= 0, []byte, string, *CBORMap).
func EncodeCBOR(v CBORValue) ([]byte, error) {
	return appendCBOR(nil, v)
}

func appendCBOR(out []byte, v CBORValue) ([]byte, error) {
	switch x := v.(type) {
	case uint64:
		return cborHead(out, 0, x), nil
	case uint32:
		return cborHead(out, 0, uint64(x)), nil
	case int:
		if x < 0 {
			return nil, errors.New("cbor: negative integers are not supported")
		}
		return cborHead(out, 0, uint64(x)), nil
	case []byte:
		return append(cborHead(out, 2, uint64(len(x))), x...), nil
	case string:
		return append(cborHead(out, 3, uint64(len(x))), x...), nil
	case *CBORMap:
		if len(x.Keys) != len(x.Values) {
			return nil, errors.New("cbor: map with unequal keys and values")
		}
		out = cborHead(out, 5, uint64(len(x.Keys)))
		var err error
		for i, k := range x.Keys {
			out = append(cborHead(out, 3, uint64(len(k))), k...)
			if out, err = appendCBOR(out, x.Values[i]); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("cbor: cannot encode %T", v)
}

const (
	maxCBORDepth = 8
	maxCBORItems = 1024
)

// DecodeCBOR decodes exactly one item filling b. It accepts only the
// subset above, in definite-length form, and rejects duplicate map keys,
// non-text keys, over-long nesting and trailing bytes.
func DecodeCBOR(b []byte) (CBORValue, error) {
	d := cborDecoder{b: b}
	v, err := d.item(0)
	if err != nil {
		return nil, err
	}
	if d.off != len(b) {
		return nil, fmt.Errorf("cbor: %d trailing bytes", len(b)-d.off)
	}
	return v, nil
}

type cborDecoder struct {
	b     []byte
	off   int
	items int
}

func (d *cborDecoder) head() (major byte, n uint64, err error) {
	if d.off >= len(d.b) {
		return 0, 0, errors.New("cbor: truncated")
	}
	c := d.b[d.off]
	d.off++
	major, info := c>>5, c&31
	switch {
	case info < 24:
		return major, uint64(info), nil
	case info <= 27:
		w := 1 << (info - 24)
		if len(d.b)-d.off < w {
			return 0, 0, errors.New("cbor: truncated length")
		}
		var v uint64
		for _, x := range d.b[d.off : d.off+w] {
			v = v<<8 | uint64(x)
		}
		d.off += w
		return major, v, nil
	}
	return 0, 0, fmt.Errorf("cbor: unsupported additional information %d (indefinite length or reserved) at offset %d", info, d.off-1)
}

func (d *cborDecoder) item(depth int) (CBORValue, error) {
	if depth > maxCBORDepth {
		return nil, errors.New("cbor: nested too deep")
	}
	if d.items++; d.items > maxCBORItems {
		return nil, errors.New("cbor: too many items")
	}
	at := d.off
	major, n, err := d.head()
	if err != nil {
		return nil, err
	}
	switch major {
	case 0:
		return n, nil
	case 2, 3:
		if n > uint64(len(d.b)-d.off) {
			return nil, fmt.Errorf("cbor: string of %d bytes at offset %d runs past the end", n, at)
		}
		s := d.b[d.off : d.off+int(n)]
		d.off += int(n)
		if major == 2 {
			return append([]byte(nil), s...), nil
		}
		return string(s), nil
	case 5:
		if n > uint64(len(d.b)-d.off) {
			return nil, fmt.Errorf("cbor: map of %d entries at offset %d cannot fit", n, at)
		}
		m := &CBORMap{}
		for i := uint64(0); i < n; i++ {
			k, err := d.item(depth + 1)
			if err != nil {
				return nil, err
			}
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("cbor: map key at offset %d is not a text string", at)
			}
			if _, dup := m.Get(ks); dup {
				return nil, fmt.Errorf("cbor: duplicate map key %q", ks)
			}
			v, err := d.item(depth + 1)
			if err != nil {
				return nil, err
			}
			m.Add(ks, v)
		}
		return m, nil
	}
	return nil, fmt.Errorf("cbor: unsupported major type %d at offset %d", major, at)
}
