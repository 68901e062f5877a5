package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/warren-mesh/warren/test/testbed"
	"golang.org/x/sys/unix"
)

// teardown removes everything r names, in an order that lets each step
// succeed: first every process (pods by cgroup, then everything in the
// nodes' mount namespaces, containerd shims included; the mount
// namespaces and all their mounts go with their last process), then the
// network namespaces (veths, bridges, iptables rules go with them), the
// cgroups, and the run dir. It carries on past errors and returns them all;
// it may be repeated.
func teardown(r *record) error {
	var errs []error
	errs = append(errs, killUntilGone("pods", func() []int { return cgroupPIDs(r.Cgroups) }))
	errs = append(errs, killUntilGone("node processes", func() []int { return mountNSPIDs(r.MountNS, r.Dir) }))
	for _, p := range r.Netns {
		errs = append(errs, testbed.RemoveNamedNS(p))
	}
	errs = append(errs, removeCgroups(r.Cgroups))
	if r.Dir != "" {
		if err := os.RemoveAll(r.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing run dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// killTimeout bounds waiting for killed processes to disappear; SIGKILL
// takes effect in milliseconds unless a process is stuck in the kernel.
const killTimeout = 20 * time.Second

// killUntilGone SIGKILLs the pids list returns until it returns none:
// processes may fork while being killed.
func killUntilGone(what string, list func() []int) error {
	deadline := time.Now().Add(killTimeout)
	for {
		pids := list()
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("killing %s: still running after %v: %v", what, killTimeout, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cgroupHierarchies are the mounted hierarchies: /sys/fs/cgroup itself on
// a pure cgroup v2 host, else each v1 controller and the v2 "unified"
// tree of a hybrid host.
func cgroupHierarchies() []string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err == nil {
		return []string{"/sys/fs/cgroup"}
	}
	var hs []string
	entries, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range entries {
		h := filepath.Join("/sys/fs/cgroup", e.Name())
		if _, err := os.Stat(filepath.Join(h, "cgroup.procs")); err == nil {
			hs = append(hs, h)
		}
	}
	return hs
}

// createCgroup creates name in every hierarchy, as the kubelet wants its
// cgroupRoot to exist. A v1 cpuset cgroup starts with no CPUs and no
// memory nodes, and nothing can join it, so it gets its parent's.
func createCgroup(name string) error {
	for _, h := range cgroupHierarchies() {
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			cur, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil || strings.TrimSpace(string(cur)) != "" {
				continue
			}
			parent, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				return fmt.Errorf("reading %s of %s: %w", f, h, err)
			}
			if err := os.WriteFile(filepath.Join(dir, f), parent, 0o644); err != nil {
				return fmt.Errorf("writing %s of %s: %w", f, dir, err)
			}
		}
	}
	return nil
}

// cgroupPIDs lists the processes in the named cgroups and below, in every
// hierarchy.
func cgroupPIDs(names []string) []int {
	seen := map[int]bool{}
	var pids []int
	for _, h := range cgroupHierarchies() {
		for _, name := range names {
			filepath.WalkDir(filepath.Join(h, name), func(path string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
					return nil
				}
				b, _ := os.ReadFile(path)
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
						seen[pid] = true
						pids = append(pids, pid)
					}
				}
				return nil
			})
		}
	}
	return pids
}

// removeCgroups removes the named cgroups with everything the kubelet and
// runc created below them, deepest first, in every hierarchy. A cgroup
// whose last process is still exiting refuses with EBUSY for a moment.
func removeCgroups(names []string) error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		for _, name := range names {
			root := filepath.Join(h, name)
			var dirs []string
			filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, path)
				}
				return nil
			})
			for i := len(dirs) - 1; i >= 0; i-- {
				errs = append(errs, rmdirRetry(dirs[i]))
			}
		}
	}
	return errors.Join(errs...)
}

func rmdirRetry(dir string) error {
	deadline := time.Now().Add(killTimeout)
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w", dir, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// mountNSPIDs lists the processes in any of the mount namespaces inodes
// whose mount table mentions dir (a node's namespace has the run dir's
// directories bound into it). The kernel hands a freed namespace's inode
// number to the next new namespace, so the inode alone could name a
// stranger's namespace once ours is gone. Zombies have no namespaces left
// and are not listed.
func mountNSPIDs(inodes []uint64, dir string) []int {
	if len(inodes) == 0 {
		return nil
	}
	want := map[uint64]bool{}
	for _, ino := range inodes {
		want[ino] = true
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/mnt", pid))
		if err != nil || !want[ino] {
			continue
		}
		if mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid)); err == nil && strings.Contains(string(mounts), dir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

func nsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// processStart is a process's start time (field 22 of /proc/<pid>/stat,
// clock ticks since boot); with the pid it names one process for good.
func processStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after its closing parenthesis are plain.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	fields := strings.Fields(s[i+1:])
	const startField = 22 - 3 // fields[0] is field 3
	if len(fields) <= startField {
		return 0, fmt.Errorf("parsing /proc/%d/stat", pid)
	}
	return strconv.ParseUint(fields[startField], 10, 64)
}

// alive reports whether the process that wrote r still runs.
func (r *record) alive() bool {
	start, err := processStart(r.Owner)
	return err == nil && start == r.OwnerStart
}

// runDirPattern matches the run dirs Start creates under Options.Dir.
const runDirPattern = "warren-cluster-*"

// sweep tears down the clusters under root whose test process died
// without Stop. It never touches a run whose owner still runs.
func sweep(root string, log *slog.Logger) {
	dirs, _ := filepath.Glob(filepath.Join(root, runDirPattern))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, stateFile))
		if err != nil {
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.Dir != d || r.alive() {
			continue
		}
		err = teardown(&r)
		log.Info("removed a cluster left behind by a dead test process", "prefix", r.Prefix, "owner", r.Owner, "dir", d, "err", err)
	}
}
