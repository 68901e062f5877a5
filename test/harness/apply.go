package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/warren-mesh/warren/discovery"
)

// ApplyConfig replaces the state file and waits until every running agent
// serves the new version (its /config_dump names it).
func (m *Mesh) ApplyConfig(ctx context.Context, content string) error {
	if err := m.WriteConfig(content); err != nil {
		return err
	}
	want := discovery.Version([]byte(content))
	m.mu.Lock()
	nodes := make([]string, 0, len(m.agents))
	for n := range m.agents {
		nodes = append(nodes, n)
	}
	m.mu.Unlock()
	deadline := time.Now().Add(5 * time.Second)
	for _, node := range nodes {
		for {
			_, body, err := m.Get(ctx, node, 15000, "/config_dump")
			var d struct {
				StateVersion string `json:"stateVersion"`
			}
			if err == nil {
				err = json.Unmarshal(body, &d)
			}
			if err == nil && d.StateVersion == want {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("agent on %s did not apply state version %s in time (serving %q, error %v)", node, want, d.StateVersion, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}
