package proxy

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/warren-mesh/warren/flow"
)

// Observer is told about every connection the proxy handles: once when it
// has been decided (and, if allowed, its upstream opened), and once at
// close. Metrics implement it.
type Observer interface {
	Opened(r *flow.Record)
	Closed(r *flow.Record)
}

// NopObserver observes nothing.
type NopObserver struct{}

func (NopObserver) Opened(*flow.Record) {}
func (NopObserver) Closed(*flow.Record) {}

var _ Observer = NopObserver{}

// Tracker holds the live connections of an agent, so they can be listed
// (config dump) and closed when a policy change denies them.
type Tracker struct {
	mu    sync.Mutex
	conns map[*tracked]struct{}
}

type tracked struct {
	rec   *flow.Record // fields are not written while tracked
	abort func()
}

// NewTracker returns an empty tracker.
func NewTracker() *Tracker { return &Tracker{conns: map[*tracked]struct{}{}} }

func (t *Tracker) add(rec *flow.Record, abort func()) *tracked {
	tk := &tracked{rec: rec, abort: abort}
	t.mu.Lock()
	t.conns[tk] = struct{}{}
	t.mu.Unlock()
	return tk
}

func (t *Tracker) remove(tk *tracked) {
	t.mu.Lock()
	delete(t.conns, tk)
	t.mu.Unlock()
}

// Connections returns a copy of every live connection's record.
func (t *Tracker) Connections() []flow.Record {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]flow.Record, 0, len(t.conns))
	for tk := range t.conns {
		out = append(out, *tk.rec)
	}
	return out
}

// CloseIf resets every live connection whose record matches and returns
// how many it closed. The connections' own goroutines then finish them
// (access log, metrics) as for any other reset.
func (t *Tracker) CloseIf(match func(r *flow.Record) bool) int {
	t.mu.Lock()
	var victims []*tracked
	for tk := range t.conns {
		if match(tk.rec) {
			victims = append(victims, tk)
		}
	}
	t.mu.Unlock()
	for _, tk := range victims {
		tk.abort()
	}
	return len(victims)
}

// run is the life of one connection after its decision: tracked while the
// bytes flow, observed at open and close, logged once at the end. up is nil
// for a connection that was refused (rec.Reason says why); client is then
// reset.
func run(ctx context.Context, t *Tracker, obs Observer, log *slog.Logger, rec *flow.Record, client, up Duplex) {
	obs.Opened(rec)
	if up != nil {
		tk := t.add(rec, func() {
			abort(client)
			abort(up)
		})
		sent, received, err := Forward(client, up)
		t.remove(tk)
		rec.Sent, rec.Received, rec.Err = sent, received, err
	} else if client != nil {
		abort(client)
	}
	rec.Duration = time.Since(rec.Start)
	obs.Closed(rec)
	rec.Log(ctx, log)
}
