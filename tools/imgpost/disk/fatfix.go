package disk

import (
	"encoding/binary"
	"fmt"
)

// fixFAT corrects two things go-diskfs v1.9.4 leaves that fsck.fat reports:
//   - the ".." entry of a directory whose parent is the root must point to
//     cluster 0 (go-diskfs writes the root's cluster number);
//   - the FSInfo free-cluster count and next-free hint are left "unknown".
//
// It works on the on-disk structures directly (through the sparse backend),
// for a filesystem whose directories each fit in one cluster, as ours do.
func fixFAT(sb *sparseBackend, start int64) error {
	bs := make([]byte, SectorSize)
	if _, err := sb.ReadAt(bs, start); err != nil {
		return fmt.Errorf("ESP: read boot sector: %w", err)
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:13]))
	spc := int64(bs[13])
	reserved := int64(binary.LittleEndian.Uint16(bs[14:16]))
	nfats := int64(bs[16])
	totalSectors := int64(binary.LittleEndian.Uint32(bs[32:36]))
	fatSectors := int64(binary.LittleEndian.Uint32(bs[36:40]))
	rootCluster := binary.LittleEndian.Uint32(bs[44:48])
	fsinfo := int64(binary.LittleEndian.Uint16(bs[48:50]))
	backup := int64(binary.LittleEndian.Uint16(bs[50:52]))
	if bps != SectorSize || spc == 0 || nfats != 2 {
		return fmt.Errorf("ESP: unexpected FAT32 geometry (%d bytes/sector, %d sectors/cluster, %d FATs)", bps, spc, nfats)
	}
	dataStart := start + (reserved+nfats*fatSectors)*bps
	clusterBytes := spc * bps
	clusterOff := func(c uint32) int64 { return dataStart + int64(c-2)*clusterBytes }
	dataClusters := (totalSectors - reserved - nfats*fatSectors) / spc

	// ".." of each subdirectory of the root.
	root := make([]byte, clusterBytes)
	if _, err := sb.ReadAt(root, clusterOff(rootCluster)); err != nil {
		return fmt.Errorf("ESP: read root directory: %w", err)
	}
	for i := 0; i+32 <= len(root); i += 32 {
		e := root[i : i+32]
		if e[0] == 0 {
			break
		}
		if e[0] == 0xe5 || e[11] == 0x0f || e[11]&0x10 == 0 || e[11]&0x08 != 0 {
			continue
		}
		c := uint32(binary.LittleEndian.Uint16(e[20:22]))<<16 | uint32(binary.LittleEndian.Uint16(e[26:28]))
		if c < 2 || int64(c) >= dataClusters+2 {
			return fmt.Errorf("ESP: directory %q has bad cluster %d", e[0:11], c)
		}
		dot := make([]byte, 64)
		if _, err := sb.ReadAt(dot, clusterOff(c)); err != nil {
			return fmt.Errorf("ESP: read directory: %w", err)
		}
		if string(dot[32:43]) != "..         " {
			return fmt.Errorf("ESP: directory %q has no \"..\" entry in its second slot", e[0:11])
		}
		if _, err := sb.WriteAt([]byte{0, 0}, clusterOff(c)+32+20); err != nil {
			return err
		}
		if _, err := sb.WriteAt([]byte{0, 0}, clusterOff(c)+32+26); err != nil {
			return err
		}
	}

	// Free-cluster count and next-free hint from the primary FAT.
	fat := make([]byte, 4*(dataClusters+2))
	if _, err := sb.ReadAt(fat, start+reserved*bps); err != nil {
		return fmt.Errorf("ESP: read FAT: %w", err)
	}
	var free, last uint32
	for c := uint32(2); int64(c) < dataClusters+2; c++ {
		if binary.LittleEndian.Uint32(fat[4*c:])&0x0fffffff == 0 {
			free++
		} else {
			last = c
		}
	}
	var info [8]byte
	binary.LittleEndian.PutUint32(info[0:4], free)
	binary.LittleEndian.PutUint32(info[4:8], last+1)
	for _, sec := range []int64{fsinfo, backup + fsinfo} {
		if _, err := sb.WriteAt(info[:], start+sec*bps+488); err != nil {
			return fmt.Errorf("ESP: write FSInfo: %w", err)
		}
	}
	return nil
}

// fatFSSize returns the size to give fat32.Create for a partition of
// partSize bytes: the largest size, at most partSize and a whole number of
// sectors, for which go-diskfs v1.9.4's sectors-per-FAT formula (replicated
// here) leaves room in the FAT for every cluster plus the two reserved
// entries. (Its closed form misses the two reserved entries for some sizes,
// e.g. 64 MiB, and fsck.fat then rejects the filesystem.)
func fatFSSize(partSize int64) (int64, error) {
	const reserved = 32
	for size := partSize; size > partSize-64*SectorSize; size -= SectorSize {
		var clusterBytes int64
		switch {
		case size <= 260*MiB:
			clusterBytes = 512
		case size <= 8*GiB:
			clusterBytes = 4096
		default:
			return 0, fmt.Errorf("ESP of %d bytes is too large", partSize)
		}
		spc := clusterBytes / SectorSize
		total := size / SectorSize
		denom := SectorSize*spc + 8
		spf := (4*(total-reserved) + denom - 1) / denom
		clusters := (total - reserved - 2*spf) / spc
		if spf*SectorSize/4 >= clusters+2 && clusters >= 65525 {
			return size, nil
		}
	}
	return 0, fmt.Errorf("no FAT32 layout fits an ESP of %d bytes", partSize)
}
