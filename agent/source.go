package agent

import (
	"github.com/warren-mesh/warren/admin"
	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/identity"
	"github.com/warren-mesh/warren/state"
)

// Version is the agent's version, set at build time with
// -ldflags "-X github.com/warren-mesh/warren/agent.Version=...".
var Version = "dev"

// adminSource is the agent as the admin server reads it.
type adminSource Agent

var _ admin.Source = (*adminSource)(nil)

func (s *adminSource) Snapshot() *state.Snapshot         { return s.store.Load() }
func (s *adminSource) Certificates() []identity.CertInfo { return s.ids.Identities() }
func (s *adminSource) Connections() []flow.Record        { return s.conns.Connections() }
func (s *adminSource) Pending() []string                 { return (*Agent)(s).Pending() }

// LocalPods lists every pod this node should capture, enrolled or not.
func (s *adminSource) LocalPods() []admin.PodState {
	pending := s.pods.Pending()
	var out []admin.PodState
	for _, w := range s.store.Load().LocalWorkloads(s.cfg.Node) {
		ps := admin.PodState{Workload: w, Up: true}
		if err, ok := pending[w.UID]; ok {
			ps.Up, ps.Pending = false, err.Error()
		} else if !s.pods.enrolled(w.UID) {
			ps.Up, ps.Pending = false, "not enrolled yet"
		}
		out = append(out, ps)
	}
	return out
}
