package state

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
)

// Snapshot is one consistent, immutable view of the mesh. Nothing in it may
// be modified after NewSnapshot returns; replace the whole Snapshot instead.
type Snapshot struct {
	// Version names where the snapshot came from (file hash, xDS nonce).
	Version string

	workloads  map[string]*Workload // by UID
	byIP       map[netip.Addr]*Workload
	services   map[string]*Service // by Key()
	byVIP      map[netip.Addr]*Service
	policies   map[string]*Policy // by Key()
	policyIx   []string
	workloadIx []string // UIDs, sorted
	serviceIx  []string // keys, sorted

	// Policies by scope, split by action, each in key order: authorization
	// runs on every connection and walks these slices instead of maps.
	// Workload-selector policies are resolved per workload, from its
	// AuthorizationPolicies keys.
	globalPolicies PolicySet
	nsPolicies     map[string]PolicySet
	selected       map[*Workload]PolicySet
}

// PolicySet is the policies of one scope, split by action and ordered by
// key. Its slices belong to the Snapshot and must not be modified.
type PolicySet struct {
	Deny, Allow []*Policy
}

// NewSnapshot indexes workloads, services and policies and computes each
// workload's identity; the objects become part of the snapshot and must
// not be changed afterwards. It fails on an invalid identity or on duplicate UIDs,
// workload IPs, service keys or VIPs, since any of those would make the data
// path's answer depend on map order.
func NewSnapshot(version string, workloads []*Workload, services []*Service, policies []*Policy) (*Snapshot, error) {
	s := &Snapshot{
		Version:   version,
		workloads: make(map[string]*Workload, len(workloads)),
		byIP:      make(map[netip.Addr]*Workload, len(workloads)),
		services:  make(map[string]*Service, len(services)),
		byVIP:     make(map[netip.Addr]*Service, len(services)),
		policies:  make(map[string]*Policy, len(policies)),
	}
	for _, w := range workloads {
		if _, dup := s.workloads[w.UID]; dup {
			return nil, fmt.Errorf("workload %q: %w", w.UID, ErrDuplicate)
		}
		id, err := w.buildIdentity()
		if err != nil {
			return nil, fmt.Errorf("workload %q: identity: %w", w.UID, err)
		}
		w.id = id
		s.workloads[w.UID] = w
		s.workloadIx = append(s.workloadIx, w.UID)
		for _, ip := range w.IPs {
			if other, dup := s.byIP[ip]; dup {
				return nil, fmt.Errorf("workload %q: address %s also used by %q: %w", w.UID, ip, other.UID, ErrDuplicate)
			}
			s.byIP[ip] = w
		}
	}
	for _, svc := range services {
		k := svc.Key()
		if _, dup := s.services[k]; dup {
			return nil, fmt.Errorf("service %q: %w", k, ErrDuplicate)
		}
		s.services[k] = svc
		s.serviceIx = append(s.serviceIx, k)
		for _, vip := range svc.VIPs {
			if other, dup := s.byVIP[vip]; dup {
				return nil, fmt.Errorf("service %q: VIP %s also used by %q: %w", k, vip, other.Key(), ErrDuplicate)
			}
			if w, dup := s.byIP[vip]; dup {
				return nil, fmt.Errorf("service %q: VIP %s is workload %q's address: %w", k, vip, w.UID, ErrDuplicate)
			}
			s.byVIP[vip] = svc
		}
	}
	for _, p := range policies {
		k := p.Key()
		if _, dup := s.policies[k]; dup {
			return nil, fmt.Errorf("policy %q: %w", k, ErrDuplicate)
		}
		s.policies[k] = p
		s.policyIx = append(s.policyIx, k)
	}
	sort.Strings(s.policyIx)
	sort.Strings(s.workloadIx)
	sort.Strings(s.serviceIx)
	s.indexPolicies()
	return s, nil
}

// indexPolicies fills the per-scope policy sets, walking policies in key
// order so that evaluation order (and so which policy a decision names) does
// not depend on the order a source listed them in.
func (s *Snapshot) indexPolicies() {
	s.nsPolicies = make(map[string]PolicySet)
	add := func(set *PolicySet, p *Policy) {
		if p.Action == ActionDeny {
			set.Deny = append(set.Deny, p)
		} else {
			set.Allow = append(set.Allow, p)
		}
	}
	for _, k := range s.policyIx {
		p := s.policies[k]
		switch p.Scope {
		case ScopeGlobal:
			add(&s.globalPolicies, p)
		case ScopeNamespace:
			set := s.nsPolicies[p.Namespace]
			add(&set, p)
			s.nsPolicies[p.Namespace] = set
		}
	}
	s.selected = make(map[*Workload]PolicySet)
	for _, uid := range s.workloadIx {
		w := s.workloads[uid]
		var set PolicySet
		for _, k := range w.AuthorizationPolicies {
			// A key without a policy is one in transit from the control
			// plane (ztunnel skips it too); it cannot select anything.
			if p, ok := s.policies[k]; ok {
				add(&set, p)
			}
		}
		if len(set.Deny)+len(set.Allow) > 0 {
			s.selected[w] = set
		}
	}
}

// Empty is the snapshot before any source has delivered.
var Empty = func() *Snapshot { s, _ := NewSnapshot("", nil, nil, nil); return s }()

// WorkloadByIP finds the workload owning ip.
func (s *Snapshot) WorkloadByIP(ip netip.Addr) (*Workload, bool) {
	w, ok := s.byIP[ip.Unmap()]
	return w, ok
}

// Workload finds a workload by UID.
func (s *Snapshot) Workload(uid string) (*Workload, bool) {
	w, ok := s.workloads[uid]
	return w, ok
}

// ServiceByVIP finds the service with virtual IP ip.
func (s *Snapshot) ServiceByVIP(ip netip.Addr) (*Service, bool) {
	svc, ok := s.byVIP[ip.Unmap()]
	return svc, ok
}

// Service finds a service by its key "<namespace>/<hostname>".
func (s *Snapshot) Service(key string) (*Service, bool) {
	svc, ok := s.services[key]
	return svc, ok
}

// Workloads lists all workloads ordered by UID.
func (s *Snapshot) Workloads() []*Workload {
	return ordered(s.workloadIx, s.workloads)
}

// Services lists all services ordered by key.
func (s *Snapshot) Services() []*Service {
	return ordered(s.serviceIx, s.services)
}

// Policy finds a policy by its key "<namespace>/<name>".
func (s *Snapshot) Policy(key string) (*Policy, bool) {
	p, ok := s.policies[key]
	return p, ok
}

// Policies lists all policies ordered by key.
func (s *Snapshot) Policies() []*Policy {
	return ordered(s.policyIx, s.policies)
}

// GlobalPolicies are the policies that apply to every workload in the mesh.
func (s *Snapshot) GlobalPolicies() PolicySet { return s.globalPolicies }

// NamespacePolicies are the namespace-scoped policies of namespace ns, which
// apply to every workload in it.
func (s *Snapshot) NamespacePolicies(ns string) PolicySet { return s.nsPolicies[ns] }

// SelectedPolicies are the policies that w lists in AuthorizationPolicies
// and the snapshot holds, in w's order; keys without a policy are skipped.
// ok is false when w is not one of the snapshot's workloads, and the caller
// must resolve w.AuthorizationPolicies with Policy itself.
func (s *Snapshot) SelectedPolicies(w *Workload) (set PolicySet, ok bool) {
	if set, found := s.selected[w]; found {
		return set, true
	}
	return PolicySet{}, len(w.AuthorizationPolicies) == 0 || s.workloads[w.UID] == w
}

// LocalWorkloads lists the workloads on node that the agent captures (HBONE
// with a network namespace), ordered by UID.
func (s *Snapshot) LocalWorkloads(node string) []*Workload {
	var out []*Workload
	for _, uid := range s.workloadIx {
		w := s.workloads[uid]
		if w.Node == node && w.Captured() && w.NetNS != "" {
			out = append(out, w)
		}
	}
	return out
}

// Store holds the current Snapshot. Readers call Load on every decision and
// never hold a snapshot longer than one decision; writers Swap whole
// snapshots.
type Store struct {
	cur atomic.Pointer[Snapshot]

	mu   sync.Mutex
	subs []func(old, new *Snapshot)
}

// NewStore starts with the Empty snapshot.
func NewStore() *Store {
	st := &Store{}
	st.cur.Store(Empty)
	return st
}

// Load returns the current snapshot. It never returns nil.
func (st *Store) Load() *Snapshot { return st.cur.Load() }

// Swap installs next and calls every subscriber, in subscription order, with
// the previous and the new snapshot. Swaps are serialized, so subscribers see
// every transition exactly once and in order.
func (st *Store) Swap(next *Snapshot) {
	st.mu.Lock()
	defer st.mu.Unlock()
	old := st.cur.Swap(next)
	for _, fn := range st.subs {
		fn(old, next)
	}
}

// Subscribe registers fn for future swaps.
func (st *Store) Subscribe(fn func(old, new *Snapshot)) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.subs = append(st.subs, fn)
}

// ordered returns m's values in the order of the sorted keys ix.
func ordered[T any](ix []string, m map[string]T) []T {
	out := make([]T, 0, len(ix))
	for _, k := range ix {
		out = append(out, m[k])
	}
	return out
}
