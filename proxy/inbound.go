package proxy

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/warren-mesh/warren/flow"
	"github.com/warren-mesh/warren/hbone"
	"github.com/warren-mesh/warren/state"
)

// Inbound serves traffic arriving for local pods: HBONE streams on 15008
// (as an hbone.Handler) and captured plaintext on 15006.
type Inbound struct {
	cfg     Config
	store   *state.Store
	pods    PodLookup
	origDst OrigDstFunc
	log     *slog.Logger
}

var _ hbone.Handler = (*Inbound)(nil)

// NewInbound wires the inbound path.
func NewInbound(cfg Config, store *state.Store, pods PodLookup, origDst OrigDstFunc, log *slog.Logger) *Inbound {
	return &Inbound{cfg: cfg, store: store, pods: pods, origDst: origDst, log: log.With("component", "inbound")}
}

// ServeHBONE handles one CONNECT stream: find the pod, connect to the
// application from the client's address, and only then answer 200.
func (in *Inbound) ServeHBONE(ctx context.Context, r *hbone.Inbound) {
	rec := flow.Record{Direction: flow.Inbound, Start: time.Now(), Path: flow.PathHBONE, MTLS: true,
		Src: r.Remote, Dst: r.Authority, Target: r.Authority, SrcIdentity: r.Peer.String()}
	// The client's own address, for the log, when its agent stated it and
	// it agrees with where the tunnel comes from.
	if fwd, ok := r.ForwardedFor(); ok && fwd.Addr() == r.Remote.Addr() {
		rec.Src = fwd
	}
	defer func() {
		rec.Duration = time.Since(rec.Start)
		rec.Log(ctx, in.log)
	}()

	// Decide.
	snap := in.store.Load()
	pod, reason := in.destination(snap, r.Authority.Addr(), &rec)
	if w, ok := snap.WorkloadByIP(r.Remote.Addr()); ok {
		rec.Source = w
	}
	if reason != flow.ReasonNone {
		rec.Path, rec.Reason = flow.PathDenied, reason
		_ = r.Reject(http.StatusServiceUnavailable)
		return
	}

	// Act.
	dctx, cancel := context.WithTimeout(ctx, in.cfg.ConnectTimeout)
	app, err := pod.DialFrom(dctx, r.Remote.Addr(), r.Authority)
	cancel()
	if err != nil {
		rec.Reason, rec.Err = flow.ReasonUpstreamConnect, err
		_ = r.Reject(http.StatusServiceUnavailable)
		return
	}
	st, err := r.Accept()
	if err != nil {
		rec.Reason, rec.Err = flow.ReasonUpstreamConnect, err
		abort(app.(*net.TCPConn))
		return
	}
	rec.Sent, rec.Received, rec.Err = Forward(st, app.(*net.TCPConn))
}

// ServePlain accepts captured plaintext for pod on ln (its 15006 listener)
// until ln is closed.
func (in *Inbound) ServePlain(ctx context.Context, ln net.Listener, pod *Pod) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		go in.handlePlain(ctx, c.(*net.TCPConn))
	}
}

func (in *Inbound) handlePlain(ctx context.Context, c *net.TCPConn) {
	rec := flow.Record{Direction: flow.InboundPlain, Start: time.Now(), Path: flow.PathPassthrough, Src: addrPort(c.RemoteAddr())}
	defer func() {
		rec.Duration = time.Since(rec.Start)
		rec.Log(ctx, in.log)
	}()
	dst, err := in.origDst(c)
	if err != nil {
		rec.Path, rec.Reason, rec.Err = flow.PathDenied, flow.ReasonUnknownDestination, err
		abort(c)
		return
	}
	rec.Dst, rec.Target = dst, dst

	snap := in.store.Load()
	pod, reason := in.destination(snap, dst.Addr(), &rec)
	if w, ok := snap.WorkloadByIP(rec.Src.Addr()); ok {
		rec.Source = w
	}
	if reason != flow.ReasonNone {
		rec.Path, rec.Reason = flow.PathDenied, reason
		abort(c)
		return
	}

	dctx, cancel := context.WithTimeout(ctx, in.cfg.ConnectTimeout)
	app, err := pod.DialFrom(dctx, rec.Src.Addr(), dst)
	cancel()
	if err != nil {
		rec.Reason, rec.Err = flow.ReasonUpstreamConnect, err
		abort(c)
		return
	}
	rec.Sent, rec.Received, rec.Err = Forward(c, app.(*net.TCPConn))
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
