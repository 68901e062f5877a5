package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/admin"
	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/identity"
	"github.com/warren-mesh/warren/logging"
	"github.com/warren-mesh/warren/netns"
	"github.com/warren-mesh/warren/state"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// dumpFile is a dump written by the admin package's golden test (a copy of
// admin/testdata/config_dump.golden).
var dumpFile = filepath.Join("testdata", "config_dump.json")

func golden(t *testing.T, name string, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got; -update rewrites it):\n%s", path, diff)
	}
}

func TestTablesGolden(t *testing.T) {
	tests := []struct {
		golden string
		args   []string
	}{
		{"workloads", []string{"workloads"}},
		{"services", []string{"services"}},
		{"policies", []string{"policies"}},
		{"certificates", []string{"certificates"}},
		{"connections", []string{"connections"}},
		{"all", []string{"all"}},
		{"all_namespace_b", []string{"all", "-n", "b"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			var out bytes.Buffer
			if err := runInspect(tt.args[0], append(tt.args[1:], "--file", dumpFile), &out); err != nil {
				t.Fatal(err)
			}
			golden(t, tt.golden, out.String())
		})
	}
}

func TestInspectErrors(t *testing.T) {
	var out bytes.Buffer
	if err := runInspect("workloads", []string{"--file", "testdata/missing.json"}, &out); err == nil {
		t.Error("missing file: no error")
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(bad, []byte("{"), 0o644)
	if err := runInspect("workloads", []string{"--file", bad}, &out); err == nil || !strings.Contains(err.Error(), "decoding config dump") {
		t.Errorf("bad file: %v", err)
	}
	if err := runInspect("workloads", []string{"extra", "--file", dumpFile}, &out); err == nil {
		t.Error("extra argument accepted")
	}
	// Nothing listens on port 1 of loopback.
	if err := runInspect("workloads", []string{"--admin", "127.0.0.1:1"}, &out); err == nil || !strings.Contains(err.Error(), "is it running") {
		t.Errorf("no agent: %v", err)
	}
}

// TestInspectFromAgent reads the dump over HTTP and prints the same table
// as from the file.
func TestInspectFromAgent(t *testing.T) {
	raw, err := os.ReadFile(dumpFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/config_dump" || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		w.Write(raw)
	}))
	defer srv.Close()
	var out bytes.Buffer
	if err := runInspect("connections", []string{"--admin", srv.Listener.Addr().String()}, &out); err != nil {
		t.Fatal(err)
	}
	golden(t, "connections", out.String())
}

// emptySource is an agent with nothing in it.
type emptySource struct{}

func (emptySource) Snapshot() *state.Snapshot         { return state.Empty }
func (emptySource) Certificates() []identity.CertInfo { return nil }
func (emptySource) Connections() []flow.Record        { return nil }
func (emptySource) LocalPods() []admin.PodState       { return nil }
func (emptySource) Pending() []string                 { return nil }

func newAdmin(t *testing.T) http.Handler {
	t.Helper()
	levels := logging.New(slog.DiscardHandler, slog.LevelInfo)
	s, err := admin.New(admin.DefaultConfig(), emptySource{}, levels, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return s.AdminHandler()
}

func TestLogLevel(t *testing.T) {
	srv := httptest.NewServer(newAdmin(t))
	defer srv.Close()
	addr := srv.Listener.Addr().String()
	steps := []struct {
		args    []string
		want    string
		wantErr string
	}{
		{nil, "current log level is default:info\n", ""},
		{[]string{"hbone:debug,proxy=warn"}, "current log level is default:info hbone:debug proxy:warn\n", ""},
		{[]string{"proxy:loud"}, "", `400 Bad Request: invalid level provided: "proxy:loud"`},
		{[]string{"--reset"}, "current log level is default:info\n", ""},
		{[]string{"--reset", "agent:error"}, "current log level is default:info agent:error\n", ""},
		{[]string{"a", "b"}, "", "unexpected arguments b"},
	}
	for _, st := range steps {
		var out bytes.Buffer
		err := runLogLevel(append(st.args, "--admin", addr), &out)
		if st.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), st.wantErr) {
				t.Errorf("log-level %v: error %v, want %q", st.args, err, st.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("log-level %v: %v", st.args, err)
			continue
		}
		if diff := cmp.Diff(st.want, out.String()); diff != "" {
			t.Errorf("log-level %v (-want +got):\n%s", st.args, diff)
		}
	}
}

// TestNetns reaches an admin server listening on loopback inside another
// network namespace.
func TestNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create a network namespace; CI runs as root")
	}
	var b [2]byte
	rand.Read(b[:])
	name := "w" + hex.EncodeToString(b[:]) + "ctl"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	path := "/run/netns/" + name
	ns, err := netns.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := ns.Do(func() error { return exec.Command("ip", "link", "set", "lo", "up").Run() }); err != nil {
		t.Fatal(err)
	}
	ln, err := ns.Listen(context.Background(), &net.ListenConfig{}, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: newAdmin(t)}
	go srv.Serve(ln)
	defer srv.Close()

	var out bytes.Buffer
	if err := runLogLevel([]string{"--netns", path, "--admin", ln.Addr().String(), "debug"}, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "current log level is default:debug\n" {
		t.Errorf("log-level through netns: %q", got)
	}
	out.Reset()
	if err := runInspect("workloads", []string{"--netns", path, "--admin", ln.Addr().String()}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "NAMESPACE") {
		t.Errorf("workloads through netns: %q", out.String())
	}
	if err := runInspect("workloads", []string{"--netns", "/nonexistent", "--admin", ln.Addr().String()}, &out); err == nil {
		t.Error("a missing netns is not an error")
	}
}

func TestParseInterspersed(t *testing.T) {
	tests := []struct {
		args    []string
		wantPos []string
		wantX   string
	}{
		{nil, nil, ""},
		{[]string{"a"}, []string{"a"}, ""},
		{[]string{"-x", "1", "a"}, []string{"a"}, "1"},
		{[]string{"a", "-x", "1", "b"}, []string{"a", "b"}, "1"},
		{[]string{"a", "--", "-x"}, []string{"a", "-x"}, ""},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			x := fs.String("x", "", "")
			pos, err := parseInterspersed(fs, tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.wantPos, pos); diff != "" || *x != tt.wantX {
				t.Errorf("positionals (-want +got):\n%s; x=%q", diff, *x)
			}
		})
	}
}

func TestUsageListsCommands(t *testing.T) {
	var out bytes.Buffer
	usage(&out)
	for _, c := range commands() {
		if !strings.Contains(out.String(), "  "+c.name+" ") {
			t.Errorf("usage lacks %s", c.name)
		}
	}
}
