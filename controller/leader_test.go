package controller

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// candidate is one replica in the election test.
type candidate struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	leading bool
	changes []bool
	// leadCtxDone is closed when onLead's context ends.
	leadEnded chan struct{}
}

func (c *candidate) isLeading() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leading
}

func (c *candidate) history() []bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]bool(nil), c.changes...)
}

func TestLeaderElection(t *testing.T) {
	cl := newClients(t)
	ns := cl.c.Namespace(t)
	start := func(id string) *candidate {
		ctx, cancel := context.WithCancel(context.Background())
		c := &candidate{cancel: cancel, done: make(chan struct{}), leadEnded: make(chan struct{})}
		go func() {
			defer close(c.done)
			RunLeaderElection(ctx, cl.c.Client(), ns, "warren-controller", id,
				func(leadCtx context.Context) {
					<-leadCtx.Done()
					close(c.leadEnded)
				},
				func(isLeader bool) {
					c.mu.Lock()
					defer c.mu.Unlock()
					c.leading = isLeader
					c.changes = append(c.changes, isLeader)
				}, testLog(t).With("candidate", id))
		}()
		t.Cleanup(func() { cancel(); <-c.done })
		return c
	}
	a, b := start("replica-a"), start("replica-b")

	leaders := func() []*candidate {
		var out []*candidate
		for _, c := range []*candidate{a, b} {
			if c.isLeading() {
				out = append(out, c)
			}
		}
		return out
	}
	eventually(t, 30*time.Second, "a leader", func() bool { return len(leaders()) > 0 })
	// Several retry periods: the loser keeps trying and must keep losing.
	for range 3 * int(retryPeriod/(100*time.Millisecond)) {
		if n := len(leaders()); n != 1 {
			t.Fatalf("%d leaders", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	first := leaders()[0]
	second := a
	if first == a {
		second = b
	}

	first.cancel()
	select {
	case <-first.done:
	case <-time.After(renewDeadline + 5*time.Second):
		t.Fatal("RunLeaderElection did not return after cancel")
	}
	select {
	case <-first.leadEnded:
	default:
		t.Error("onLead's context was not cancelled when leadership ended")
	}
	if got := first.history(); fmt.Sprint(got) != "[true false]" {
		t.Errorf("first leader's transitions %v, want [true false]", got)
	}
	// The Lease was released: the other replica takes over within a
	// retry period or so, not a lease duration.
	begin := time.Now()
	eventually(t, leaseDuration, "takeover", second.isLeading)
	t.Logf("takeover after %v", time.Since(begin).Round(time.Millisecond))
	if got := second.history(); fmt.Sprint(got) != "[true]" {
		t.Errorf("second leader's transitions %v, want [true]", got)
	}
}
