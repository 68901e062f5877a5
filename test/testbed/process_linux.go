package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/warren-mesh/warren/netns"
)

// Process is a command started by Testbed.Start.
type Process struct {
	cmd   *exec.Cmd
	grace time.Duration
	done  chan struct{}
	err   error // from cmd.Wait, set before done is closed

	mu     sync.Mutex
	exited bool // the leader has exited; its process group may no longer be signalled
}

// Start runs the program name with args inside the network namespace at
// nsPath (a Node's or Pod's NetNS, or any other netns file), in its own
// process group, with output to stdout and stderr (nil discards). Only the
// network namespace changes: the program sees the caller's filesystem and
// /sys. The process is stopped like Process.Stop when ctx is done or the
// testbed closes; when it exits by itself, whatever is left in its process
// group is killed. It returns ErrMissingTool when name is not installed.
func (tb *Testbed) Start(ctx context.Context, nsPath string, stdout, stderr io.Writer, name string, args ...string) (*Process, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w: %w", name, ErrMissingTool, err)
	}
	ns, err := netns.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	defer ns.Close()

	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own group, so Stop reaches everything it forks.
		Setpgid: true,
		// If the test binary dies without Close, the process dies too.
		// The signal follows the forking thread; Do hands that thread back to
		// the runtime, which keeps it for the life of the process.
		Pdeathsig: syscall.SIGKILL,
	}
	// A grandchild that escaped the group and still holds an output pipe
	// must not make Wait hang.
	cmd.WaitDelay = tb.cfg.StopGrace
	p := &Process{cmd: cmd, grace: tb.cfg.StopGrace, done: make(chan struct{})}

	tb.mu.Lock()
	defer tb.mu.Unlock()
	if tb.closed {
		return nil, fmt.Errorf("starting %s: %w", name, ErrClosed)
	}
	// The child is forked from the thread Do switched into the namespace,
	// and inherits it.
	if err := ns.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", name, nsPath, err)
	}
	tb.procs = append(tb.procs, p)
	go p.wait()
	stopOnCtx := context.AfterFunc(ctx, func() { p.Stop() })
	go func() {
		<-p.done
		stopOnCtx()
	}()
	return p, nil
}

// wait waits for the leader to exit without reaping it, kills what is left
// of its group while the unreaped leader still holds the group id (so the id
// cannot have been reused by an unrelated process), then reaps it.
func (p *Process) wait() {
	pid := p.cmd.Process.Pid
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	p.mu.Lock()
	unix.Kill(-pid, unix.SIGKILL)
	p.exited = true
	p.mu.Unlock()
	p.err = p.cmd.Wait()
	close(p.done)
}

// Pid is the process id, which is also its process group id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and its output is copied.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns what exec.Cmd.Wait
// returned (an *exec.ExitError for a non-zero exit or a signal).
func (p *Process) Wait() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM to the process group, waits up to the testbed's
// StopGrace (5 s by default) for the process to exit, then sends SIGKILL and
// waits again. It returns nil once the process is gone, however it ended;
// use Wait for the exit status. Safe to call more than once and after exit.
func (p *Process) Stop() error {
	if err := p.signal(unix.SIGTERM); err != nil {
		return err
	}
	t := time.NewTimer(p.grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
	}
	if err := p.signal(unix.SIGKILL); err != nil {
		return err
	}
	<-p.done
	return nil
}

func (p *Process) signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return nil
	}
	if err := unix.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("sending %v to process group %d: %w", sig, p.cmd.Process.Pid, err)
	}
	return nil
}
