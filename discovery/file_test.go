package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/warren-mesh/warren/state"
)

// goodConfig returns a valid config that differs for each n.
func goodConfig(n int) []byte {
	return fmt.Appendf(nil, "workloads:\n- uid: w%d\n  name: w%d\n  namespace: default\n  workloadIps: [10.0.0.%d]\n", n, n, n)
}

// badConfig fails validation on workloads[0].workloadIps[0].
const badConfig = "workloads:\n- uid: w1\n  name: w1\n  namespace: default\n  workloadIps: [10.0.0.x]\n"

// writeAtomic replaces path the way editors do: write a temporary file
// beside it, then rename it over path.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds or a generous deadline passes; the
// watcher normally reacts within Debounce plus a few milliseconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testLog sends the source's logs to the test's log.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// fixture is a started File on path, with a count of the store's swaps.
type fixture struct {
	file  *File
	store *state.Store
	swaps atomic.Int64
}

// start runs a File on path with a short debounce and stops it, then checks
// for leaked goroutines, when the test ends.
func start(t *testing.T, path string) *fixture {
	t.Helper()
	// Registered first, so it runs after Stop.
	t.Cleanup(func() { goleak.VerifyNone(t) })
	fx := &fixture{store: state.NewStore()}
	fx.store.Subscribe(func(_, _ *state.Snapshot) { fx.swaps.Add(1) })
	cfg := DefaultFileConfig()
	cfg.Path = path
	cfg.Debounce = 10 * time.Millisecond
	fx.file = NewFile(cfg, fx.store, testLog(t))
	if err := fx.file.Start(t.Context()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(fx.file.Stop)
	return fx
}

// waitVersion waits until the store holds the snapshot of data.
func (fx *fixture) waitVersion(t *testing.T, data []byte) {
	t.Helper()
	want := Version(data)
	eventually(t, "version "+want, func() bool { return fx.store.Load().Version == want })
}

// waitCheck runs fn and waits until the watcher has re-read the file after it.
func (fx *fixture) waitCheck(t *testing.T, fn func()) {
	t.Helper()
	before := fx.file.checks.Load()
	fn()
	eventually(t, "a re-read", func() bool { return fx.file.checks.Load() > before })
}

func TestFileStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	data := goodConfig(1)
	writeAtomic(t, path, data)
	fx := start(t, path)

	if got, want := fx.store.Load().Version, Version(data); got != want {
		t.Errorf("Version = %q, want %q", got, want)
	}
	if _, ok := fx.store.Load().Workload("w1"); !ok {
		t.Error("workload w1 not in the store")
	}
	if !fx.file.Ready() || fx.file.LastError() != nil || fx.file.Applied() != 1 || fx.file.Errors() != 0 {
		t.Errorf("Ready %v, LastError %v, Applied %d, Errors %d; want true, nil, 1, 0",
			fx.file.Ready(), fx.file.LastError(), fx.file.Applied(), fx.file.Errors())
	}
	if err := fx.file.Start(t.Context()); err == nil {
		t.Error("second Start succeeded")
	}
}

func TestFileStartFails(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(badConfig), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		wantErr string
	}{
		{"missing file", filepath.Join(dir, "missing.yaml"), "loading config file: open "},
		{"missing directory", filepath.Join(dir, "nodir", "c.yaml"), "watching config file directory: "},
		{"bad content", bad, `loading config file: version ` + Version([]byte(badConfig)) + `: workloads[0].workloadIps[0]: "10.0.0.x" is not an IP address`},
		{"no path", "", "config file source: path: required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			defer goleak.VerifyNone(t)
			store := state.NewStore()
			cfg := DefaultFileConfig()
			cfg.Path = tt.path
			f := NewFile(cfg, store, testLog(t))
			err := f.Start(t.Context())
			if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
				t.Fatalf("Start error %v, want prefix %q", err, tt.wantErr)
			}
			if f.Ready() || store.Load() != state.Empty {
				t.Errorf("Ready %v, store %q after a failed Start", f.Ready(), store.Load().Version)
			}
			f.Stop()
		})
	}
}

func TestFileInPlaceWrite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomic(t, path, goodConfig(1))
	fx := start(t, path)

	next := goodConfig(2)
	if err := os.WriteFile(path, next, 0o644); err != nil {
		t.Fatal(err)
	}
	fx.waitVersion(t, next)
	if _, ok := fx.store.Load().Workload("w2"); !ok {
		t.Error("workload w2 not in the store")
	}
}

func TestFileAtomicRename(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomic(t, path, goodConfig(1))
	fx := start(t, path)

	next := goodConfig(2)
	writeAtomic(t, path, next)
	fx.waitVersion(t, next)
	if got := fx.file.Applied(); got != 2 {
		t.Errorf("Applied = %d, want 2", got)
	}
}

func TestFileBadKeepsLastGood(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	good := goodConfig(1)
	writeAtomic(t, path, good)
	fx := start(t, path)

	fx.waitCheck(t, func() { writeAtomic(t, path, []byte(badConfig)) })
	if got, want := fx.store.Load().Version, Version(good); got != want {
		t.Errorf("Version = %q after a bad write, want the last good %q", got, want)
	}
	wantErr := `version ` + Version([]byte(badConfig)) + `: workloads[0].workloadIps[0]: "10.0.0.x" is not an IP address`
	if err := fx.file.LastError(); err == nil || err.Error() != wantErr {
		t.Errorf("LastError = %v, want %s", err, wantErr)
	}
	if !fx.file.Ready() || fx.file.Errors() != 1 || fx.file.Applied() != 1 {
		t.Errorf("Ready %v, Errors %d, Applied %d; want true, 1, 1", fx.file.Ready(), fx.file.Errors(), fx.file.Applied())
	}

	// The same bad content again is neither logged nor counted again.
	fx.waitCheck(t, func() { writeAtomic(t, path, []byte(badConfig)) })
	if got := fx.file.Errors(); got != 1 {
		t.Errorf("Errors = %d after rewriting the same bad content, want 1", got)
	}

	// Back to the content in the store: the error clears, nothing is swapped.
	writeAtomic(t, path, good)
	eventually(t, "LastError to clear", func() bool { return fx.file.LastError() == nil })
	if got := fx.swaps.Load(); got != 1 {
		t.Errorf("%d swaps, want only Start's", got)
	}

	// A new good version after all that is applied.
	next := goodConfig(2)
	writeAtomic(t, path, next)
	fx.waitVersion(t, next)
}

func TestFileUnchangedContentNoSwap(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	data := goodConfig(1)
	writeAtomic(t, path, data)
	fx := start(t, path)

	fx.waitCheck(t, func() { writeAtomic(t, path, data) })
	fx.waitCheck(t, func() {
		now := time.Now()
		if err := os.Chtimes(path, now, now); err != nil {
			t.Fatal(err)
		}
	})
	if got := fx.swaps.Load(); got != 1 {
		t.Errorf("%d swaps for unchanged content, want only Start's", got)
	}
	if got := fx.file.Applied(); got != 1 {
		t.Errorf("Applied = %d, want 1", got)
	}
}

// TestFileConfigMapSwap replays how kubelet updates a mounted ConfigMap:
// config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>, and an update
// writes a new timestamped directory and renames a new ..data link over the
// old one.
func TestFileConfigMapSwap(t *testing.T) {
	dir := t.TempDir()
	writeVersion := func(ts string, data []byte) {
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ts, "config.yaml"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("..2026_01_01_00_00_00.1", goodConfig(1))
	path := filepath.Join(dir, "config.yaml")
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), path); err != nil {
		t.Fatal(err)
	}
	fx := start(t, path)

	for i, ts := range []string{"..2026_01_01_00_01_00.2", "..2026_01_01_00_02_00.3"} {
		next := goodConfig(i + 2)
		writeVersion(ts, next)
		if i == 0 {
			if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.1")); err != nil {
				t.Fatal(err)
			}
		}
		fx.waitVersion(t, next)
	}
}

// TestFileSymlinkTargetElsewhere edits, in place, the target of a symlink
// that lives in another directory.
func TestFileSymlinkTargetElsewhere(t *testing.T) {
	linkDir, targetDir := t.TempDir(), t.TempDir()
	target := filepath.Join(targetDir, "prod.yaml")
	writeAtomic(t, target, goodConfig(1))
	path := filepath.Join(linkDir, "config.yaml")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	fx := start(t, path)

	next := goodConfig(2)
	writeAtomic(t, target, next)
	fx.waitVersion(t, next)

	// Re-pointing the link itself is seen too.
	other := filepath.Join(targetDir, "other.yaml")
	third := goodConfig(3)
	writeAtomic(t, other, third)
	if err := os.Symlink(other, path+".new"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	fx.waitVersion(t, third)
}

func TestFileStopsWithContext(t *testing.T) {
	defer goleak.VerifyNone(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomic(t, path, goodConfig(1))
	cfg := DefaultFileConfig()
	cfg.Path = path
	f := NewFile(cfg, state.NewStore(), nil)
	ctx, cancel := context.WithCancel(t.Context())
	if err := f.Start(ctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-f.done // the loop ends on its own
	f.Stop()
	f.Stop()
}

func TestFileStopBeforeStart(t *testing.T) {
	defer goleak.VerifyNone(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	writeAtomic(t, path, goodConfig(1))
	cfg := DefaultFileConfig()
	cfg.Path = path
	f := NewFile(cfg, state.NewStore(), nil)
	f.Stop()
	if err := f.Start(t.Context()); err == nil {
		t.Error("Start after Stop succeeded")
	}
}

func TestFileConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*FileConfig)
		wantErr string
	}{
		{"default with path", func(c *FileConfig) { c.Path = "/etc/warren/config.yaml" }, ""},
		{"zero debounce", func(c *FileConfig) { c.Path = "x"; c.Debounce = 0 }, ""},
		{"no path", func(*FileConfig) {}, "path: required"},
		{"negative debounce", func(c *FileConfig) { c.Path = "x"; c.Debounce = -1 }, "debounce: -1ns is not in 0-1m0s"},
		{"huge debounce", func(c *FileConfig) { c.Path = "x"; c.Debounce = time.Hour }, "debounce: 1h0m0s is not in 0-1m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultFileConfig()
			tt.mod(&c)
			got := ""
			if err := c.Validate(); err != nil {
				got = err.Error()
			}
			if diff := cmp.Diff(tt.wantErr, got); diff != "" {
				t.Errorf("Validate (-want +got):\n%s", diff)
			}
		})
	}
}
