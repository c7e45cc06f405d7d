package dist

import (
	"path/filepath"

	"github.com/Dstack-TEE/meta-dstack/internal/atomicfile"
)

// outputs are dist's big outputs (disk.raw, the two archives), created under
// their temporary names as dist starts so that a failure at any stage
// removes them; nil when not made.
type outputs struct {
	disk, gcp, tar *atomicfile.File
}

// newOutputs creates the big outputs dist will write.
func newOutputs(o Options, stage, sdir, name string) (*outputs, error) {
	outs := &outputs{}
	var err error
	if !o.NoGCP {
		if outs.disk, err = atomicfile.Create(filepath.Join(sdir, GCPDir, DiskName), 0o644); err != nil {
			return nil, err
		}
		if outs.gcp, err = atomicfile.Create(filepath.Join(stage, name+"-gcp.tar.gz"), 0o644); err != nil {
			outs.abort()
			return nil, err
		}
	}
	if !o.NoTarball {
		if outs.tar, err = atomicfile.Create(filepath.Join(stage, name+".tar.gz"), 0o644); err != nil {
			outs.abort()
			return nil, err
		}
	}
	return outs, nil
}

// abort removes the outputs not committed.
func (outs *outputs) abort() {
	for _, f := range []*atomicfile.File{outs.disk, outs.gcp, outs.tar} {
		if f != nil {
			f.Abort()
		}
	}
}
