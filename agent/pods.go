package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"

	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/netns"
	"github.com/warren-mesh/warren/proxy"
	"github.com/warren-mesh/warren/redirect"
	"github.com/warren-mesh/warren/state"
)

// enrolled is one local pod the agent captures: its listeners, its rules and
// the identity it holds.
type enrolled struct {
	w         *state.Workload
	pod       *proxy.Pod
	ns        *netns.NS
	listeners []net.Listener
	release   func()
}

// podSet owns the enrolled pods of this node. Reconcile runs on one goroutine
// at a time; PodByIP is called from the data path concurrently.
type podSet struct {
	a *Agent

	mu      sync.RWMutex
	byIP    map[netip.Addr]*proxy.Pod
	running map[string]*enrolled // by UID

	rmu     sync.Mutex // serializes reconcile and teardown
	pending map[string]error
	// changed is closed (and replaced) after every reconcile, waking
	// waitEnrolled; guarded by mu.
	changed chan struct{}
	// reconciled, when set, is told after every reconcile which of the
	// desired pods are captured now (Kubernetes mode records it on the
	// pods); it runs with rmu held, so reports arrive in order.
	reconciled func(captured, released []string)
}

var _ proxy.PodLookup = (*podSet)(nil)

func newPodSet(a *Agent) *podSet {
	return &podSet{a: a, byIP: map[netip.Addr]*proxy.Pod{}, running: map[string]*enrolled{}, pending: map[string]error{}, changed: make(chan struct{})}
}

// PodByIP implements proxy.PodLookup.
func (ps *podSet) PodByIP(ip netip.Addr) (*proxy.Pod, bool) {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	p, ok := ps.byIP[ip.Unmap()]
	return p, ok
}

// enrolled reports whether the pod with uid is captured now.
func (ps *podSet) enrolled(uid string) bool {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	_, ok := ps.running[uid]
	return ok
}

// Pending lists local pods not (yet) enrolled, with why.
func (ps *podSet) Pending() map[string]error {
	ps.rmu.Lock()
	defer ps.rmu.Unlock()
	out := make(map[string]error, len(ps.pending))
	for k, v := range ps.pending {
		out[k] = v
	}
	return out
}

// reconcile brings the enrolled set to what snap says for this node: pods
// that left or changed are released first, then new pods are enrolled. A pod
// that fails to enrol is left out (and listed as pending) without affecting
// the others; the caller retries later.
func (ps *podSet) reconcile(ctx context.Context, snap *state.Snapshot) {
	ps.rmu.Lock()
	defer ps.rmu.Unlock()

	desired := map[string]*state.Workload{}
	for _, w := range snap.LocalWorkloads(ps.a.cfg.Node) {
		desired[w.UID] = w
	}
	ps.mu.RLock()
	var gone []*enrolled
	for uid, e := range ps.running {
		if w, ok := desired[uid]; !ok || !sameEnrolment(e.w, w) {
			gone = append(gone, e)
		}
	}
	ps.mu.RUnlock()
	var released []string
	for _, e := range gone {
		ps.release(ctx, e)
		if _, still := desired[e.w.UID]; !still {
			released = append(released, e.w.UID)
		}
	}

	ps.pending = map[string]error{}
	for _, uid := range sortedKeys(desired) {
		ps.mu.RLock()
		_, ok := ps.running[uid]
		ps.mu.RUnlock()
		if ok {
			continue
		}
		if err := ps.enrol(ctx, desired[uid]); err != nil {
			ps.pending[uid] = err
			ps.a.log.Error("enrolling pod", "uid", uid, "netns", desired[uid].NetNS, "error", err)
		}
	}

	ps.mu.Lock()
	var captured []string
	for _, uid := range sortedKeys(desired) {
		if _, ok := ps.running[uid]; ok {
			captured = append(captured, uid)
		}
	}
	close(ps.changed)
	ps.changed = make(chan struct{})
	ps.mu.Unlock()
	if ps.reconciled != nil {
		ps.reconciled(captured, released)
	}
}

// capturedIPs lists the addresses of every captured pod.
func (ps *podSet) capturedIPs() []netip.Addr {
	ps.mu.RLock()
	defer ps.mu.RUnlock()
	ips := make([]netip.Addr, 0, len(ps.byIP))
	for ip := range ps.byIP {
		ips = append(ips, ip)
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return ips
}

// waitEnrolled blocks until the pod with uid is captured or ctx ends; then
// the error says why it is not (its enrolment error, if it had one).
func (ps *podSet) waitEnrolled(ctx context.Context, uid string) error {
	for {
		ps.mu.RLock()
		_, ok := ps.running[uid]
		ch := ps.changed
		ps.mu.RUnlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			if err, ok := ps.Pending()[uid]; ok {
				return fmt.Errorf("pod %s not captured: %w", uid, err)
			}
			return fmt.Errorf("pod %s not captured: %w", uid, ctx.Err())
		}
	}
}

// sameEnrolment reports whether a workload change leaves its capture as it
// is; anything that changes listeners, rules or identity re-enrols the pod.
func sameEnrolment(a, b *state.Workload) bool {
	return a.NetNS == b.NetNS && slices.Equal(a.IPs, b.IPs) && a.Identity() == b.Identity()
}

// enrol captures one pod. In order: open its netns, get its identity, open
// the three listeners inside it, make it reachable by the data path, start
// serving, and only then install the capture rules — so captured traffic
// never meets a closed port. On failure everything done so far is undone; it
// may be retried.
func (ps *podSet) enrol(ctx context.Context, w *state.Workload) (err error) {
	a := ps.a
	e := &enrolled{w: w}
	defer func() {
		if err != nil {
			ps.undo(ctx, e)
		}
	}()

	if e.ns, err = netns.Open(w.NetNS); err != nil {
		return err
	}
	svid, release, err := a.ids.Acquire(ctx, w.Identity())
	if err != nil {
		return fmt.Errorf("getting certificate for %s: %w", w.Identity(), err)
	}
	e.release = release
	dial, dialFrom := proxy.NetNSDialers(e.ns, a.cfg.Capture.AgentMark, a.cfg.Proxy.ConnectTimeout)
	e.pod = &proxy.Pod{UID: w.UID, IPs: w.IPs, SVID: svid, Dial: dial, DialFrom: dialFrom}

	var lc net.ListenConfig
	listen := func(network, host string, port uint16) (net.Listener, error) {
		ln, err := e.ns.Listen(ctx, &lc, network, net.JoinHostPort(host, strconv.Itoa(int(port))))
		if err == nil {
			e.listeners = append(e.listeners, ln)
		}
		return ln, err
	}
	type served struct {
		ln    net.Listener
		serve func(net.Listener) error
	}
	var serve []served
	for _, fam := range families(w.IPs) {
		// Outbound capture rewrites the destination to loopback (REDIRECT
		// in OUTPUT), so 15001 need not be reachable from outside the pod.
		out, err := listen(fam.network, fam.loopback, a.cfg.Capture.OutboundPort)
		if err != nil {
			return err
		}
		plain, err := listen(fam.network, fam.any, a.cfg.Capture.InboundPlaintextPort)
		if err != nil {
			return err
		}
		tun, err := listen(fam.network, fam.any, a.cfg.Capture.InboundTunnelPort)
		if err != nil {
			return err
		}
		serve = append(serve,
			served{out, func(ln net.Listener) error { return a.outbound.Serve(a.ctx, ln, e.pod) }},
			served{plain, func(ln net.Listener) error { return a.inbound.ServePlain(a.ctx, ln, e.pod) }},
			served{tun, func(ln net.Listener) error {
				return a.tunnels.Serve(ln, hbone.ServerIdentity{SVID: svid, Bundle: a.ids.Bundle(), TrustDomain: a.trustDomain})
			}},
		)
	}

	ps.mu.Lock()
	for _, ip := range w.IPs {
		ps.byIP[ip] = e.pod
	}
	ps.running[w.UID] = e
	ps.mu.Unlock()

	for _, s := range serve {
		go func() {
			if err := s.serve(s.ln); err != nil && !errors.Is(err, net.ErrClosed) {
				a.log.Error("serving pod listener", "uid", w.UID, "addr", s.ln.Addr(), "error", err)
			}
		}()
	}

	if err := a.capture.Apply(ctx, redirect.Pod{NetNS: w.NetNS, IPs: w.IPs}); err != nil {
		return fmt.Errorf("installing capture rules: %w", err)
	}
	a.log.Info("pod enrolled", "uid", w.UID, "ips", w.IPs, "identity", w.Identity().String(), "netns", w.NetNS)
	return nil
}

// release stops capturing a pod: rules first (so the application reaches
// its peers directly again), then listeners, then the identity. Connections
// already open keep running to their end.
func (ps *podSet) release(ctx context.Context, e *enrolled) {
	if err := ps.a.capture.Remove(ctx, redirect.Pod{NetNS: e.w.NetNS, IPs: e.w.IPs}); err != nil {
		ps.a.log.Error("removing capture rules", "uid", e.w.UID, "error", err)
	}
	ps.undo(ctx, e)
	ps.a.log.Info("pod released", "uid", e.w.UID)
}

// undo closes what enrol opened; safe on a partly enrolled pod.
func (ps *podSet) undo(_ context.Context, e *enrolled) {
	ps.mu.Lock()
	if cur, ok := ps.running[e.w.UID]; ok && cur == e {
		delete(ps.running, e.w.UID)
		for _, ip := range e.w.IPs {
			if ps.byIP[ip] == e.pod {
				delete(ps.byIP, ip)
			}
		}
	}
	ps.mu.Unlock()
	for _, ln := range e.listeners {
		ln.Close()
	}
	if e.release != nil {
		e.release()
	}
	if e.ns != nil {
		e.ns.Close()
	}
}

// releaseAll releases every pod (agent shutdown): rules removed, so the pods
// talk directly again.
func (ps *podSet) releaseAll(ctx context.Context) { ps.stopAll(ctx, true) }

// detachAll closes every pod's listeners but leaves its capture rules in
// place (Kubernetes mode, agent restart): until the next agent adopts the
// pod its traffic is refused rather than sent in plaintext, as with
// ztunnel.
func (ps *podSet) detachAll(ctx context.Context) { ps.stopAll(ctx, false) }

func (ps *podSet) stopAll(ctx context.Context, removeRules bool) {
	ps.rmu.Lock()
	defer ps.rmu.Unlock()
	ps.mu.RLock()
	all := make([]*enrolled, 0, len(ps.running))
	for _, e := range ps.running {
		all = append(all, e)
	}
	ps.mu.RUnlock()
	for _, e := range all {
		if removeRules {
			ps.release(ctx, e)
		} else {
			ps.undo(ctx, e)
		}
	}
}

// family is one address family's listening addresses. Listening with
// "tcp6" sets IPV6_V6ONLY, so a dual-stack pod gets separate IPv4 and IPv6
// sockets on the same port.
type family struct{ network, loopback, any string }

// families lists the address families a pod has, so it gets listeners for
// exactly those.
func families(ips []netip.Addr) []family {
	var v4, v6 bool
	for _, ip := range ips {
		if ip.Unmap().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	var out []family
	if v4 {
		out = append(out, family{"tcp4", "127.0.0.1", "0.0.0.0"})
	}
	if v6 {
		out = append(out, family{"tcp6", "::1", "::"})
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
