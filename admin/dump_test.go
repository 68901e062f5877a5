package admin

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// fixedBuild stands in for the runtime's Go version, which would make the
// golden file depend on the toolchain.
var fixedBuild = BuildInfo{Version: "1.2.3-test", GoVersion: "go-test"}

func newTestServer(t *testing.T, src Source) *Server {
	t.Helper()
	cfg := DefaultConfig()
	cfg.AdminAddr, cfg.ReadinessAddr = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Version, cfg.Node = fixedBuild.Version, "node-1"
	s, err := New(cfg, src, nil, nil, discard())
	if err != nil {
		t.Fatal(err)
	}
	s.build = fixedBuild
	return s
}

func dumpJSON(t *testing.T, s *Server) []byte {
	t.Helper()
	b, err := json.MarshalIndent(s.Dump(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(b, '\n')
}

func TestConfigDumpGolden(t *testing.T) {
	got := dumpJSON(t, newTestServer(t, newFakeSource(t)))
	path := filepath.Join("testdata", "config_dump.golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), string(got)); diff != "" {
		t.Errorf("config dump differs from %s (-want +got; -update rewrites it):\n%s", path, diff)
	}
}

func TestConfigDumpIsDeterministic(t *testing.T) {
	s := newTestServer(t, newFakeSource(t))
	first := dumpJSON(t, s)
	for range 5 {
		if got := dumpJSON(t, s); !bytes.Equal(first, got) {
			t.Fatal("two dumps of the same source differ")
		}
	}
}

func TestEmptySourceDump(t *testing.T) {
	s := newTestServer(t, &fakeSource{})
	var got map[string]any
	if err := json.Unmarshal(dumpJSON(t, s), &got); err != nil {
		t.Fatal(err)
	}
	// istioctl iterates these; null would read as empty too, but arrays
	// and an object are what ztunnel sends.
	want := map[string]any{
		"workloads": []any{}, "services": []any{}, "policies": []any{}, "certificates": []any{},
		"workloadState": map[string]any{},
	}
	for k, v := range want {
		if diff := cmp.Diff(v, got[k]); diff != "" {
			t.Errorf("%s (-want +got):\n%s", k, diff)
		}
	}
}

// TestShapeMatchesSample checks that every field of the reference sample
// dump appears in Warren's dump at the same place, except those Warren has
// no data for.
func TestShapeMatchesSample(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "shared", "reference", "sample_config_dump.json"))
	if err != nil {
		t.Skipf("reference sample not available: %v", err)
	}
	var sample, ours any
	if err := json.Unmarshal(raw, &sample); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(dumpJSON(t, newTestServer(t, newFakeSource(t))), &ours); err != nil {
		t.Fatal(err)
	}
	// Warren's state has no waypoints or load-balancing settings yet, and
	// identity.CertInfo carries no root certificates.
	notProduced := []string{
		".workloads[].waypoint", ".services[].waypoint", ".services[].loadBalancer",
		".certificates[].rootCerts[]",
	}
	want, got := map[string]string{}, map[string]string{}
	keyPaths(sample, "", want)
	keyPaths(ours, "", got)
	var missing []string
	for p, kind := range want {
		if slices.ContainsFunc(notProduced, func(np string) bool { return strings.HasPrefix(p, np) }) {
			continue
		}
		if g, ok := got[p]; !ok {
			missing = append(missing, p)
		} else if g != kind && kind != "null" && g != "null" {
			missing = append(missing, p+" ("+kind+", got "+g+")")
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("fields of the sample missing from the dump:\n%s", strings.Join(missing, "\n"))
	}
}

// mapKeyed are the objects whose keys are data (UIDs, ports), not field names.
var mapKeyed = []string{".workloadState", ".services[].endpoints", ".services[].ports", ".services[].endpoints.*.port"}

// keyPaths records the JSON type found at every path of v.
func keyPaths(v any, path string, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		out[path] = "object"
		for k, e := range v {
			if slices.Contains(mapKeyed, path) {
				k = "*"
			}
			keyPaths(e, path+"."+k, out)
		}
	case []any:
		out[path] = "array"
		for _, e := range v {
			keyPaths(e, path+"[]", out)
		}
	case string:
		out[path] = "string"
	case float64:
		out[path] = "number"
	case bool:
		out[path] = "bool"
	case nil:
		out[path] = "null"
	}
}

func TestStringMatchJSON(t *testing.T) {
	tests := []struct {
		m    StringMatch
		json string
	}{
		{StringMatch{Exact: "cluster.local/ns/a/sa/x"}, `{"Exact":"cluster.local/ns/a/sa/x"}`},
		{StringMatch{Exact: ""}, `{"Exact":""}`},
		{StringMatch{Prefix: "team-"}, `{"Prefix":"team-"}`},
		{StringMatch{Suffix: "/sa/robot"}, `{"Suffix":"/sa/robot"}`},
		{StringMatch{Presence: true}, `{"Presence":[]}`},
	}
	for _, tt := range tests {
		t.Run(tt.json, func(t *testing.T) {
			b, err := json.Marshal(tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.json, string(b)); diff != "" {
				t.Errorf("marshal (-want +got):\n%s", diff)
			}
			var back StringMatch
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.m, back); diff != "" {
				t.Errorf("round trip (-want +got):\n%s", diff)
			}
		})
	}
	var m StringMatch
	for _, bad := range []string{`{}`, `{"Regex":"x"}`, `{"Exact":"a","Prefix":"b"}`, `"Exact"`} {
		if err := json.Unmarshal([]byte(bad), &m); err == nil {
			t.Errorf("Unmarshal(%s) succeeded", bad)
		}
	}
}
