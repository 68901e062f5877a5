package authz

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"istio.io/istio/pkg/workloadapi/security"

	"github.com/warren-mesh/warren/state"
)

func TestProtoRoundTrip(t *testing.T) {
	p := &state.Policy{
		Name: "p", Namespace: "ns", Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny, DryRun: true,
		Groups: []state.Group{
			{Rules: []state.Rule{{Matches: []state.Match{{
				Namespaces:          []state.StringMatch{{Exact: "a"}, {Prefix: "b"}, {Suffix: "c"}, {Presence: true}},
				NotNamespaces:       exact("x"),
				ServiceAccounts:     []state.ServiceAccountMatch{{Namespace: "a", ServiceAccount: "b"}},
				NotServiceAccounts:  []state.ServiceAccountMatch{{Namespace: "c", ServiceAccount: "d"}},
				Principals:          exact("td/ns/a/sa/b"),
				NotPrincipals:       presence,
				SourceIPs:           prefixes("10.0.0.0/8", "fd00::/64"),
				NotSourceIPs:        prefixes("10.0.0.1"),
				DestinationIPs:      prefixes("10.2.0.0/16"),
				NotDestinationIPs:   prefixes("fd00::1"),
				DestinationPorts:    []uint16{80, 65535},
				NotDestinationPorts: []uint16{22},
			}}}, {}}},
			{},
		},
	}
	for _, scope := range []state.Scope{state.ScopeGlobal, state.ScopeNamespace, state.ScopeWorkloadSelector} {
		p.Scope = scope
		got, err := FromProto(ToProto(p))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(p, got, cmpOpts...); diff != "" {
			t.Errorf("round trip, scope %s (-want +got):\n%s", scope, diff)
		}
	}
}

func TestFromProto(t *testing.T) {
	tests := []struct {
		name    string
		in      string // protojson of an Authorization
		want    *state.Policy
		wantErr bool
	}{
		{
			name: "as istiod sends STRICT",
			in: `{"name": "istio_converted_static_strict", "namespace": "istio-system", "scope": "WORKLOAD_SELECTOR", "action": "DENY",
				"groups": [{"rules": [{"matches": [{"notPrincipals": [{"presence": {}}]}]}]}]}`,
			want: &state.Policy{Name: "istio_converted_static_strict", Namespace: "istio-system", Scope: state.ScopeWorkloadSelector, Action: state.ActionDeny,
				Groups: []state.Group{one(state.Match{NotPrincipals: presence})}},
		},
		{
			name: "ipv4 as 4 bytes and v4-mapped as 16",
			in:   `{"name": "p", "groups": [{"rules": [{"matches": [{"sourceIps": [{"address": "CgAAAA==", "length": 8}, {"address": "AAAAAAAAAAAAAP//CgEAAA==", "length": 112}]}]}]}]}`,
			want: &state.Policy{Name: "p", Groups: []state.Group{one(state.Match{SourceIPs: prefixes("10.0.0.0/8", "10.1.0.0/16")})}},
		},
		{name: "unknown scope", in: `{"name": "p", "scope": 7}`, wantErr: true},
		{name: "unknown action", in: `{"name": "p", "action": 9}`, wantErr: true},
		{name: "no name", in: `{}`, wantErr: true},
		{name: "bad address length", in: `{"name": "p", "groups": [{"rules": [{"matches": [{"sourceIps": [{"address": "CgAA", "length": 8}]}]}]}]}`, wantErr: true},
		{name: "prefix length too long", in: `{"name": "p", "groups": [{"rules": [{"matches": [{"destinationIps": [{"address": "CgAAAA==", "length": 33}]}]}]}]}`, wantErr: true},
		{name: "string match without type", in: `{"name": "p", "groups": [{"rules": [{"matches": [{"principals": [{}]}]}]}]}`, wantErr: true},
		{name: "empty prefix", in: `{"name": "p", "groups": [{"rules": [{"matches": [{"namespaces": [{"prefix": ""}]}]}]}]}`, wantErr: true},
		{name: "port out of range", in: `{"name": "p", "groups": [{"rules": [{"matches": [{"destinationPorts": [70000]}]}]}]}`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &security.Authorization{}
			if err := protojson.Unmarshal([]byte(tt.in), a); err != nil {
				t.Fatalf("test input: %v", err)
			}
			got, err := FromProto(a)
			if tt.wantErr {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v, want one wrapping ErrInvalid", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmpOpts...); diff != "" {
				t.Errorf("policy (-want +got):\n%s", diff)
			}
		})
	}
}
