package enroll

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"
)

// Config is the watcher's configuration.
type Config struct {
	// Node is this node's name; only its pods are watched.
	Node string
	// ClusterID prefixes workload uids (Istio's default is "Kubernetes").
	ClusterID string
	// Selector says which pods are captured.
	Selector Selector
	// NetNSDir is where the runtime pins pod network namespaces, scanned
	// for pods that started before the agent.
	NetNSDir string
	// Debounce is how long changes are collected before OnChange: a burst
	// of pod and namespace events costs one call, and a new pod's capture
	// waits at most this long for it.
	Debounce time.Duration
	// CNIWait bounds how long AddFromCNI waits for a pod the runtime
	// reports to reach the watch, before reading it from the API.
	CNIWait time.Duration
	// RescanInterval is how often the namespaces of captured pods not
	// found by a scan are looked for again.
	RescanInterval time.Duration
}

// DefaultConfig returns Istio's selector and cluster ID and the standard
// netns dir; Node must still be set.
func DefaultConfig() Config {
	sel, _ := ParseSelector(DefaultSelector)
	return Config{
		ClusterID:      "Kubernetes",
		Selector:       sel,
		NetNSDir:       "/var/run/netns",
		Debounce:       100 * time.Millisecond,
		CNIWait:        5 * time.Second,
		RescanInterval: 30 * time.Second,
	}
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node: must be set"))
	}
	if c.ClusterID == "" {
		errs = append(errs, errors.New("cluster id: must be set"))
	}
	if c.Selector.Key == "" || c.Selector.Value == "" {
		errs = append(errs, fmt.Errorf("selector %q: key and value must be set", c.Selector))
	}
	if !filepath.IsAbs(c.NetNSDir) {
		errs = append(errs, fmt.Errorf("netns dir: %q must be an absolute path", c.NetNSDir))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"debounce", c.Debounce}, {"cni wait", c.CNIWait}, {"rescan interval", c.RescanInterval}} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("%s: %v must be positive", d.name, d.v))
		}
	}
	return errors.Join(errs...)
}
