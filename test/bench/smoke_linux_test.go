package bench

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the whole harness in smoke mode (every measure once, tiny
// durations), so `make test` proves `make bench` works. Tools that are not
// installed (make bench installs them) skip their measures.
func TestSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the benchmark harness needs root (network namespaces, capture rules); CI runs it as root")
	}
	if testing.Short() {
		t.Skip("smoke run of the benchmark harness takes about 20 s")
	}
	root := repoRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := SmokeConfig()
	cfg.AgentBin = agentBin(t, root)
	cfg.ProbeCmd = []string{self, "probe"}
	cfg.AllowMissingTools = true
	cfg.Micro = nil
	if _, err := exec.LookPath("fortio"); err != nil {
		// Where make bench installs it.
		cfg.Fortio = filepath.Join(root, "bin", "fortio")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	res, err := Run(ctx, cfg, slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// The probe needs no external tool, so these are always measured.
	for _, want := range []key{
		{"rr_p50", PathPlain, CrossNode}, {"rr_p50", PathWarren, CrossNode}, {"rr_p50", PathWarren, SameNode},
		{"cps1", PathPlain, SameNode}, {"cps8", PathWarren, CrossNode},
		{"conn_bytes", PathWarren, Agent1}, {"rss_idle", PathWarren, Agent2},
	} {
		f, ok := find(res.Figures, want.measure, want.path, want.where)
		if !ok || f.Median <= 0 && want.measure != "conn_bytes" {
			t.Errorf("%v: figure %+v (found %v), want a positive median", want, f, ok)
		}
	}
	if len(res.Ratios) == 0 || len(res.Targets) == 0 {
		t.Errorf("no ratios (%d) or targets (%d)", len(res.Ratios), len(res.Targets))
	}
	if _, err := Chart(res); err != nil {
		t.Error(err)
	}
	t.Logf("smoke summary:\n%s", Summary(res))
}

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// agentBin finds warren-agent: $WARREN_BIN (set by `make test`), else
// built into the test's temporary directory.
func agentBin(t *testing.T, root string) string {
	t.Helper()
	if dir := os.Getenv("WARREN_BIN"); dir != "" {
		return filepath.Join(dir, "warren-agent")
	}
	bin := filepath.Join(t.TempDir(), "warren-agent")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/warren-agent")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building warren-agent: %v\n%s", err, out)
	}
	return bin
}

// testWriter sends the harness's log to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
