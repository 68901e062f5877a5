package cluster

import (
	"fmt"
	"os"
	"strings"
)

// childPath is the PATH of every process the cluster starts: the test's
// own environment may lack the sbin dirs (runc, iptables, conntrack).
const childPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// childEnv is the environment of the cluster's daemons: PATH and HOME only,
// so that proxy variables or a KUBECONFIG of the test's environment never
// reach them.
func childEnv(home string) []string {
	return []string{"PATH=" + childPath, "HOME=" + home}
}

// process is a daemon the cluster started, in its own process group.
type process struct {
	name    string
	pid     int
	logPath string
	done    chan struct{}
	err     error // valid after done
}

// exited reports whether the process has exited.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes how the process ended, with the end of its log.
func (p *process) exitError() error {
	return fmt.Errorf("%s exited (%v): %s", p.name, p.err, logTail(p.logPath))
}

// logTail returns the last lines of a log, where the reason for an exit is.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	const n = 3000
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}
