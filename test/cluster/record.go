package cluster

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// record is what a cluster created outside the processes it holds, written
// to <run dir>/state.json before each thing is created. Stop tears down
// from it, and so does the next Start for a run whose test process died
// without Stop (a go test -timeout panic, a SIGKILL).
type record struct {
	Prefix string `json:"prefix"`
	Dir    string `json:"dir"`
	// Owner is the test process; OwnerStart (its start time in clock
	// ticks since boot) tells it apart from a later process with its pid.
	Owner      int    `json:"owner"`
	OwnerStart uint64 `json:"ownerStart"`
	// Netns are the named network namespaces (paths).
	Netns []string `json:"netns"`
	// Cgroups are the kubelets' cgroup roots, created in every hierarchy.
	Cgroups []string `json:"cgroups"`
	// MountNS are the inodes of the nodes' mount namespaces: every process
	// in one (the holder, containerd, kubelet, kube-proxy, the
	// containerd shims, RunInNode commands) belongs to this cluster.
	MountNS []uint64 `json:"mountNS"`
}

const stateFile = "state.json"

// save writes the record; a crash between two saves loses at most the
// thing being created, which is also named by the prefix.
func (r *record) save() error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	tmp := filepath.Join(r.Dir, stateFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("saving cluster state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(r.Dir, stateFile)); err != nil {
		return fmt.Errorf("saving cluster state: %w", err)
	}
	return nil
}
