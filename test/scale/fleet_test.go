package scale

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/warren-mesh/warren/discovery"
	"github.com/warren-mesh/warren/state"
)

// fleet is n agents' discovery: each an xDS source feeding its own
// store, as in warren-agent. It tells when every store holds a snapshot
// meeting a condition, from the stores' subscriptions, so that a wait ends
// at the swap that meets it rather than at the next poll.
type fleet struct {
	sources []*discovery.XDS
	stores  []*state.Store

	mu      sync.Mutex
	want    func(*state.Snapshot) bool // nil: nothing awaited
	met     []bool
	pending int
	done    chan struct{}
	// first and last are when the first and the last store met want.
	first, last time.Time
}

// newFleet builds n agents for the xDS server at addr; they connect on
// start.
func newFleet(addr string, n int) (*fleet, error) {
	f := &fleet{met: make([]bool, n)}
	for i := range n {
		cfg := discovery.DefaultXDSConfig()
		cfg.Client.Address = "passthrough:///" + addr
		cfg.Client.NodeID = fmt.Sprintf("scale-agent-%d", i)
		// Loopback inside one process: TLS would measure handshakes, not
		// discovery.
		cfg.Client.Dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		st := state.NewStore()
		src, err := discovery.NewXDS(cfg, st, nil, nil)
		if err != nil {
			f.stop()
			return nil, fmt.Errorf("agent %d: %w", i, err)
		}
		st.Subscribe(func(_, next *state.Snapshot) { f.swapped(i, next) })
		f.sources = append(f.sources, src)
		f.stores = append(f.stores, st)
	}
	return f, nil
}

// start connects every agent.
func (f *fleet) start(ctx context.Context) error {
	for i, src := range f.sources {
		if err := src.Start(ctx); err != nil {
			return fmt.Errorf("starting agent %d: %w", i, err)
		}
	}
	return nil
}

// stop disconnects every agent and waits for them.
func (f *fleet) stop() {
	for _, src := range f.sources {
		src.Stop()
	}
}

// expect arms a wait for every store to hold a snapshot meeting want, and
// returns how many already do. Call it before causing the change.
func (f *fleet) expect(want func(*state.Snapshot) bool) (already int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.want = want
	f.done = make(chan struct{})
	f.pending = len(f.stores)
	for i, st := range f.stores {
		f.met[i] = want(st.Load())
		if f.met[i] {
			f.pending--
			already++
		}
	}
	if already > 0 {
		f.first = time.Now()
	}
	if f.pending == 0 {
		f.last = f.first
		close(f.done)
		f.want = nil
	}
	return already
}

// swapped is every store's subscriber. It runs in the agent's builder
// goroutine, right after the swap.
func (f *fleet) swapped(i int, next *state.Snapshot) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.want == nil || f.met[i] || !f.want(next) {
		return
	}
	now := time.Now()
	if f.pending == len(f.stores) {
		f.first = now
	}
	f.met[i] = true
	f.pending--
	if f.pending == 0 {
		f.last = now
		close(f.done)
		f.want = nil
	}
}

// wait blocks until every store has met the condition expect armed, and
// returns when the first and the last one did.
func (f *fleet) wait(timeout time.Duration) (first, last time.Time, err error) {
	f.mu.Lock()
	done := f.done
	f.mu.Unlock()
	if done == nil {
		return time.Time{}, time.Time{}, errors.New("nothing expected")
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.first, f.last, nil
	case <-t.C:
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var missing []string
	for i, met := range f.met {
		if !met {
			s := f.stores[i].Load()
			missing = append(missing, fmt.Sprintf("agent %d (snapshot %q: %d workloads, %d services, %d policies)",
				i, s.Version, len(s.Workloads()), len(s.Services()), len(s.Policies())))
		}
	}
	f.want = nil
	return time.Time{}, time.Time{}, fmt.Errorf("timed out after %v waiting for %s", timeout, strings.Join(missing, ", "))
}

// hasAll is the condition of a complete initial sync: as many workloads,
// services and policies as the controller built.
func hasAll(s summary) func(*state.Snapshot) bool {
	return func(snap *state.Snapshot) bool {
		return len(snap.Workloads()) == s.workloads && len(snap.Services()) == s.services && len(snap.Policies()) == s.authorizations
	}
}
