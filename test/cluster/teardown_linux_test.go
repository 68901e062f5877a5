package cluster

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/warren-mesh/warren/test/testbed"
)

// TestSweep leaves behind what a test process killed mid-run would (a
// network namespace, a cgroup with a process in it, a process holding a
// mount namespace, a run dir) and checks that sweep removes exactly the
// run whose owner is dead.
func TestSweep(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, cgroups and mount namespaces")
	}
	root := t.TempDir()
	prefix := "s" + strconv.FormatInt(int64(os.Getpid()), 36)

	// The dead owner: a process that has exited, named by pid and start time.
	owner := exec.Command("sleep", "0.1")
	if err := owner.Start(); err != nil {
		t.Fatal(err)
	}
	ownerStart, err := processStart(owner.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	owner.Wait()

	dead := leaveBehind(t, root, prefix+"d", owner.Process.Pid, ownerStart)
	myStart, err := processStart(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	live := leaveBehind(t, root, prefix+"l", os.Getpid(), myStart)

	sweep(root, slog.New(slog.DiscardHandler))

	checkNothingLeft(t, dead, snapshotHost(t))
	for _, p := range live.Netns {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("live run's netns removed: %v", err)
		}
	}
	if _, err := os.Stat(live.Dir); err != nil {
		t.Errorf("live run's dir removed: %v", err)
	}
	if len(mountNSPIDs(live.MountNS, live.Dir)) == 0 {
		t.Error("live run's mount namespace holder killed")
	}
}

// leaveBehind creates one run's worth of leftovers owned by pid.
func leaveBehind(t *testing.T, root, prefix string, pid int, start uint64) record {
	t.Helper()
	dir, err := os.MkdirTemp(root, "warren-cluster-"+prefix+"-")
	if err != nil {
		t.Fatal(err)
	}
	r := record{Prefix: prefix, Dir: dir, Owner: pid, OwnerStart: start}
	// Removes whatever sweep did not (all of the live run).
	t.Cleanup(func() { teardown(&r) })
	ns := filepath.Join(netnsDir, prefix+"-n1")
	if err := testbed.PrepareNetnsDir(); err != nil {
		t.Fatal(err)
	}
	if err := createNetns(ns); err != nil {
		t.Fatal(err)
	}
	r.Netns = []string{ns}
	cg := prefix + "-n1"
	r.Cgroups = []string{cg}
	if err := createCgroup(cg); err != nil {
		t.Fatal(err)
	}
	// A "pod": a process in the cgroup's pods hierarchy, like a container.
	pod := exec.Command("sleep", "60")
	if err := pod.Start(); err != nil {
		t.Fatal(err)
	}
	go pod.Wait()
	for _, h := range cgroupHierarchies() {
		if err := os.WriteFile(filepath.Join(h, cg, "cgroup.procs"), []byte(strconv.Itoa(pod.Process.Pid)), 0o644); err != nil {
			t.Fatalf("moving the pod into %s: %v", h, err)
		}
	}
	// A "shim": a process in its own mount namespace that outlived its
	// parent, with a mount only it sees.
	r.MountNS = []uint64{startMountNSHolder(t, dir)}
	if err := r.save(); err != nil {
		t.Fatal(err)
	}
	return r
}

// startMountNSHolder starts a process in a new mount namespace with a
// tmpfs on dir/mnt, and returns the namespace's inode.
func startMountNSHolder(t *testing.T, dir string) uint64 {
	t.Helper()
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "-m", "--propagation", "slave", "--", "sh", "-c",
		fmt.Sprintf("mount -t tmpfs none %s && echo ready >&3 && exec 3>&- && exec sleep 60", mnt))
	cmd.ExtraFiles = []*os.File{w}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go cmd.Wait()
	b, _ := io.ReadAll(r)
	r.Close()
	if string(b) != "ready\n" {
		t.Fatalf("mount namespace holder: %q", b)
	}
	ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if self, _ := nsInode("/proc/self/ns/mnt"); self == ino {
		t.Fatal(errors.New("holder is in the test's mount namespace"))
	}
	return ino
}
