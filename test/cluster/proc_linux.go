package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
)

// startProcess starts argv with output to logPath and extra as its file
// descriptors 3 and on. The child leads its own process group and gets
// SIGKILL when the OS thread that forked it exits; that thread is held by a
// goroutine for the child's lifetime, so a test binary that dies without
// Stop takes its daemons with it.
func startProcess(name, logPath, dir string, env, argv []string, extra ...*os.File) (*process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("creating log for %s: %w", name, err)
	}
	p := &process{name: name, logPath: logPath, done: make(chan struct{})}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir, cmd.Env = dir, env
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		defer close(p.done)
		defer f.Close()
		// Never unlocked while the child lives: the parent-death signal
		// follows this thread.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		p.pid = cmd.Process.Pid
		started <- nil
		p.err = cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return p, nil
}

// kill SIGKILLs the process group and waits until the leader is reaped.
// The data of every daemon here is thrown away, so there is nothing a
// graceful stop would save.
func (p *process) kill() {
	if !p.exited() {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	}
	<-p.done
}
