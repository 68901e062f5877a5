package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/warren-mesh/warren/classify"
	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/state"
)

// OrigDstFunc recovers the destination an application asked for before
// capture rewrote it.
type OrigDstFunc func(c *net.TCPConn) (netip.AddrPort, error)

// Outbound serves connections captured from local pods on 15001.
type Outbound struct {
	cfg     Config
	track   *Tracker
	obs     Observer
	store   *state.Store
	cls     *classify.Classifier
	tun     Tunnel
	bundle  Bundle
	origDst OrigDstFunc
	log     *slog.Logger
}

// NewOutbound wires the outbound path.
func NewOutbound(cfg Config, env Env, cls *classify.Classifier, tun Tunnel, bundle Bundle) *Outbound {
	return &Outbound{cfg: cfg, track: env.Tracker, obs: env.Observer, store: env.Store, cls: cls, tun: tun, bundle: bundle,
		origDst: env.OrigDst, log: env.Log.With("component", "outbound")}
}

// Serve accepts on ln (the pod's 15001 listener) until it is closed. Each
// connection is handled on its own goroutine and outlives Serve.
func (o *Outbound) Serve(ctx context.Context, ln net.Listener, pod *Pod) error {
	return acceptLoop(ln, func(c *net.TCPConn) { o.handle(ctx, c, pod) })
}

func (o *Outbound) handle(ctx context.Context, c *net.TCPConn, pod *Pod) {
	rec := &flow.Record{Direction: flow.Outbound, Start: time.Now(), Src: addrPort(c.RemoteAddr())}
	up, err := o.open(ctx, c, pod, rec)
	if err != nil {
		rec.Err = err
	}
	run(ctx, o.track, o.obs, o.log, rec, c, up)
}

// open decides what to do with c and opens its upstream; a nil Duplex
// means refused, with rec.Reason saying why.
func (o *Outbound) open(ctx context.Context, c *net.TCPConn, pod *Pod, rec *flow.Record) (Duplex, error) {
	dst, err := o.origDst(c)
	if err != nil {
		rec.Path, rec.Reason = flow.PathDenied, flow.ReasonUnknownDestination
		return nil, err
	}
	rec.Dst = dst

	// Decide.
	snap := o.store.Load()
	src, _ := snap.Workload(pod.UID)
	plan := o.cls.Outbound(snap, src, dst)
	describePlan(rec, src, plan)

	// Act.
	ctx, cancel := context.WithTimeout(ctx, o.cfg.ConnectTimeout)
	defer cancel()
	var up Duplex
	switch plan.Action {
	case classify.Deny:
		return nil, nil
	case classify.Passthrough:
		var nc net.Conn
		if nc, err = pod.Dial(ctx, plan.Target); err == nil {
			up = nc.(*net.TCPConn)
		}
	case classify.HBONE:
		up, err = o.tun.Connect(ctx, &hbone.Request{
			SourceID:  src.Identity(),
			SVID:      pod.SVID,
			Bundle:    o.bundle,
			Expected:  plan.Identities,
			Target:    plan.Target,
			SourceIP:  rec.Src.Addr(),
			Dial:      pod.Dial,
			Authority: plan.Authority,
			Forwarded: rec.Src,
		})
	}
	if err != nil {
		rec.Reason = flow.ReasonUpstreamConnect
		var se *hbone.StatusError
		if errors.As(err, &se) {
			rec.Reason = flow.ReasonTunnelRefused
		}
		return nil, err
	}
	return up, nil
}

// describePlan fills the access-log fields known once the plan is made.
func describePlan(rec *flow.Record, src *state.Workload, plan classify.Plan) {
	rec.Source, rec.Dest, rec.Service = src, plan.Dest, plan.Service
	if src != nil {
		rec.SrcIdentity = src.Identity().String()
	}
	if plan.Action == classify.HBONE {
		rec.MTLS = true
		rec.DstIdentity = plan.Dest.Identity().String()
	}
	rec.Target = plan.Target
	rec.Reason = plan.Reason
	switch plan.Action {
	case classify.Deny:
		rec.Path = flow.PathDenied
	case classify.Passthrough:
		rec.Path = flow.PathPassthrough
	case classify.HBONE:
		rec.Path = flow.PathHBONE
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}
