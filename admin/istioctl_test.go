package admin

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"istio.io/istio/istioctl/pkg/writer/ztunnel/configdump"
)

// istioctlPrint primes the code behind `istioctl ztunnel-config <kind>
// --file dump.json` with dump and returns what fn prints.
func istioctlPrint(t *testing.T, dump []byte, fn func(cw *configdump.ConfigWriter) error) string {
	t.Helper()
	var out bytes.Buffer
	cw := &configdump.ConfigWriter{Stdout: &out, FullDump: dump}
	if err := cw.Prime(dump); err != nil {
		t.Fatalf("istioctl cannot read the dump: %v", err)
	}
	if err := fn(cw); err != nil {
		t.Fatalf("istioctl print: %v", err)
	}
	return out.String()
}

// fields splits a table into rows of whitespace-separated cells, dropping
// blank lines (headers with spaces split into several cells).
func fields(table string) [][]string {
	var rows [][]string
	for line := range strings.Lines(table) {
		if f := strings.Fields(line); len(f) > 0 {
			rows = append(rows, f)
		}
	}
	return rows
}

func row(s string) []string { return strings.Fields(s) }

// TestIstioctlReadsDump checks every table istioctl prints from Warren's
// dump of the fake source.
func TestIstioctlReadsDump(t *testing.T) {
	dump := dumpJSON(t, newTestServer(t, newFakeSource(t)))
	// istioctl computes VALID CERT against the clock.
	valid := strconv.FormatBool(time.Now().After(fixedStart) && time.Now().Before(fixedEnd))

	workloads := [][]string{
		row("NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL"),
		row("a x-7d4b9c-abcde 10.0.0.10 node-1 None HBONE"),
		row("b waypoint-66c9-klmno 10.0.0.30 node-2 None TCP"),
		row("b y-5f6c7d-fghij 10.0.0.20 node-1 None HBONE"),
		row("c z-1a2b3c-pqrst 10.0.0.40,fd00::40 node-1 None HBONE"),
	}
	services := [][]string{
		row("NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS"),
		row("b waypoint 10.96.0.30 None 1/1"),
		row("b y 10.96.0.20 None 1/1"),
		row("c z 10.96.0.40,fd00:96::40 None 1/1"),
	}
	policies := [][]string{
		row("NAMESPACE POLICY NAME ACTION SCOPE"),
		row("a allow-b Allow WorkloadSelector"),
		row("c ns-rules Deny Namespace"),
		row("istio-system deny-nothing Deny Global"),
	}
	certificates := [][]string{
		row("CERTIFICATE NAME TYPE STATUS VALID CERT SERIAL NUMBER NOT AFTER NOT BEFORE"),
		// istioctl prints the decimal serial in hex: identity's own form.
		row("spiffe://cluster.local/ns/a/sa/x Leaf Available " + valid + " 75bcd15 2031-01-01T00:00:00Z 2026-01-01T00:00:00Z"),
		row("spiffe://cluster.local/ns/b/sa/y Leaf Available " + valid + " 1092 2031-01-01T00:00:00Z 2026-01-01T00:00:00Z"),
		row("spiffe://cluster.local/ns/c/sa/z NA Unavailable false NA NA NA"),
	}
	connections := [][]string{
		row("WORKLOAD DIRECTION LOCAL REMOTE REMOTE TARGET PROTOCOL"),
		row("x-7d4b9c-abcde.a Outbound x-7d4b9c-abcde.a:40001 y-5f6c7d-fghij.b:15008 y.b.svc.cluster.local:80 HBONE"),
		row("x-7d4b9c-abcde.a Outbound x-7d4b9c-abcde.a:40002 waypoint-66c9-klmno.b:15021 waypoint-66c9-klmno.b:15021 TCP"),
		row("y-5f6c7d-fghij.b Inbound y-5f6c7d-fghij.b:8080 x-7d4b9c-abcde.a:40001 10.0.0.20:8080 HBONE"),
		row("y-5f6c7d-fghij.b Inbound y-5f6c7d-fghij.b:8080 10.1.0.5:50000 10.0.0.20:8080 TCP"),
	}
	var all [][]string
	for _, sec := range []struct {
		title string
		rows  [][]string
	}{{"WORKLOAD INFO", workloads}, {"SERVICE INFO", services}, {"POLICY INFO", policies}, {"SECRET INFO", certificates}, {"CONNECTIONS INFO", connections}} {
		all = append(all, row("------ "+sec.title+" ------"))
		all = append(all, sec.rows...)
	}

	tests := []struct {
		name string
		fn   func(cw *configdump.ConfigWriter) error
		want [][]string
	}{
		{"workloads", func(cw *configdump.ConfigWriter) error { return cw.PrintWorkloadSummary(configdump.WorkloadFilter{}) }, workloads},
		{"workloads --node node-2", func(cw *configdump.ConfigWriter) error {
			return cw.PrintWorkloadSummary(configdump.WorkloadFilter{Node: "node-2"})
		}, [][]string{workloads[0], workloads[2]}},
		{"services", func(cw *configdump.ConfigWriter) error { return cw.PrintServiceSummary(configdump.ServiceFilter{}) }, services},
		{"policies", func(cw *configdump.ConfigWriter) error { return cw.PrintPolicySummary(configdump.PolicyFilter{}) }, policies},
		{"certificates", func(cw *configdump.ConfigWriter) error { return cw.PrintSecretSummary() }, certificates},
		{"connections", func(cw *configdump.ConfigWriter) error {
			return cw.PrintConnectionsSummary(configdump.ConnectionsFilter{})
		}, connections},
		{"connections --direction inbound", func(cw *configdump.ConfigWriter) error {
			return cw.PrintConnectionsSummary(configdump.ConnectionsFilter{Direction: "inbound"})
		}, [][]string{connections[0], connections[3], connections[4]}},
		{"all", func(cw *configdump.ConfigWriter) error { return cw.PrintFullSummary(true) }, all},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := istioctlPrint(t, dump, tt.fn)
			if diff := cmp.Diff(tt.want, fields(out)); diff != "" {
				t.Errorf("istioctl table (-want +got):\n%s\nfull output:\n%s", diff, out)
			}
		})
	}
}

// TestIstioctlJSONOutput checks istioctl's -o json paths, which decode the
// dump into istioctl's own types and encode them again: nothing Warren
// sends may be lost on the way.
func TestIstioctlJSONOutput(t *testing.T) {
	src := newFakeSource(t)
	dump := dumpJSON(t, newTestServer(t, src))
	tests := []struct {
		name     string
		fn       func(cw *configdump.ConfigWriter) error
		contains []string
	}{
		{"workloads", func(cw *configdump.ConfigWriter) error {
			return cw.PrintWorkloadDump(configdump.WorkloadFilter{Namespace: "a"}, "json")
		}, []string{`"uid": "Kubernetes//Pod/a/x-7d4b9c-abcde"`, `"a/allow-b"`, `"canonicalRevision": "v1"`}},
		{"services", func(cw *configdump.ConfigWriter) error {
			return cw.PrintServiceDump(configdump.ServiceFilter{Namespace: "c"}, "json")
		}, []string{`"hostname": "z.c.svc.cluster.local"`, `"443": 9443`, `"ipFamilies": "Dual"`}},
		{"policies", func(cw *configdump.ConfigWriter) error {
			return cw.PrintPolicyDump(configdump.PolicyFilter{Namespace: "c"}, "json")
		}, []string{`"Prefix": "team-"`, `"Suffix": "/sa/robot"`, `"Presence": []`, `"10.0.0.0/8"`, `"serviceAccount": "admin"`}},
		{"certificates", func(cw *configdump.ConfigWriter) error { return cw.PrintSecretDump("json") },
			[]string{`"serialNumber": "123456789"`, `"state": "Unavailable: CA unreachable"`}},
		{"connections", func(cw *configdump.ConfigWriter) error {
			return cw.PrintConnectionsDump(configdump.ConnectionsFilter{Workload: "y-5f6c7d-fghij.b"}, "json")
		}, []string{`"src": "10.1.0.5:50000"`, `"protocol": "HBONE"`}},
		{"all", func(cw *configdump.ConfigWriter) error { return cw.PrintFullDump("yaml") },
			[]string{"workloadState:", "goVersion: go-test"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := istioctlPrint(t, dump, tt.fn)
			for _, want := range tt.contains {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %s:\n%s", want, out)
				}
			}
		})
	}

	// The policy rules survive istioctl's decoding unchanged.
	out := istioctlPrint(t, dump, func(cw *configdump.ConfigWriter) error { return cw.PrintPolicyDump(configdump.PolicyFilter{}, "json") })
	var theirs []Policy
	if err := json.Unmarshal([]byte(out), &theirs); err != nil {
		t.Fatal(err)
	}
	ours := newTestServer(t, src).Dump().Policies
	for i := range ours {
		ours[i].DryRun = false // istioctl's type has no dryRun
	}
	if diff := cmp.Diff(ours, theirs); diff != "" {
		t.Errorf("policies after istioctl's round trip (-ours +theirs):\n%s", diff)
	}
}

// TestIstioctlReadsSample checks the harness against the reference sample.
func TestIstioctlReadsSample(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("..", "..", "shared", "reference", "sample_config_dump.json"))
	if err != nil {
		t.Skipf("reference sample not available: %v", err)
	}
	out := istioctlPrint(t, raw, func(cw *configdump.ConfigWriter) error {
		return cw.PrintWorkloadSummary(configdump.WorkloadFilter{})
	})
	want := row("b y-5f6c7d-fghij 10.0.0.20 node-1 waypoint HBONE")
	if rows := fields(out); len(rows) != 4 || !cmp.Equal(rows[3], want) {
		t.Errorf("sample workloads:\n%s", out)
	}
}
