package metrics

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/state"
)

const (
	sleepID = "spiffe://cluster.local/ns/default/sa/sleep"
	echoID  = "spiffe://cluster.local/ns/default/sa/echo"
)

func testWorkloads() (sleep, echo *state.Workload, svc *state.Service) {
	sleep = &state.Workload{
		UID: "k/default/sleep-abc", Name: "sleep-abc", Namespace: "default", ServiceAccount: "sleep",
		WorkloadName: "sleep", CanonicalName: "sleep", CanonicalRevision: "v1",
	}
	echo = &state.Workload{
		UID: "k/default/echo-xyz", Name: "echo-xyz", Namespace: "default", ServiceAccount: "echo",
		WorkloadName: "echo", CanonicalName: "echo-app", CanonicalRevision: "v2", ClusterID: "east",
	}
	svc = &state.Service{Name: "echo", Namespace: "default", Hostname: "echo.default.svc.cluster.local"}
	return sleep, echo, svc
}

// labelMap turns values into name=value pairs so that a diff names the label.
func labelMap(v labelValues) map[string]string {
	m := make(map[string]string, len(v))
	for i, n := range trafficLabelNames() {
		m[n] = v[i]
	}
	return m
}

// allUnknown is the label set of a record Warren knows nothing about, with
// overrides applied.
func allUnknown(over map[string]string) map[string]string {
	m := map[string]string{}
	for _, n := range trafficLabelNames() {
		m[n] = "unknown"
	}
	m["request_protocol"] = "tcp"
	m["response_flags"] = "-"
	for k, v := range over {
		m[k] = v
	}
	return m
}

func TestDeriveLabels(t *testing.T) {
	sleep, echo, svc := testWorkloads()
	bare := &state.Workload{Name: "bare-pod", Namespace: "ns2"}
	cfg := DefaultConfig()

	tests := []struct {
		name string
		rec  flow.Record
		flag responseFlag
		want map[string]string
	}{
		{
			name: "outbound mTLS through a service",
			rec: flow.Record{
				Direction: flow.Outbound, Source: sleep, Dest: echo, Service: svc, MTLS: true,
				SrcIdentity: sleepID, DstIdentity: echoID,
			},
			want: map[string]string{
				"reporter":                       "source",
				"source_workload":                "sleep",
				"source_canonical_service":       "sleep",
				"source_canonical_revision":      "v1",
				"source_workload_namespace":      "default",
				"source_principal":               sleepID,
				"source_app":                     "sleep",
				"source_version":                 "v1",
				"source_cluster":                 "Kubernetes",
				"destination_service":            "echo.default.svc.cluster.local",
				"destination_service_namespace":  "default",
				"destination_service_name":       "echo",
				"destination_workload":           "echo",
				"destination_canonical_service":  "echo-app",
				"destination_canonical_revision": "v2",
				"destination_workload_namespace": "default",
				"destination_principal":          echoID,
				"destination_app":                "echo-app",
				"destination_version":            "v2",
				"destination_cluster":            "east",
				"request_protocol":               "tcp",
				"response_flags":                 "-",
				"connection_security_policy":     "mutual_tls",
			},
		},
		{
			name: "inbound over HBONE from an unknown peer reports destination",
			rec:  flow.Record{Direction: flow.Inbound, Dest: echo, MTLS: true, SrcIdentity: sleepID, DstIdentity: echoID},
			want: allUnknown(map[string]string{
				"reporter":                       "destination",
				"source_principal":               sleepID,
				"destination_workload":           "echo",
				"destination_canonical_service":  "echo-app",
				"destination_canonical_revision": "v2",
				"destination_workload_namespace": "default",
				"destination_principal":          echoID,
				"destination_app":                "echo-app",
				"destination_version":            "v2",
				"destination_cluster":            "east",
				"connection_security_policy":     "mutual_tls",
			}),
		},
		{
			name: "inbound plaintext falls back to pod name, latest and the configured cluster",
			rec:  flow.Record{Direction: flow.InboundPlain, Source: bare, Dest: bare},
			want: allUnknown(map[string]string{
				"reporter":                       "destination",
				"source_workload":                "bare-pod",
				"source_canonical_service":       "bare-pod",
				"source_canonical_revision":      "latest",
				"source_workload_namespace":      "ns2",
				"source_app":                     "bare-pod",
				"source_version":                 "latest",
				"source_cluster":                 "Kubernetes",
				"destination_workload":           "bare-pod",
				"destination_canonical_service":  "bare-pod",
				"destination_canonical_revision": "latest",
				"destination_workload_namespace": "ns2",
				"destination_app":                "bare-pod",
				"destination_version":            "latest",
				"destination_cluster":            "Kubernetes",
			}),
		},
		{
			name: "canonical name falls back to workload name before pod name",
			rec:  flow.Record{Direction: flow.Outbound, Source: &state.Workload{Name: "p-1", WorkloadName: "p", Namespace: "x"}},
			want: allUnknown(map[string]string{
				"reporter":                  "source",
				"source_workload":           "p",
				"source_canonical_service":  "p",
				"source_canonical_revision": "latest",
				"source_workload_namespace": "x",
				"source_app":                "p",
				"source_version":            "latest",
				"source_cluster":            "Kubernetes",
			}),
		},
		{
			name: "denied outbound passthrough to a service only",
			rec:  flow.Record{Direction: flow.Outbound, Service: svc, Reason: flow.ReasonPolicy},
			flag: flagDeny,
			want: allUnknown(map[string]string{
				"reporter":                      "source",
				"destination_service":           "echo.default.svc.cluster.local",
				"destination_service_namespace": "default",
				"destination_service_name":      "echo",
				"response_flags":                "DENY",
			}),
		},
		{
			name: "empty record",
			want: allUnknown(nil),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := labelMap(deriveLabels(cfg, &tt.rec, tt.flag))
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("labels (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFlagOf(t *testing.T) {
	tests := []struct {
		reason flow.Reason
		err    error
		want   string
	}{
		{flow.ReasonNone, nil, "-"},
		{flow.ReasonPolicy, nil, "DENY"},
		{flow.ReasonUpstreamConnect, errors.New("connection refused"), "CONNECT"},
		{flow.ReasonUpstreamConnect, fmt.Errorf("hbone tls handshake: %w", tls.AlertError(42)), "TLS_FAILURE"},
		{flow.ReasonUpstreamConnect, fmt.Errorf("dial: %w", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}), "TLS_FAILURE"},
		{flow.ReasonTunnelRefused, nil, "CONNECT"},
		{flow.ReasonIdentity, nil, "TLS_FAILURE"},
		{flow.ReasonNoEndpoints, nil, "CONNECT"},
		{flow.ReasonNoServicePort, nil, "CONNECT"},
		{flow.ReasonSelfLoop, nil, "CONNECT"},
		{flow.ReasonUnknownSource, nil, "CONNECT"},
		{flow.ReasonUnknownDestination, nil, "CONNECT"},
		{flow.Reason("some_future_reason"), nil, "CONNECT"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%v", tt.reason, tt.err), func(t *testing.T) {
			got := flagOf(&flow.Record{Reason: tt.reason, Err: tt.err}).String()
			if got != tt.want {
				t.Errorf("flag = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr bool
	}{
		{"default", func(*Config) {}, false},
		{"no cluster", func(c *Config) { c.ClusterID = "" }, true},
		{"bad trust domain", func(c *Config) { c.TrustDomain = "Not A Domain" }, true},
		{"empty trust domain", func(c *Config) { c.TrustDomain = "" }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mutate(&c)
			if err := c.Validate(); (err != nil) != tt.wantErr {
				t.Errorf("Validate() = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}
