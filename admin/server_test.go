package admin

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/warren-mesh/warren/logging"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

type response struct {
	Code int
	Body string
}

func do(t *testing.T, h http.Handler, method, target string) response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return response{rec.Code, rec.Body.String()}
}

func TestLogging(t *testing.T) {
	levels := logging.New(slog.DiscardHandler, slog.LevelInfo)
	s := newTestServer(t, newFakeSource(t))
	s.levels = levels
	h := s.AdminHandler()

	steps := []struct {
		method, target string
		code           int
		body           string // prefix
	}{
		{"GET", "/logging", 200, "current log level is default:info\n"},
		{"POST", "/logging", 200, "current log level is default:info\n"},
		{"POST", "/logging?level=hbone:debug,proxy=warn", 200, "current log level is default:info hbone:debug proxy:warn\n"},
		{"POST", "/logging?level=proxy:loud", 400, `invalid level provided: "proxy:loud"`},
		{"POST", "/logging?level=", 400, "invalid level provided: empty"},
		{"GET", "/logging?level=debug", 405, "changing log levels needs POST"},
		{"GET", "/logging", 200, "current log level is default:info hbone:debug proxy:warn\n"},
		{"POST", "/logging?reset", 200, "current log level is default:info\n"},
		{"POST", "/logging?level=trace", 200, "current log level is default:debug\n"},
		{"POST", "/logging?reset&level=agent:error", 200, "current log level is default:info agent:error\n"},
		{"PUT", "/logging", 405, "method not allowed"},
	}
	for _, st := range steps {
		got := do(t, h, st.method, st.target)
		if got.Code != st.code || !strings.HasPrefix(got.Body, st.body) {
			t.Errorf("%s %s = %d %q, want %d %q...", st.method, st.target, got.Code, got.Body, st.code, st.body)
		}
	}
	if !strings.Contains(do(t, h, "POST", "/logging?level=loud").Body, `unknown level "loud"`) {
		t.Error("a bad level's answer does not name it")
	}
}

func TestLoggingWithoutLevels(t *testing.T) {
	s := newTestServer(t, newFakeSource(t))
	if got := do(t, s.AdminHandler(), "GET", "/logging"); got.Code != http.StatusNotImplemented {
		t.Errorf("GET /logging with nil levels = %d", got.Code)
	}
}

func TestQuit(t *testing.T) {
	called := make(chan struct{}, 2)
	s := newTestServer(t, newFakeSource(t))
	s.quit = func() { called <- struct{}{} }
	h := s.AdminHandler()
	if got := do(t, h, "GET", "/quitquitquit"); got.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET /quitquitquit = %d, want 405", got.Code)
	}
	if diff := cmp.Diff(response{200, "OK\n"}, do(t, h, "POST", "/quitquitquit")); diff != "" {
		t.Errorf("POST /quitquitquit (-want +got):\n%s", diff)
	}
	select {
	case <-called:
	case <-time.After(5 * time.Second):
		t.Fatal("quit not called")
	}
	do(t, h, "POST", "/quitquitquit")
	select {
	case <-called:
		t.Error("quit called twice")
	case <-time.After(50 * time.Millisecond):
	}
}

func TestReadiness(t *testing.T) {
	src := newFakeSource(t)
	h := newTestServer(t, src).ReadinessHandler()
	if diff := cmp.Diff(response{200, "ready\n"}, do(t, h, "GET", "/healthz/ready")); diff != "" {
		t.Errorf("ready (-want +got):\n%s", diff)
	}
	src.setPending("certificate spiffe://cluster.local/ns/c/sa/z", "pod Kubernetes//Pod/c/z: entering netns")
	want := response{500, "not ready: certificate spiffe://cluster.local/ns/c/sa/z; pod Kubernetes//Pod/c/z: entering netns\n"}
	if diff := cmp.Diff(want, do(t, h, "GET", "/healthz/ready")); diff != "" {
		t.Errorf("pending (-want +got):\n%s", diff)
	}
	if got := do(t, h, "GET", "/config_dump"); got.Code != http.StatusNotFound {
		t.Errorf("readiness port serves /config_dump: %d", got.Code)
	}
}

func TestAdminRoutes(t *testing.T) {
	h := newTestServer(t, newFakeSource(t)).AdminHandler()
	tests := []struct {
		method, target string
		code           int
		contains       string
	}{
		{"GET", "/", 200, "/config_dump"},
		{"GET", "/config_dump", 200, `"workloadState": {`},
		{"POST", "/config_dump", 405, ""},
		{"GET", "/debug/pprof/", 200, "goroutine"},
		{"GET", "/debug/pprof/goroutine?debug=1", 200, "goroutine profile"},
		{"GET", "/debug/pprof/cmdline", 200, ""},
		{"GET", "/nothing", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			got := do(t, h, tt.method, tt.target)
			if got.Code != tt.code || !strings.Contains(got.Body, tt.contains) {
				t.Errorf("= %d %.200q, want %d containing %q", got.Code, got.Body, tt.code, tt.contains)
			}
		})
	}
}

func TestStartStop(t *testing.T) {
	src := newFakeSource(t)
	s := newTestServer(t, src)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	if err := s.Start(); err == nil {
		t.Error("a second Start succeeded")
	}
	get := func(name, path string) response {
		t.Helper()
		resp, err := http.Get("http://" + s.Addr(name).String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return response{resp.StatusCode, string(b)}
	}
	if got := get("admin", "/config_dump"); got.Code != 200 || !strings.Contains(got.Body, `"uid": "Kubernetes//Pod/a/x-7d4b9c-abcde"`) {
		t.Errorf("config_dump over TCP = %d %.100q", got.Code, got.Body)
	}
	if got := get("readiness", "/healthz/ready"); got.Code != 200 {
		t.Errorf("readiness over TCP = %d", got.Code)
	}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + s.Addr("admin").String() + "/"); err == nil {
		t.Error("admin still answers after Stop")
	}
	http.DefaultClient.CloseIdleConnections()
}

func TestStartFailsCleanly(t *testing.T) {
	first := newTestServer(t, newFakeSource(t))
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer first.Stop(context.Background())

	cfg := DefaultConfig()
	cfg.AdminAddr, cfg.ReadinessAddr = "127.0.0.1:0", first.Addr("readiness").String()
	second, err := New(cfg, newFakeSource(t), nil, nil, discard())
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Start(); err == nil || !strings.Contains(err.Error(), "readiness listener") {
		t.Fatalf("Start on a taken port = %v", err)
	}
	if second.Addr("admin") != nil {
		t.Error("a failed Start left the admin listener open")
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"default", func(*Config) {}, ""},
		{"disabled", func(c *Config) { c.AdminAddr, c.ReadinessAddr = "", "" }, ""},
		{"localhost", func(c *Config) { c.AdminAddr = "localhost:15000" }, ""},
		{"ipv6 loopback", func(c *Config) { c.AdminAddr = "[::1]:15000" }, ""},
		{"admin on all addresses", func(c *Config) { c.AdminAddr = ":15000" }, "must be on loopback"},
		{"admin on pod address", func(c *Config) { c.AdminAddr = "10.0.0.1:15000" }, "must be on loopback"},
		{"bad readiness", func(c *Config) { c.ReadinessAddr = "15021" }, "readiness address"},
		{"negative timeout", func(c *Config) { c.ShutdownTimeout = -1 }, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			err := c.Validate()
			if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
