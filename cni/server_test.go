package cni

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fakeAgent is a Handler that records what it is told and answers with
// addFn (captured=true when nil).
type fakeAgent struct {
	mu    sync.Mutex
	adds  []AddRequest
	dels  []DelRequest
	addFn func(context.Context, AddRequest) (bool, error)
}

var _ Handler = (*fakeAgent)(nil)

func (f *fakeAgent) Add(ctx context.Context, req AddRequest) (bool, error) {
	f.mu.Lock()
	f.adds = append(f.adds, req)
	fn := f.addFn
	f.mu.Unlock()
	if fn == nil {
		return true, nil
	}
	return fn(ctx, req)
}

func (f *fakeAgent) Del(_ context.Context, req DelRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dels = append(f.dels, req)
}

func (f *fakeAgent) added() []AddRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]AddRequest(nil), f.adds...)
}

func (f *fakeAgent) deleted() []DelRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]DelRequest(nil), f.dels...)
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// socketPath is a socket path in a fresh temp dir; unix socket paths are
// limited to 107 bytes, which t.TempDir under a long test name can exceed.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wcni")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "cni.sock")
}

// startAgent serves h on a fresh socket until the test ends.
func startAgent(t *testing.T, cfg Config, h Handler) *Server {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = socketPath(t)
	}
	if cfg.AddTimeout == 0 {
		cfg.AddTimeout = 5 * time.Second
	}
	s, err := NewServer(cfg, h, discard())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

var sampleAdd = AddRequest{
	PodName:      "web-0",
	PodNamespace: "shop",
	PodUID:       "0f6c-uid",
	ContainerID:  "abc123",
	NetNS:        "/var/run/netns/cni-1234",
	IfName:       "eth0",
	IPs:          []netip.Prefix{netip.MustParsePrefix("10.244.1.7/24"), netip.MustParsePrefix("fd00::7/64")},
}

func TestAddAndDel(t *testing.T) {
	tests := []struct {
		name         string
		addFn        func(context.Context, AddRequest) (bool, error)
		wantCaptured bool
		wantErr      string
	}{
		{name: "captured", wantCaptured: true},
		{name: "not captured", addFn: func(context.Context, AddRequest) (bool, error) { return false, nil }},
		{name: "agent error", addFn: func(context.Context, AddRequest) (bool, error) {
			return false, errors.New("no certificate for spiffe://cluster.local/ns/shop/sa/web")
		}, wantErr: "HTTP 500): no certificate for spiffe://cluster.local/ns/shop/sa/web"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			agent := &fakeAgent{addFn: tt.addFn}
			s := startAgent(t, Config{}, agent)
			c := newClient(s.Path())
			captured, err := c.add(t.Context(), sampleAdd)
			if tt.wantErr != "" {
				var ae *AgentError
				if !errors.As(err, &ae) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("add: %v, want an AgentError containing %q", err, tt.wantErr)
				}
			} else if err != nil {
				t.Fatalf("add: %v", err)
			}
			if captured != tt.wantCaptured {
				t.Errorf("captured = %v, want %v", captured, tt.wantCaptured)
			}
			if diff := cmp.Diff([]AddRequest{sampleAdd}, agent.added(), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
				t.Errorf("agent got (-want +got):\n%s", diff)
			}
			del := DelRequest{PodName: "web-0", PodNamespace: "shop", ContainerID: "abc123"}
			if err := c.del(t.Context(), del); err != nil {
				t.Fatalf("del: %v", err)
			}
			if diff := cmp.Diff([]DelRequest{del}, agent.deleted()); diff != "" {
				t.Errorf("agent got (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAddRejectsInvalidRequest(t *testing.T) {
	agent := &fakeAgent{}
	s := startAgent(t, Config{}, agent)
	bad := sampleAdd
	bad.NetNS = ""
	_, err := newClient(s.Path()).add(t.Context(), bad)
	var ae *AgentError
	if !errors.As(err, &ae) || ae.Status != 400 || !strings.Contains(ae.Message, "netns must be set") {
		t.Fatalf("add without netns: %v, want HTTP 400 naming the netns", err)
	}
	if n := len(agent.added()); n != 0 {
		t.Errorf("handler called %d times for an invalid request", n)
	}
}

func TestAgentUnavailable(t *testing.T) {
	t.Run("no socket", func(t *testing.T) {
		_, err := newClient(socketPath(t)).add(t.Context(), sampleAdd)
		if !errors.Is(err, ErrAgentUnavailable) {
			t.Fatalf("add: %v, want ErrAgentUnavailable", err)
		}
	})
	t.Run("stale socket", func(t *testing.T) {
		path := socketPath(t)
		os.MkdirAll(filepath.Dir(path), 0o755)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		// Closing without unlinking leaves a socket file nobody listens on,
		// as a killed agent does.
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		_, err = newClient(path).add(t.Context(), sampleAdd)
		if !errors.Is(err, ErrAgentUnavailable) {
			t.Fatalf("add: %v, want ErrAgentUnavailable", err)
		}
	})
}

func TestAddTimeout(t *testing.T) {
	agent := &fakeAgent{addFn: func(ctx context.Context, _ AddRequest) (bool, error) {
		<-ctx.Done()
		return false, ctx.Err()
	}}
	s := startAgent(t, Config{AddTimeout: 100 * time.Millisecond}, agent)
	start := time.Now()
	_, err := newClient(s.Path()).add(t.Context(), sampleAdd)
	var ae *AgentError
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "not captured within 100ms") {
		t.Fatalf("add: %v, want an AgentError naming the timeout", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("add took %v with a 100ms timeout", took)
	}
}

func TestCloseCancelsPendingAdd(t *testing.T) {
	entered := make(chan struct{})
	agent := &fakeAgent{addFn: func(ctx context.Context, _ AddRequest) (bool, error) {
		close(entered)
		<-ctx.Done()
		return false, ctx.Err()
	}}
	s, err := NewServer(Config{Socket: socketPath(t), AddTimeout: time.Minute}, agent, discard())
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	errc := make(chan error, 1)
	go func() {
		_, err := newClient(s.Path()).add(context.Background(), sampleAdd)
		errc <- err
	}()
	<-entered
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("add succeeded although the server closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("add still pending 5s after Close")
	}
	if _, err := os.Lstat(s.Path()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
}

func TestSocketFile(t *testing.T) {
	t.Run("mode 0600, removed on close", func(t *testing.T) {
		path := socketPath(t)
		s, err := NewServer(Config{Socket: path, AddTimeout: time.Second}, &fakeAgent{}, discard())
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
			t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
		}
		s.Close()
		s.Close()
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket still there after Close: %v", err)
		}
		entries, _ := os.ReadDir(filepath.Dir(path))
		if len(entries) != 0 {
			t.Errorf("left behind in the socket dir: %v", entries)
		}
	})
	t.Run("stale socket replaced", func(t *testing.T) {
		path := socketPath(t)
		os.MkdirAll(filepath.Dir(path), 0o755)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close()
		agent := &fakeAgent{}
		s := startAgent(t, Config{Socket: path}, agent)
		if _, err := newClient(s.Path()).add(t.Context(), sampleAdd); err != nil {
			t.Fatalf("add through the replaced socket: %v", err)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		path := socketPath(t)
		os.MkdirAll(filepath.Dir(path), 0o755)
		os.WriteFile(path, []byte("keep me"), 0o644)
		if _, err := NewServer(Config{Socket: path, AddTimeout: time.Second}, &fakeAgent{}, discard()); err == nil {
			t.Fatal("NewServer replaced a regular file")
		}
		if b, _ := os.ReadFile(path); string(b) != "keep me" {
			t.Errorf("file changed to %q", b)
		}
	})
	t.Run("a later agent's socket is not removed", func(t *testing.T) {
		path := socketPath(t)
		first, err := NewServer(Config{Socket: path, AddTimeout: time.Second}, &fakeAgent{}, discard())
		if err != nil {
			t.Fatal(err)
		}
		second := startAgent(t, Config{Socket: path}, &fakeAgent{})
		first.Close()
		if _, err := newClient(second.Path()).add(t.Context(), sampleAdd); err != nil {
			t.Fatalf("the second agent's socket broke when the first closed: %v", err)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
	err := Config{Socket: "relative.sock"}.Validate()
	if err == nil || !strings.Contains(err.Error(), "absolute") || !strings.Contains(err.Error(), "timeout") {
		t.Errorf("Validate = %v, want both problems", err)
	}
}
