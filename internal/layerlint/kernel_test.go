package layerlint

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// kernelAppend reads the BSP layer's kernel append: its statements, and the
// directory its file:// entries are found in.
func kernelAppend(t *testing.T) ([]Statement, string) {
	t.Helper()
	v := repoValues(t)
	dir := filepath.Join(bspRoot(t), "recipes-kernel", "linux")
	return readStatements(t, filepath.Join(dir, v.Kernel.Provider+"_%.bbappend")), filepath.Join(dir, "files")
}

var (
	kconfigSet   = regexp.MustCompile(`^(CONFIG_[A-Z0-9_]+)=(y|m|"[^"]*"|-?[0-9]+|0x[0-9a-fA-F]+)$`)
	kconfigUnset = regexp.MustCompile(`^# (CONFIG_[A-Z0-9_]+) is not set$`)
)

// readFragments parses the kernel configuration fragments the append adds
// (SRC_URI:append:<machine>) into option -> value ("n" for "is not set"),
// failing on a malformed line or an option that two lines set.
func readFragments(t *testing.T, sts []Statement, files, machine string) (map[string]string, []string) {
	t.Helper()
	opts := map[string]string{}
	where := map[string]string{}
	var names []string
	for _, s := range sts {
		if s.Var != "SRC_URI:append:"+machine {
			continue
		}
		for _, w := range strings.Fields(s.Value) {
			if strings.HasPrefix(w, "file://") && strings.HasSuffix(w, ".cfg") {
				names = append(names, strings.TrimPrefix(w, "file://"))
			}
		}
	}
	for _, n := range names {
		p := filepath.Join(files, n)
		f, err := os.Open(p)
		if err != nil {
			t.Fatalf("a fragment the kernel append lists: %v", err)
		}
		sc := bufio.NewScanner(f)
		for line := 1; sc.Scan(); line++ {
			l := strings.TrimSpace(sc.Text())
			var opt, val string
			if m := kconfigSet.FindStringSubmatch(l); m != nil {
				opt, val = m[1], m[2]
			} else if m := kconfigUnset.FindStringSubmatch(l); m != nil {
				opt, val = m[1], "n"
			} else if l == "" || strings.HasPrefix(l, "#") {
				continue
			} else {
				t.Errorf("%s:%d: not a Kconfig line: %q", p, line, l)
				continue
			}
			if prev, ok := where[opt]; ok {
				t.Errorf("%s:%d: %s is already set at %s", p, line, opt, prev)
			}
			where[opt] = fmt.Sprintf("%s:%d", p, line)
			opts[opt] = val
		}
		f.Close()
	}
	return opts, names
}

// TestKernelFragments: every fragment in files/ is listed by the append (a
// fragment left out is silently not applied), and each is well-formed.
func TestKernelFragments(t *testing.T) {
	v := repoValues(t)
	sts, files := kernelAppend(t)
	_, listed := readFragments(t, sts, files, v.Machine.Name)
	on := map[string]bool{}
	for _, n := range listed {
		on[n] = true
	}
	all, err := filepath.Glob(filepath.Join(files, "*.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(all)
	for _, p := range all {
		if !on[filepath.Base(p)] {
			t.Errorf("%s is not in the kernel append's SRC_URI:append:%s", p, v.Machine.Name)
		}
	}
	if len(listed) < 4 {
		t.Errorf("only %d fragments listed: %q", len(listed), listed)
	}
}

// TestKernelOptions: the options issue 16 asks of the guest kernel, built in
// (the initramfs loads no modules), and upstream's hardening switched off.
func TestKernelOptions(t *testing.T) {
	v := repoValues(t)
	sts, files := kernelAppend(t)
	opts, _ := readFragments(t, sts, files, v.Machine.Name)
	need := map[string][]string{
		"9P over virtio (the dstack VMM's host-shared)": {"CONFIG_NET_9P", "CONFIG_NET_9P_VIRTIO", "CONFIG_9P_FS"},
		"nftables":                      {"CONFIG_NF_TABLES", "CONFIG_NF_TABLES_INET", "CONFIG_NFT_COMPAT", "CONFIG_NFT_NAT", "CONFIG_NFT_MASQ"},
		"ipset":                         {"CONFIG_IP_SET", "CONFIG_IP_SET_HASH_IP", "CONFIG_IP_SET_HASH_NET", "CONFIG_NETFILTER_XT_SET"},
		"xt matches (docker, k3s)":      {"CONFIG_NETFILTER_XT_MATCH_ADDRTYPE", "CONFIG_NETFILTER_XT_MATCH_CONNTRACK", "CONFIG_NETFILTER_XT_MATCH_COMMENT", "CONFIG_NETFILTER_XT_MATCH_MULTIPORT", "CONFIG_NETFILTER_XT_MATCH_STATISTIC", "CONFIG_NETFILTER_XT_TARGET_MASQUERADE", "CONFIG_IP_NF_NAT", "CONFIG_IP_VS"},
		"TUN":                           {"CONFIG_TUN"},
		"FUSE":                          {"CONFIG_FUSE_FS"},
		"user namespaces":               {"CONFIG_NAMESPACES", "CONFIG_USER_NS", "CONFIG_NET_NS", "CONFIG_PID_NS"},
		"overlayfs":                     {"CONFIG_OVERLAY_FS"},
		"cgroup v2 controllers":         {"CONFIG_CGROUPS", "CONFIG_MEMCG", "CONFIG_BLK_CGROUP", "CONFIG_CGROUP_SCHED", "CONFIG_CGROUP_PIDS", "CONFIG_CPUSETS", "CONFIG_CGROUP_BPF"},
		"loop":                          {"CONFIG_BLK_DEV_LOOP"},
		"ext4 with quota":               {"CONFIG_EXT4_FS", "CONFIG_QUOTA", "CONFIG_QFMT_V2"},
		"kTLS":                          {"CONFIG_TLS"},
		"BPF":                           {"CONFIG_BPF", "CONFIG_BPF_SYSCALL"},
		"the data disk (dm-crypt, XTS)": {"CONFIG_DM_CRYPT", "CONFIG_CRYPTO_XTS"},
		"the verified root":             {"CONFIG_DM_VERITY", "CONFIG_SQUASHFS"},
		"TDX guest, quotes through TSM": {"CONFIG_INTEL_TDX_GUEST", "CONFIG_TSM_REPORTS"},
		"hardening":                     {"CONFIG_INIT_ON_ALLOC_DEFAULT_ON"},
	}
	for what, list := range need {
		for _, o := range list {
			if opts[o] != "y" {
				t.Errorf("%s: %s=%q, want y", what, o, opts[o])
			}
		}
	}
	for _, o := range []string{"CONFIG_MAGIC_SYSRQ", "CONFIG_AF_RXRPC", "CONFIG_INET_ESP", "CONFIG_INET6_ESP", "CONFIG_DEVMEM", "CONFIG_KEXEC", "CONFIG_PROC_KCORE"} {
		if opts[o] != "n" {
			t.Errorf("hardening: %s=%q, want \"is not set\"", o, opts[o])
		}
	}
	// BTF: linux-yocto adds features/debug/debug-btf.scc and pahole-native
	// when KERNEL_DEBUG is "True".
	btf := false
	for _, s := range sts {
		if s.Var == "KERNEL_DEBUG:"+v.Machine.Name && s.Op == "=" && s.Value == "True" {
			btf = true
		}
	}
	if !btf {
		t.Errorf("the kernel append does not set KERNEL_DEBUG:%s = \"True\" (BTF)", v.Machine.Name)
	}
	// KERNEL_DEBUG makes linux-yocto depend on pahole-native, which only
	// meta-oe provides: the BSP layer must depend on it (yocto-check-layer's
	// test_machine_world: "Nothing PROVIDES 'pahole-native'").
	bsp := readStatements(t, filepath.Join(bspRoot(t), "conf", "layer.conf"))
	deps := ""
	for _, s := range bsp {
		if strings.HasPrefix(s.Var, "LAYERDEPENDS_") {
			deps = s.Value
		}
	}
	if btf && !containsWord(deps, "openembedded-layer") {
		t.Errorf("meta-dstack-bsp's LAYERDEPENDS %q lacks openembedded-layer (pahole-native, for KERNEL_DEBUG)", deps)
	}
}
