package proxy

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/warren-mesh/warren/authz"
	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/state"
)

// Inbound serves traffic arriving for local pods: HBONE streams on 15008
// (as an hbone.Handler) and captured plaintext on 15006.
type Inbound struct {
	cfg     Config
	track   *Tracker
	obs     Observer
	store   *state.Store
	pods    PodLookup
	origDst OrigDstFunc
	log     *slog.Logger
}

var _ hbone.Handler = (*Inbound)(nil)

// NewInbound wires the inbound path.
func NewInbound(cfg Config, env Env, pods PodLookup) *Inbound {
	return &Inbound{cfg: cfg, track: env.Tracker, obs: env.Observer, store: env.Store, pods: pods,
		origDst: env.OrigDst, log: env.Log.With("component", "inbound")}
}

// ServeHBONE handles one CONNECT stream: find the pod, connect to the
// application from the client's address, and only then answer 200.
func (in *Inbound) ServeHBONE(ctx context.Context, r *hbone.Inbound) {
	rec := &flow.Record{Direction: flow.Inbound, Start: time.Now(), Path: flow.PathHBONE, MTLS: true,
		Src: r.Remote, Dst: r.Authority, Target: r.Authority, SrcIdentity: r.Peer.String()}
	// The client's own address, for the log, when its agent stated it and
	// it agrees with where the tunnel comes from.
	if fwd, ok := r.ForwardedFor(); ok && fwd.Addr() == r.Remote.Addr() {
		rec.Src = fwd
	}
	app, err := in.openHBONE(ctx, r, rec)
	if err != nil {
		rec.Err = err
	}
	if app == nil {
		code := http.StatusServiceUnavailable
		if rec.Reason.PolicyDenied() {
			code = http.StatusUnauthorized
		}
		_ = r.Reject(code)
		run(ctx, in.track, in.obs, in.log, rec, nil, nil)
		return
	}
	st, err := r.Accept()
	if err != nil {
		rec.Reason, rec.Err = flow.ReasonUpstreamConnect, err
		run(ctx, in.track, in.obs, in.log, rec, app, nil)
		return
	}
	run(ctx, in.track, in.obs, in.log, rec, st, app)
}

// openHBONE decides on a tunnelled connection and connects to the
// application from the client's address; nil means refused.
func (in *Inbound) openHBONE(ctx context.Context, r *hbone.Inbound, rec *flow.Record) (Duplex, error) {
	return in.admit(ctx, rec, authz.Conn{Identity: r.Peer, SrcIP: r.Remote.Addr(),
		DstIP: r.Authority.Addr(), DstPort: r.Authority.Port()})
}

// ServePlain accepts captured plaintext for pod on ln (its 15006 listener)
// until ln is closed.
func (in *Inbound) ServePlain(ctx context.Context, ln net.Listener, pod *Pod) error {
	return acceptLoop(ln, func(c *net.TCPConn) { in.handlePlain(ctx, c) })
}

func (in *Inbound) handlePlain(ctx context.Context, c *net.TCPConn) {
	rec := &flow.Record{Direction: flow.InboundPlain, Start: time.Now(), Path: flow.PathPassthrough, Src: addrPort(c.RemoteAddr())}
	app, err := in.openPlain(ctx, c, rec)
	if err != nil {
		rec.Err = err
	}
	run(ctx, in.track, in.obs, in.log, rec, c, app)
}

// openPlain decides on a captured plaintext connection and connects to the
// application from the client's address; nil means refused.
func (in *Inbound) openPlain(ctx context.Context, c *net.TCPConn, rec *flow.Record) (Duplex, error) {
	dst, err := in.origDst(c)
	if err != nil {
		rec.Path, rec.Reason = flow.PathDenied, flow.ReasonUnknownDestination
		return nil, err
	}
	rec.Dst, rec.Target = dst, dst

	// Plaintext: no identity, so only policies that do not require one can
	// allow it (and STRICT denies it).
	return in.admit(ctx, rec, authz.Conn{SrcIP: rec.Src.Addr(), DstIP: dst.Addr(), DstPort: dst.Port()})
}

// admit is the inbound decision and action for both paths. Decide: the
// local pod that serves c's destination, and L4 policy for c. Act: connect
// to the application from c's source address. It returns nil when the
// connection is refused, with rec.Reason saying why.
func (in *Inbound) admit(ctx context.Context, rec *flow.Record, c authz.Conn) (Duplex, error) {
	snap := in.store.Load()
	rec.Source, _ = snap.WorkloadByIP(c.SrcIP)
	pod, reason := in.destination(snap, c.DstIP, rec)
	if reason == flow.ReasonNone {
		reason = in.authorize(snap, rec, c)
	}
	if reason != flow.ReasonNone {
		rec.Path, rec.Reason = flow.PathDenied, reason
		return nil, nil
	}

	ctx, cancel := context.WithTimeout(ctx, in.cfg.ConnectTimeout)
	defer cancel()
	app, err := pod.DialFrom(ctx, c.SrcIP, netip.AddrPortFrom(c.DstIP, c.DstPort))
	if err != nil {
		rec.Reason = flow.ReasonUpstreamConnect
		return nil, err
	}
	return app.(*net.TCPConn), nil
}

// authorize applies L4 policy to a connection for rec.Dest and records the
// deciding policies.
func (in *Inbound) authorize(snap *state.Snapshot, rec *flow.Record, c authz.Conn) flow.Reason {
	d := authz.Evaluate(snap, rec.Dest, c)
	if d.Policy != nil {
		rec.Policy = d.Policy.Key()
	}
	if d.DryRun != nil {
		rec.DryRun = d.DryRun.Key()
	}
	if !d.Allowed {
		return d.Reason
	}
	return flow.ReasonNone
}

// Reauthorize re-evaluates every live inbound connection against snap and
// resets those it now denies (a policy was added or changed). It returns how
// many it closed.
func (in *Inbound) Reauthorize(snap *state.Snapshot) int {
	return in.track.CloseIf(func(r *flow.Record) bool {
		if r.Direction == flow.Outbound || r.Dest == nil {
			return false
		}
		dest, ok := snap.Workload(r.Dest.UID)
		if !ok {
			// The pod left the state; its capture is being released and
			// its connections end with it.
			return false
		}
		c := authz.Conn{SrcIP: r.Src.Addr(), DstIP: r.Dst.Addr(), DstPort: r.Dst.Port()}
		if r.Direction == flow.Inbound {
			id, err := spiffeid.FromString(r.SrcIdentity)
			if err != nil {
				return false
			}
			c.Identity = id
		}
		return !authz.Evaluate(snap, dest, c).Allowed
	})
}

// destination finds the local pod serving ip and records it in rec.
func (in *Inbound) destination(snap *state.Snapshot, ip netip.Addr, rec *flow.Record) (*Pod, flow.Reason) {
	pod, ok := in.pods.PodByIP(ip)
	if !ok {
		return nil, flow.ReasonUnknownDestination
	}
	w, ok := snap.Workload(pod.UID)
	if !ok {
		return nil, flow.ReasonUnknownDestination
	}
	rec.Dest = w
	rec.DstIdentity = w.Identity().String()
	return pod, flow.ReasonNone
}
