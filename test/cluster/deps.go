package cluster

import (
	"os"
	"path/filepath"
	"strings"
)

// tools are the host programs the cluster runs, by absolute path.
type tools struct {
	nsenter    string
	unshare    string
	containerd string
	ctr        string
	runc       string
	// cniDir holds the CNI plugins every node gets a copy of.
	cniDir string
}

// requiredPrograms maps what the cluster and its components exec to the
// Debian package that has it. Each entry says who needs it.
var requiredPrograms = []struct{ program, pkg string }{
	{"containerd", "containerd"},
	{"containerd-shim-runc-v2", "containerd"}, // started by containerd
	{"ctr", "containerd"},                     // image import
	{"runc", "runc"},                          // started by the shim
	{"conntrack", "conntrack"},                // kube-proxy clears UDP flows with it
	{"iptables", "iptables"},                  // kube-proxy, the CNI bridge and portmap
	{"iptables-restore", "iptables"},
	{"iptables-save", "iptables"},
	{"nsenter", "util-linux"}, // every node process
	{"unshare", "util-linux"}, // the node namespaces
	{"mount", "mount"},        // the node namespaces
}

// cniDir is where Debian's containernetworking-plugins puts the plugins,
// and cniPlugins the ones the node network uses (containerd runs loopback
// for every sandbox).
const cniDir = "/usr/lib/cni"

var cniPlugins = []string{"bridge", "host-local", "loopback", "portmap"}

// findTools locates every required program in childPath, the PATH the
// cluster's processes get, and reports the first missing one as a
// *MissingError naming its package.
func findTools() (tools, error) {
	found := map[string]string{}
	for _, r := range requiredPrograms {
		p := lookPath(r.program)
		if p == "" {
			return tools{}, &MissingError{Program: r.program, Package: r.pkg}
		}
		found[r.program] = p
	}
	for _, p := range cniPlugins {
		if !isExecutable(filepath.Join(cniDir, p)) {
			return tools{}, &MissingError{Program: filepath.Join(cniDir, p), Package: "containernetworking-plugins"}
		}
	}
	return tools{
		nsenter:    found["nsenter"],
		unshare:    found["unshare"],
		containerd: found["containerd"],
		ctr:        found["ctr"],
		runc:       found["runc"],
		cniDir:     cniDir,
	}, nil
}

func lookPath(name string) string {
	for _, dir := range strings.Split(childPath, ":") {
		if p := filepath.Join(dir, name); isExecutable(p) {
			return p
		}
	}
	return ""
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}
