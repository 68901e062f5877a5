//go:build unix && !linux

package kube

import "syscall"

func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

func lockThread() (unlock func()) { return func() {} }

func killGroup(pid int) { _ = syscall.Kill(-pid, syscall.SIGKILL) }
