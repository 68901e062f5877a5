package kube

import (
	"runtime"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr {
	// Setpgid: the child leads its own group, so Stop reaches its children
	// and a ^C to the test's terminal group does not race our cleanup.
	// Pdeathsig: killed with the thread that started it (see startProcess).
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// lockThread pins the goroutine to its OS thread (the parent-death signal
// is per thread) and returns the unpin.
func lockThread() (unlock func()) {
	runtime.LockOSThread()
	return runtime.UnlockOSThread
}

func killGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }
