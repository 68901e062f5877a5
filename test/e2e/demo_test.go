package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemo runs `warrenctl demo` as `make demo` does and checks that every
// flow succeeded and that each path shows up in the connection table.
func TestDemo(t *testing.T) {
	requireRoot(t)
	agent := agentBin(t)
	ctl := filepath.Join(filepath.Dir(agent), "warrenctl")
	if _, err := os.Stat(ctl); err != nil {
		t.Skipf("warrenctl not built next to %s (run via `make test`): %v", agent, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, ctl, "demo", "--agent", agent).CombinedOutput()
	if err != nil {
		t.Fatalf("warrenctl demo: %v\n%s", err, out)
	}
	s := string(out)
	if strings.Contains(s, "FAILED") {
		t.Fatalf("demo reported a failed flow:\n%s", s)
	}
	for _, want := range []string{"hbone", "passthrough", "inbound_plaintext", "/ns/frontend/sa/web", "via backend/api.backend.svc.cluster.local"} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
}
