#!/usr/bin/env python3
"""Independent reading of a TDX firmware's TDVF metadata (test oracle).

Written from the TDX Virtual Firmware Design Guide and QEMU's
hw/i386/pc_sysfw_ovmf.c / tdvf.c behaviour, separately from the Go code:
prints the sections and the MRTD for both QEMU page orders.
usage: tdvf_mrtd.py FIRMWARE
"""
import hashlib
import struct
import sys
import uuid

FOOTER = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
TDX_META = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le


def sections(fw):
    pos = len(fw) - 32 - 16
    assert fw[pos:pos + 16] == FOOTER, "no table footer"
    (total,) = struct.unpack_from("<H", fw, pos - 2)
    table = fw[pos + 16 - total:pos - 2]
    while len(table) >= 18:
        guid = table[-16:]
        (n,) = struct.unpack_from("<H", table, len(table) - 18)
        if guid == TDX_META:
            body = table[len(table) - n:len(table) - 18]
            (off,) = struct.unpack_from("<I", body, len(body) - 4)
            break
        table = table[:len(table) - n]
    else:
        raise SystemExit("no TDX metadata entry")
    base = len(fw) - off
    sig, _length, version, count = struct.unpack_from("<4sIII", fw, base)
    assert sig == b"TDVF" and version == 1
    return [struct.unpack_from("<IIQQII", fw, base + 16 + 32 * i) for i in range(count)]


def mrtd(fw, secs, two_pass):
    h = hashlib.sha384()

    def add(addr, page):
        h.update(b"MEM.PAGE.ADD".ljust(16, b"\0") + struct.pack("<Q", addr + page * 4096) + bytes(104))

    def ext(addr, page, off, raw):
        for i in range(16):
            o = page * 4096 + i * 256
            h.update(b"MR.EXTEND".ljust(16, b"\0") + struct.pack("<Q", addr + o) + bytes(104))
            chunk = fw[off + o:off + min(o + 256, raw)] if o < raw else b""
            h.update(chunk.ljust(256, b"\0"))

    for off, raw, addr, size, _typ, attr in secs:
        pages = size // 4096
        doadd = not attr & 2
        doext = attr & 1
        if two_pass:
            for p in range(pages):
                if doadd:
                    add(addr, p)
            for p in range(pages):
                if doext:
                    ext(addr, p, off, raw)
        else:
            for p in range(pages):
                if doadd:
                    add(addr, p)
                if doext:
                    ext(addr, p, off, raw)
    return h.hexdigest()


def main():
    fw = open(sys.argv[1], "rb").read()
    secs = sections(fw)
    for s in secs:
        print("section data_offset=%#x raw=%#x addr=%#x size=%#x type=%d attr=%#x" % s)
    print("single_pass", mrtd(fw, secs, False))
    print("two_pass", mrtd(fw, secs, True))
    for off, raw, _a, _s, typ, _at in secs:
        if typ == 1:
            print("cfv_sha384", hashlib.sha384(fw[off:off + raw]).hexdigest())


if __name__ == "__main__":
    main()
