package bootscripts

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/Dstack-TEE/meta-dstack/internal/testutil"
)

// initTree is a fake tree set up for /init's test mode (--test-root): the
// rootfs on /dev/vda, busybox applets in bin/, and stand-ins for the
// programs that need root or PID 1 (mount, veritysetup, switch_root,
// insmod), each logging its arguments to <name>.log and its environment to
// <name>.env under the root.
func initTree(t *testing.T) *fakeTree {
	t.Helper()
	testutil.Need(t, "dash")
	ft := newFakeTree(t, fakeDisk{name: "vda", devnum: "254:0", raw: make([]byte, 1<<20)})
	bin := ft.testRoot(t)
	// /init runs under dash here: busybox sh runs its own applets (mount,
	// switch_root, insmod) before looking at PATH, which would bypass the
	// stand-ins below. (The QEMU boot tests run it under busybox.)
	dash, err := exec.LookPath("dash")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(bin, "sh")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dash, filepath.Join(bin, "sh")); err != nil {
		t.Fatal(err)
	}
	r := ft.root
	logs := func(name string) string {
		return "printf '%s\\n' \"$*\" >>" + filepath.Join(r, name+".log") + "\nenv >" + filepath.Join(r, name+".env") + "\n"
	}
	stub(t, bin, "mount", logs("mount")+`case " $* " in
*" -t squashfs "*)
	for a in "$@"; do target=$a; done
	mkdir -p "$target/sbin" "$target/proc" "$target/sys" "$target/dev" "$target/run"
	printf '#!/bin/sh\n' >"$target/sbin/init"
	chmod 755 "$target/sbin/init"
	;;
esac
`)
	stub(t, bin, "veritysetup", logs("veritysetup")+"mkdir -p "+filepath.Join(r, "dev", "mapper")+"\n: >"+filepath.Join(r, "dev", "mapper", "dstack-rootfs")+"\n")
	stub(t, bin, "switch_root", logs("switch_root")+"echo '[stub] switch_root'\n")
	stub(t, bin, "insmod", logs("insmod"))
	return ft
}

func (ft *fakeTree) runInit(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	bin := filepath.Join(ft.root, "bin")
	cmd := exec.Command(filepath.Join(bin, "sh"), append([]string{filepath.Join(testutil.RepoRoot(t), InitPath)}, args...)...)
	cmd.Env = env
	if os.Geteuid() == 0 {
		// a private mount namespace: should a real mount ever run instead
		// of a stand-in, it cannot reach the host's mounts (Go makes the
		// namespace's mounts private) and ends with the process
		cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	}
	out, err := cmd.CombinedOutput()
	return strings.ReplaceAll(string(out), ft.root, "ROOT"), err
}

func readLog(t *testing.T, ft *fakeTree, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(ft.root, name))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), ft.root, "ROOT")
}

// TestInitBoots runs /init in test mode to switch_root, with a clean and
// with a hostile environment (what unknown NAME=VALUE words of the kernel
// command line put in PID 1's environment): same console, same calls, and
// every program /init runs sees PATH only. /dev is mounted nosuid,noexec.
func TestInitBoots(t *testing.T) {
	cmdline := "console=ttyS0 dstack.rootfs_hash=" + goodHash + " dstack.rootfs_size=1048576 dstack.device_timeout=0\n"
	var seen [2]string
	for i, hostile := range []bool{false, true} {
		ft := initTree(t)
		writeFile(t, ft.cmdline, cmdline)
		// what the hostile variables point at: a command line naming another
		// device, and module lists
		writeFile(t, filepath.Join(ft.root, "evil-cmdline"), "dstack.rootfs_hash="+strings.Repeat("0", 64)+" dstack.rootfs_size=4096 dstack.rootfs_device=/dev/vdb\n")
		var env []string
		if hostile {
			env = hostileEnv(ft)
		}
		out, err := ft.runInit(t, env, "--test-root", ft.root)
		if err != nil {
			t.Fatalf("hostile=%v: %v\n%s", hostile, err, out)
		}
		// The first pass's interpreter (dash here, dynamically linked) starts
		// with the caller's environment, so ld.so may complain once about the
		// LD_PRELOAD it names; every program after the re-execution (the
		// stand-ins run under dash too) must not see it.
		var kept []string
		loader := 0
		for _, l := range strings.SplitAfter(out, "\n") {
			if strings.HasPrefix(l, "ERROR: ld.so:") {
				loader++
				continue
			}
			kept = append(kept, l)
		}
		if loader > 1 {
			t.Errorf("hostile=%v: LD_PRELOAD reached %d programs, at most the first-pass shell may see it:\n%s", hostile, loader, out)
		}
		out = strings.Join(kept, "")
		want := "[init] rootfs /dev/vda: 1048576 bytes, hash " + goodHash + "\n" +
			"[init] rootfs device /dev/vda is ROOT/dev/vda\n" +
			"[init] verified rootfs mounted; switching root\n[stub] switch_root\n"
		if out != want {
			t.Errorf("hostile=%v: console\n%s\nwant\n%s", hostile, out, want)
		}
		mounts := readLog(t, ft, "mount.log")
		if !strings.Contains(mounts, "-t devtmpfs -o nosuid,noexec,mode=0755 devtmpfs ROOT/dev\n") {
			t.Errorf("/dev not mounted nosuid,noexec:\n%s", mounts)
		}
		if v := readLog(t, ft, "veritysetup.log"); v != "open ROOT/dev/vda dstack-rootfs ROOT/dev/vda "+goodHash+" --hash-offset=1048576\n" {
			t.Errorf("veritysetup called with %q", v)
		}
		if s := readLog(t, ft, "switch_root.log"); s != "ROOT/newroot /sbin/init\n" {
			t.Errorf("switch_root called with %q", s)
		}
		if s := readLog(t, ft, "insmod.log"); s != "" {
			t.Errorf("insmod called: %q", s)
		}
		for _, prog := range []string{"mount", "veritysetup", "switch_root"} {
			wantCleanEnv(t, readLog(t, ft, prog+".env"), "PATH=ROOT/bin")
		}
		if _, err := os.Stat(filepath.Join(ft.root, ".dstack-init-env")); err != nil {
			t.Errorf("no re-execution marker: %v", err)
		}
		seen[i] = out + mounts
	}
	if seen[0] != seen[1] {
		t.Errorf("the environment changed what /init did:\nclean:\n%s\nhostile:\n%s", seen[0], seen[1])
	}
}

// TestInitRefuses: malformed numbers (leading zeros: never octal, never a
// shell abort) and other bad parameters give one [init] line and the halt
// line, exit 1, and nothing is opened.
func TestInitRefuses(t *testing.T) {
	h, s := "dstack.rootfs_hash="+goodHash, "dstack.rootfs_size=1048576"
	timeoutErr := "is malformed: seconds expected (0-9999, decimal, no leading zero)"
	for _, tc := range []struct{ name, cmdline, want string }{
		{"device_timeout=08", h + " " + s + " dstack.device_timeout=08", "dstack.device_timeout='08' " + timeoutErr},
		{"device_timeout=0019", h + " " + s + " dstack.device_timeout=0019", "dstack.device_timeout='0019' " + timeoutErr},
		{"device_timeout=0010", h + " " + s + " dstack.device_timeout=0010", "dstack.device_timeout='0010' " + timeoutErr},
		{"device_timeout=-1", h + " " + s + " dstack.device_timeout=-1", "dstack.device_timeout='-1' " + timeoutErr},
		{"rootfs_size=08192", h + " dstack.rootfs_size=08192", "dstack.rootfs_size='08192' is malformed: a positive multiple of 4096 (bytes) expected"},
		{"missing hash", s, "dstack.rootfs_hash missing from the kernel command line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := initTree(t)
			writeFile(t, ft.cmdline, tc.cmdline+"\n")
			out, err := ft.runInit(t, nil, "--test-root", ft.root)
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Errorf("exit %v, want status 1", err)
			}
			if want := "[init] " + tc.want + "\n[init] boot refused; halting\n"; out != want {
				t.Errorf("console\n%q\nwant\n%q", out, want)
			}
			for _, prog := range []string{"veritysetup", "switch_root"} {
				if l := readLog(t, ft, prog+".log"); l != "" {
					t.Errorf("%s ran: %q", prog, l)
				}
			}
		})
	}
}

// TestInitNotPID1: outside PID 1, /init runs only as `init --test-root DIR`.
func TestInitNotPID1(t *testing.T) {
	ft := initTree(t)
	for _, args := range [][]string{nil, {"--test-root"}, {"--test-root", "relative"}, {"--test-root", ft.root, "x"}, {"/dev/vdb"}} {
		out, err := ft.runInit(t, nil, args...)
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
			t.Errorf("%q: exit %v, want 2", args, err)
		}
		if !regexp.MustCompile(`^\[init\] [^\n]+\n$`).MatchString(out) {
			t.Errorf("%q: output %q, want one [init] line", args, out)
		}
		if l := readLog(t, ft, "mount.log"); l != "" {
			t.Errorf("%q: mount ran: %q", args, l)
		}
	}
}

// TestInitFollowsLinksInRoot: /sbin/init is followed through symbolic links
// inside the new root, as the kernel will resolve it after switch_root: an
// absolute link to the rootfs's systemd (Yocto's layout) boots, a link whose
// target exists only outside the rootfs (here, the host's /bin/sh) or a loop
// is refused.
func TestInitFollowsLinksInRoot(t *testing.T) {
	cmdline := "console=ttyS0 dstack.rootfs_hash=" + goodHash + " dstack.rootfs_size=1048576 dstack.device_timeout=0\n"
	for _, tc := range []struct {
		name, layout, fail string
	}{
		{"absolute link to systemd", `mkdir -p "$target/usr/lib/systemd"; printf '#!/bin/sh\n' >"$target/usr/lib/systemd/systemd"; chmod 755 "$target/usr/lib/systemd/systemd"; ln -s /usr/lib/systemd/systemd "$target/sbin/init"`, ""},
		{"relative link chain", `mkdir -p "$target/lib/systemd"; printf '#!/bin/sh\n' >"$target/lib/systemd/systemd"; chmod 755 "$target/lib/systemd/systemd"; ln -s ../lib/systemd/init2 "$target/sbin/init"; ln -s systemd "$target/lib/systemd/init2"`, ""},
		{"target outside the rootfs", `ln -s /bin/sh "$target/sbin/init"`, "no executable /sbin/init (/bin/sh)"},
		{"link loop", `ln -s /sbin/init "$target/sbin/init"`, "more than 8 symbolic links"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ft := initTree(t)
			writeFile(t, ft.cmdline, cmdline)
			stub(t, filepath.Join(ft.root, "bin"), "mount", `case " $* " in
*" -t squashfs "*)
	for a in "$@"; do target=$a; done
	mkdir -p "$target/sbin" "$target/proc" "$target/sys" "$target/dev" "$target/run"
	`+tc.layout+`
	;;
esac
`)
			out, err := ft.runInit(t, nil, "--test-root", ft.root)
			if tc.fail == "" {
				if err != nil || !strings.Contains(out, "[stub] switch_root") {
					t.Fatalf("%v\n%s", err, out)
				}
				return
			}
			if err == nil || !strings.Contains(out, tc.fail) || strings.Contains(out, "[stub] switch_root") {
				t.Fatalf("want a refusal naming %q; got %v\n%s", tc.fail, err, out)
			}
		})
	}
}
