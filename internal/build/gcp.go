package build

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// GCPFeatures are the guest OS features the image is created with: UEFI boot
// (the disk holds only an EFI system partition with the UKI), Intel TDX, and
// the gVNIC and multi-queue SCSI/NVMe drivers the kernel carries.
const GCPFeatures = "UEFI_COMPATIBLE,VIRTIO_SCSI_MULTIQUEUE,GVNIC,TDX_CAPABLE"

// GCPOutputs are the two files `mage gcp` needs for a dist name like dstack-0.5.5.
type GCPOutputs struct {
	Disk    string // images/<dist>-<ver>/gcp/disk.raw
	Tarball string // images/<dist>-<ver>-gcp.tar.gz
}

// GCPFiles returns the GCP outputs' paths under imagesDir for dist.
func GCPFiles(imagesDir, dist string) GCPOutputs {
	return GCPOutputs{
		Disk:    filepath.Join(imagesDir, dist, "gcp", "disk.raw"),
		Tarball: filepath.Join(imagesDir, dist+"-gcp.tar.gz"),
	}
}

// Missing lists the outputs that do not exist.
func (o GCPOutputs) Missing() []string {
	var m []string
	for _, p := range []string{o.Disk, o.Tarball} {
		if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
			m = append(m, p)
		}
	}
	return m
}

// GCPImageName turns a dist name into a valid Compute Engine image name
// (lower-case letters, digits and dashes, starting with a letter).
func GCPImageName(dist string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(dist) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	n := strings.Trim(b.String(), "-")
	if n == "" || n[0] < 'a' || n[0] > 'z' {
		n = "img-" + n
	}
	if len(n) > 63 {
		n = strings.TrimRight(n[:63], "-")
	}
	return n
}

// GCPCommands returns the commands a user runs to upload the tarball, create
// a TDX-capable image from it and start a Confidential VM with it. bucket is
// a gs:// URL (a placeholder when empty).
func GCPCommands(tarball, dist, bucket, zone string) string {
	if bucket == "" {
		bucket = "gs://YOUR_BUCKET"
	}
	if zone == "" {
		zone = "us-central1-a"
	}
	bucket = strings.TrimRight(bucket, "/")
	obj := bucket + "/" + filepath.Base(tarball)
	img := GCPImageName(dist)
	var b strings.Builder
	fmt.Fprintf(&b, "gcloud storage cp %s %s\n", Quote(tarball), obj)
	fmt.Fprintf(&b, "gcloud compute images create %s \\\n    --source-uri=%s \\\n    --guest-os-features=%s\n", img, obj, GCPFeatures)
	fmt.Fprintf(&b, "gcloud compute instances create %s-vm \\\n    --zone=%s --machine-type=c3-standard-4 \\\n"+
		"    --confidential-compute-type=TDX --maintenance-policy=TERMINATE \\\n"+
		"    --no-shielded-secure-boot --image=%s \\\n"+
		"    --create-disk=name=%s-data,size=20GB,auto-delete=yes\n", img, zone, img, img)
	return b.String()
}

// GCP is `mage gcp`: reuse the GCP disk and tarball of the prod dist when
// both exist, else build them; then print the gcloud commands.
// GCS_BUCKET and GCP_ZONE fill in the commands.
func GCP(ctx context.Context, e *Env) error {
	s, err := Configure(e)
	if err != nil {
		return err
	}
	c := s.Config
	if !c.EnableGCP {
		return fmt.Errorf("ENABLE_GCP_IMAGE=0: the GCP image is switched off; unset it to build %s", GCPFiles(c.ImagesDir, c.Values.DistName()).Tarball)
	}
	dist := c.Values.DistName()
	out := GCPFiles(c.ImagesDir, dist)
	if miss := out.Missing(); len(miss) == 0 {
		fmt.Fprintf(e.Stdout, "==> Reusing %s and %s (delete them to rebuild)\n", out.Disk, out.Tarball)
	} else {
		fmt.Fprintf(e.Stdout, "==> Building: %s missing\n", strings.Join(miss, ", "))
		p, err := NewPlan(c)
		if err != nil {
			return err
		}
		p.Notes = append(s.Notes, p.Notes...)
		x := &Executor{Stdout: e.Stdout, Stderr: e.Stderr, Dry: s.Dry, Environ: e.Environ}
		if err := x.Run(ctx, p); err != nil {
			return err
		}
		if miss := out.Missing(); len(miss) > 0 && !s.Dry {
			return fmt.Errorf("the build finished without the GCP outputs: %s missing (does the image class honour ENABLE_GCP_IMAGE?)", strings.Join(miss, ", "))
		}
	}
	fmt.Fprintf(e.Stdout, "\nGCP image files:\n  %s\n  %s\n\nUpload the tarball and create a TDX image (and a Confidential VM) with:\n\n%s",
		out.Disk, out.Tarball, GCPCommands(out.Tarball, dist, e.get("GCS_BUCKET"), e.get("GCP_ZONE")))
	return nil
}
