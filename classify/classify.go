package classify

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/state"
)

// Action is what the proxy does with a captured connection.
type Action int

const (
	// Deny: close the application's connection; Plan.Reason says why.
	Deny Action = iota
	// HBONE: open a CONNECT stream to Plan.Target (the destination pod's
	// 15008) with :authority Plan.Authority, expecting one of
	// Plan.Identities.
	HBONE
	// Passthrough: plain TCP to Plan.Target, for destinations that are not
	// captured (outside the mesh, or workloads with protocol TCP).
	Passthrough
)

func (a Action) String() string {
	switch a {
	case Deny:
		return "deny"
	case HBONE:
		return "hbone"
	case Passthrough:
		return "passthrough"
	}
	return fmt.Sprintf("Action(%d)", int(a))
}

// Plan is the outcome of classification: everything the proxy needs to act.
type Plan struct {
	Action Action
	Reason flow.Reason // set when Action is Deny
	// Target is where to dial: <pod ip>:15008 for HBONE, the (resolved)
	// destination for Passthrough.
	Target netip.AddrPort
	// Authority is the HBONE :authority, the destination pod address and
	// target port.
	Authority netip.AddrPort
	// Identities are the server identities the client accepts (HBONE only).
	Identities []spiffeid.ID
	// Dest is the destination workload, nil outside the mesh.
	Dest *state.Workload
	// Service is set when the destination was a service VIP.
	Service *state.Service
}

// Config holds the ports that shape classification.
type Config struct {
	// HBONEPort is where every captured pod accepts tunnels (Istio: 15008).
	HBONEPort uint16
	// Reserved are the agent's own in-pod ports; a connection to one of them
	// was captured from an application and would loop back into the agent,
	// so it is refused.
	Reserved []uint16
}

// DefaultConfig uses Istio's ports: 15001 outbound, 15006 inbound plaintext,
// 15008 HBONE.
func DefaultConfig() Config {
	return Config{HBONEPort: 15008, Reserved: []uint16{15001, 15006, 15008}}
}

// Validate checks that the ports are usable.
func (c Config) Validate() error {
	if c.HBONEPort == 0 {
		return errors.New("classify: HBONEPort must be set")
	}
	if !slices.Contains(c.Reserved, c.HBONEPort) {
		return fmt.Errorf("classify: HBONEPort %d must be among the reserved ports", c.HBONEPort)
	}
	return nil
}

// Picker chooses one of n endpoints (0 <= result < n). Tests pass a fixed
// one; the agent uses RandomPicker.
type Picker func(n int) int

// RandomPicker spreads connections uniformly over endpoints.
func RandomPicker(n int) int { return rand.IntN(n) }

// Classifier decides outbound plans.
type Classifier struct {
	cfg  Config
	pick Picker
}

// New returns a Classifier; pick may be nil for RandomPicker.
func New(cfg Config, pick Picker) (*Classifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if pick == nil {
		pick = RandomPicker
	}
	return &Classifier{cfg: cfg, pick: pick}, nil
}

// Outbound decides what to do with a connection that src opened to dst.
// It reads only snap and does no I/O.
func (c *Classifier) Outbound(snap *state.Snapshot, src *state.Workload, dst netip.AddrPort) Plan {
	if src == nil {
		return Plan{Action: Deny, Reason: flow.ReasonUnknownSource}
	}
	if slices.Contains(c.cfg.Reserved, dst.Port()) {
		return Plan{Action: Deny, Reason: flow.ReasonSelfLoop}
	}
	ip := dst.Addr().Unmap()
	if svc, ok := snap.ServiceByVIP(ip); ok {
		return c.toService(snap, svc, dst.Port())
	}
	if w, ok := snap.WorkloadByIP(ip); ok {
		return c.toWorkload(w, netip.AddrPortFrom(ip, dst.Port()), nil)
	}
	return Plan{Action: Passthrough, Target: netip.AddrPortFrom(ip, dst.Port())}
}

// toService resolves a VIP to one endpoint. Endpoints whose workload is
// missing from the snapshot or has no address of the VIP's family are
// skipped rather than chosen and failed.
func (c *Classifier) toService(snap *state.Snapshot, svc *state.Service, port uint16) Plan {
	if _, ok := svc.Ports[port]; !ok {
		return Plan{Action: Deny, Reason: flow.ReasonNoServicePort, Service: svc}
	}
	type candidate struct {
		w      *state.Workload
		target uint16
	}
	// Services are small; a stack array keeps the common case free of heap
	// allocation.
	var buf [16]candidate
	cands := buf[:0]
	for _, e := range svc.Endpoints {
		w, ok := snap.Workload(e.WorkloadUID)
		if !ok || len(w.IPs) == 0 {
			continue
		}
		t, ok := svc.TargetPort(e, port)
		if !ok {
			continue
		}
		cands = append(cands, candidate{w, t})
	}
	if len(cands) == 0 {
		return Plan{Action: Deny, Reason: flow.ReasonNoEndpoints, Service: svc}
	}
	chosen := cands[c.pick(len(cands))]
	p := c.toWorkload(chosen.w, netip.AddrPortFrom(chosen.w.IPs[0], chosen.target), svc)
	p.Service = svc
	return p
}

func (c *Classifier) toWorkload(w *state.Workload, dst netip.AddrPort, svc *state.Service) Plan {
	if !w.Captured() {
		return Plan{Action: Passthrough, Target: dst, Dest: w}
	}
	ids := []spiffeid.ID{w.Identity()}
	if svc != nil {
		for _, san := range svc.SubjectAltNames {
			if !slices.Contains(ids, san) {
				ids = append(ids, san)
			}
		}
	}
	return Plan{
		Action:     HBONE,
		Target:     netip.AddrPortFrom(dst.Addr(), c.cfg.HBONEPort),
		Authority:  dst,
		Identities: ids,
		Dest:       w,
	}
}
