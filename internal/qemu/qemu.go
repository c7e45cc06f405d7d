// Package qemu runs a test VM: qemu-system-x86_64, machine q35, OVMF UEFI
// firmware, TCG by default, with the serial console captured.
//
// Typical use:
//
//	vm, err := qemu.Start(qemu.Config{
//		Drives:  []qemu.Drive{{Path: "disk.raw", ReadOnly: true}},
//		Console: os.Stderr, // optional live copy of the serial console
//	})
//	if err != nil { ... }
//	defer vm.Close()
//	if _, err := vm.WaitFor(regexp.MustCompile(`CMDLINE-END`), 2*time.Minute); err != nil { ... }
//	log := vm.Output()
//
// or, for a boot that powers off by itself, qemu.Run(cfg, timeout).
//
// The VM always runs with -no-reboot (a guest reboot or panic-reboot ends
// QEMU), -nodefaults (no NIC, no VGA), no display and no monitor; the first
// serial port (ttyS0, COM1) is the console. The OVMF variable store is copied
// to a temporary file so the firmware can write it; Close removes it.
package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Binary is the QEMU system emulator started by Start.
var Binary = "qemu-system-x86_64"

// OVMF firmware pairs searched by FindOVMF, in order (Debian's ovmf package).
var ovmfPairs = [][2]string{
	{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
	{"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
	{"/usr/share/ovmf/OVMF.fd", ""},
	{"/usr/share/qemu/OVMF.fd", ""},
}

// FindOVMF returns the paths of an installed OVMF code image and its
// variable-store template (vars is "" for a combined image, to be used with
// Config.BIOS). It prefers the non-secure-boot 4 MiB build.
func FindOVMF() (code, vars string, err error) {
	for _, p := range ovmfPairs {
		if _, err := os.Stat(p[0]); err != nil {
			continue
		}
		if p[1] != "" {
			if _, err := os.Stat(p[1]); err != nil {
				continue
			}
		}
		return p[0], p[1], nil
	}
	return "", "", errors.New("qemu: no OVMF firmware found (install Debian package ovmf)")
}

// Interface is how a drive is attached to the guest.
type Interface string

// Drive interfaces.
const (
	Virtio Interface = "virtio" // virtio-blk PCI: /dev/vdX in the guest
	NVMe   Interface = "nvme"   // NVMe controller, one namespace: /dev/nvmeXn1
	IDE    Interface = "ide"    // q35's AHCI (SATA) controller: /dev/sdX
)

// Drive is a disk image given to the guest.
type Drive struct {
	Path      string    // image file
	Interface Interface // default Virtio
	Format    string    // QEMU format; default "raw"
	ReadOnly  bool      // attach read-only (the file is never written)
	Serial    string    // device serial; NVMe drives get "nvme<N>" if empty
}

// Config describes a VM. The zero value plus a Drive or a Kernel boots.
type Config struct {
	// MemoryMiB is the guest RAM; default 512.
	MemoryMiB int
	// CPUs is the number of virtual CPUs; default 1.
	CPUs int
	// Accel is QEMU's -accel value; default "tcg": on some hosts /dev/kvm
	// exists but guests die with "KVM internal error ... emulation failure",
	// so KVM is used only when asked for (or proven by a probe boot, as
	// internal/demo does).
	Accel string

	// Firmware is an OVMF code image for the first pflash unit and Vars the
	// variable-store template copied for the second; both default to
	// FindOVMF. BIOS instead passes a single combined firmware file with
	// -bios (for example a deploy dir's ovmf.fd); when set, Firmware and
	// Vars are ignored.
	Firmware, Vars, BIOS string

	// Kernel, Initrd and Append boot a kernel directly (-kernel, -initrd,
	// -append; OVMF loads it through fw_cfg). Add console=ttyS0 to Append to
	// see the kernel's output.
	Kernel, Initrd, Append string

	// Drives are attached in order.
	Drives []Drive

	// ExtraArgs are appended to QEMU's command line as they are.
	ExtraArgs []string

	// Console, when set, receives a live copy of the serial console.
	Console io.Writer
	// LogPath, when set, receives a copy of the serial console (written as
	// it arrives, so it survives a crash of the test).
	LogPath string
}

// VM is a running (or finished) QEMU.
type VM struct {
	cmd     *exec.Cmd
	tmpDir  string
	logFile *os.File
	stderr  bytes.Buffer // QEMU's own messages

	mu     sync.Mutex
	out    bytes.Buffer  // serial console so far
	notify chan struct{} // signalled (non-blocking) when out grows
	done   chan struct{} // closed when QEMU has exited and output is drained
	err    error         // QEMU's exit status, valid after done
}

// Args returns QEMU's command-line arguments for cfg; varsCopy is the
// writable variable store to use (ignored when cfg.BIOS is set).
func (cfg Config) Args(varsCopy string) ([]string, error) {
	mem := cfg.MemoryMiB
	if mem == 0 {
		mem = 512
	}
	cpus := cfg.CPUs
	if cpus == 0 {
		cpus = 1
	}
	accel := cfg.Accel
	if accel == "" {
		accel = "tcg"
	}
	args := []string{
		"-machine", "q35", "-accel", accel,
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-display", "none", "-monitor", "none",
		"-serial", "stdio", "-no-reboot",
	}
	if cfg.BIOS != "" {
		args = append(args, "-bios", cfg.BIOS)
	} else {
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+Escape(cfg.Firmware),
			"-drive", "if=pflash,format=raw,unit=1,file="+Escape(varsCopy))
	}
	if cfg.Kernel != "" {
		args = append(args, "-kernel", cfg.Kernel)
		if cfg.Initrd != "" {
			args = append(args, "-initrd", cfg.Initrd)
		}
		if cfg.Append != "" {
			args = append(args, "-append", cfg.Append)
		}
	} else if cfg.Initrd != "" || cfg.Append != "" {
		return nil, errors.New("qemu: Initrd/Append need Kernel")
	}
	nvme, named := 0, 0
	for i, d := range cfg.Drives {
		if d.Path == "" {
			return nil, fmt.Errorf("qemu: drive %d has no path", i)
		}
		format := d.Format
		if format == "" {
			format = "raw"
		}
		spec := "file=" + Escape(d.Path) + ",format=" + format
		if d.ReadOnly {
			spec += ",readonly=on"
		}
		switch d.Interface {
		case Virtio, "", IDE:
			iface, dev := "virtio", "virtio-blk-pci"
			if d.Interface == IDE {
				iface, dev = "ide", "ide-hd"
			}
			if d.Serial == "" {
				args = append(args, "-drive", spec+",if="+iface)
				break
			}
			// QEMU 7 refuses serial= on -drive: name the drive and give the
			// serial to its -device.
			id := fmt.Sprintf("disk%d", named)
			named++
			args = append(args, "-drive", spec+",if=none,id="+id,
				"-device", dev+",drive="+id+",serial="+Escape(d.Serial))
		case NVMe:
			id := fmt.Sprintf("nvme%d", nvme)
			serial := d.Serial
			if serial == "" {
				serial = id
			}
			nvme++
			args = append(args, "-drive", spec+",if=none,id="+id,
				"-device", "nvme,drive="+id+",serial="+Escape(serial))
		default:
			return nil, fmt.Errorf("qemu: drive %s: unknown interface %q", d.Path, d.Interface)
		}
	}
	return append(args, cfg.ExtraArgs...), nil
}

// Escape doubles commas, QEMU's option-value escape (a file name in
// -drive file=NAME,... must not end the value early).
func Escape(s string) string {
	var b bytes.Buffer
	for _, r := range s {
		if r == ',' {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Start checks the files cfg names, copies the OVMF variable store and
// starts QEMU. Call Close (or Kill) when done.
func Start(cfg Config) (*VM, error) {
	if _, err := exec.LookPath(Binary); err != nil {
		return nil, fmt.Errorf("qemu: %s not found (install Debian package qemu-system-x86): %w", Binary, err)
	}
	if cfg.BIOS == "" && (cfg.Firmware == "" || cfg.Vars == "") {
		code, vars, err := FindOVMF()
		if err != nil {
			return nil, err
		}
		if vars == "" {
			cfg.BIOS = code
		} else {
			if cfg.Firmware == "" {
				cfg.Firmware = code
			}
			if cfg.Vars == "" {
				cfg.Vars = vars
			}
		}
	}
	for _, f := range []string{cfg.BIOS, cfg.Kernel, cfg.Initrd} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("qemu: %w", err)
		}
	}
	for _, d := range cfg.Drives {
		if _, err := os.Stat(d.Path); err != nil {
			return nil, fmt.Errorf("qemu: drive: %w", err)
		}
	}
	vm := &VM{notify: make(chan struct{}, 1), done: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			vm.cleanup()
		}
	}()
	tmp, err := os.MkdirTemp("", "qemu-vm-")
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	vm.tmpDir = tmp
	varsCopy := ""
	if cfg.BIOS == "" {
		varsCopy = filepath.Join(tmp, "OVMF_VARS.fd")
		if err := copyFile(cfg.Vars, varsCopy); err != nil {
			return nil, err
		}
	}
	args, err := cfg.Args(varsCopy)
	if err != nil {
		return nil, err
	}
	if cfg.LogPath != "" {
		if vm.logFile, err = os.Create(cfg.LogPath); err != nil {
			return nil, fmt.Errorf("qemu: console log: %w", err)
		}
	}
	vm.cmd = exec.Command(Binary, args...)
	vm.cmd.Stdin = nil
	vm.cmd.Stderr = &vm.stderr
	stdout, err := vm.cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	if err := vm.cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemu: start %s: %w", Binary, err)
	}
	ok = true
	go vm.pump(stdout, cfg.Console)
	return vm, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("qemu: OVMF variable store: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("qemu: copy %s: %w", src, err)
	}
	return out.Close()
}

// pump copies the console into the buffer (and tees), then reaps QEMU.
func (vm *VM) pump(r io.Reader, tee io.Writer) {
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			vm.mu.Lock()
			vm.out.Write(buf[:n])
			vm.mu.Unlock()
			if vm.logFile != nil {
				vm.logFile.Write(buf[:n])
			}
			if tee != nil {
				tee.Write(buf[:n])
			}
			select {
			case vm.notify <- struct{}{}:
			default:
			}
		}
		if err != nil {
			break
		}
	}
	err := vm.cmd.Wait()
	vm.mu.Lock()
	vm.err = err
	vm.mu.Unlock()
	close(vm.done)
}

// Output returns the serial console captured so far.
func (vm *VM) Output() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.out.String()
}

// Stderr returns QEMU's own diagnostics (not the guest's console).
func (vm *VM) Stderr() string {
	select {
	case <-vm.done:
		return vm.stderr.String()
	default:
		return "(QEMU still running)"
	}
}

// Exited reports whether QEMU has exited.
func (vm *VM) Exited() bool {
	select {
	case <-vm.done:
		return true
	default:
		return false
	}
}

// ErrExited is returned (wrapped) by WaitFor when QEMU exits before the
// pattern appears; ErrTimeout when the time runs out first.
var (
	ErrExited  = errors.New("QEMU exited before the expected console output")
	ErrTimeout = errors.New("timed out waiting for console output")
)

// WaitFor waits until re matches the console output, QEMU exits, or timeout
// passes. It returns the submatches of the first match; on exit or timeout it
// returns an error (wrapping ErrExited or ErrTimeout) holding the console's
// tail and QEMU's stderr. QEMU keeps running after a match or a timeout.
func (vm *VM) WaitFor(re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		if m := re.FindStringSubmatch(vm.Output()); m != nil {
			return m, nil
		}
		select {
		case <-vm.notify:
		case <-vm.done:
			if m := re.FindStringSubmatch(vm.Output()); m != nil {
				return m, nil
			}
			return nil, vm.failure(ErrExited, re)
		case <-timer.C:
			return nil, vm.failure(ErrTimeout, re)
		}
	}
}

func (vm *VM) failure(kind error, re *regexp.Regexp) error {
	out := vm.Output()
	if len(out) > 4000 {
		out = "..." + out[len(out)-4000:]
	}
	status := ""
	if vm.Exited() {
		status = fmt.Sprintf(" (exit: %v; qemu stderr: %s)", vm.err, bytes.TrimSpace(vm.stderr.Bytes()))
	}
	return fmt.Errorf("qemu: %w: /%s/%s\n--- console ---\n%s", kind, re, status, out)
}

// Wait waits up to timeout for QEMU to exit by itself (the guest powered off
// or rebooted) and returns its exit error, if any. On timeout it returns an
// error wrapping ErrTimeout and leaves QEMU running.
func (vm *VM) Wait(timeout time.Duration) error {
	select {
	case <-vm.done:
		vm.mu.Lock()
		defer vm.mu.Unlock()
		if vm.err != nil {
			return fmt.Errorf("qemu: %w (stderr: %s)", vm.err, bytes.TrimSpace(vm.stderr.Bytes()))
		}
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("qemu: %w: QEMU still running after %v", ErrTimeout, timeout)
	}
}

// Kill stops QEMU if it still runs — SIGTERM (QEMU exits cleanly on it),
// then SIGKILL after 5 seconds — and waits until it is reaped.
func (vm *VM) Kill() {
	if vm.cmd == nil || vm.cmd.Process == nil || vm.Exited() {
		return
	}
	vm.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-vm.done:
	case <-time.After(5 * time.Second):
		vm.cmd.Process.Kill()
		<-vm.done
	}
}

// Close kills QEMU if needed and removes the temporary variable store. It is
// safe to call more than once.
func (vm *VM) Close() error {
	vm.Kill()
	vm.cleanup()
	return nil
}

func (vm *VM) cleanup() {
	if vm.logFile != nil {
		vm.logFile.Close()
		vm.logFile = nil
	}
	if vm.tmpDir != "" {
		os.RemoveAll(vm.tmpDir)
		vm.tmpDir = ""
	}
}

// Run boots cfg and waits up to timeout for QEMU to exit by itself (the
// guest powers off; -no-reboot turns a reboot or panic into an exit too). It
// returns the console output; on timeout QEMU is killed and the error wraps
// ErrTimeout.
func Run(cfg Config, timeout time.Duration) (string, error) {
	vm, err := Start(cfg)
	if err != nil {
		return "", err
	}
	defer vm.Close()
	if err := vm.Wait(timeout); err != nil {
		vm.Kill()
		return vm.Output(), err
	}
	return vm.Output(), nil
}
