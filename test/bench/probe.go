package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Probe is the small TCP tool the harness runs inside pod namespaces, as a
// process of its own so that it can be pinned to a CPU:
//
//	probe server -addr :7000            echo server
//	probe rr -addr A -n N -warmup W     1-byte request/response latency on one connection
//	probe rate -addr A -c C -d D        connections per second: connect, 1-byte exchange, close; C at a time
//	probe hold -addr A -n N             open N connections, exchange 1 byte on each, then hold them idle
//
// rr and rate print one JSON object (RoundTripResult, RateResult) on out;
// hold prints "ready N" once every connection is up and then waits for ctx.
func Probe(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("probe: want a subcommand: server, rr, rate, hold")
	}
	fs := flag.NewFlagSet("probe "+args[0], flag.ContinueOnError)
	addr := fs.String("addr", "", "listen (server) or dial address")
	n := fs.Int("n", 1000, "round trips (rr) or connections (hold)")
	warmup := fs.Int("warmup", 100, "unmeasured round trips first (rr)")
	conc := fs.Int("c", 1, "connections at a time (rate)")
	dur := fs.Duration("d", time.Second, "duration (rate)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *addr == "" {
		return errors.New("probe: -addr is required")
	}
	switch args[0] {
	case "server":
		return probeServer(ctx, *addr)
	case "rr":
		r, err := roundTrips(ctx, *addr, *n, *warmup)
		if err != nil {
			return err
		}
		return json.NewEncoder(out).Encode(r)
	case "rate":
		r, err := connRate(ctx, *addr, *conc, *dur)
		if err != nil {
			return err
		}
		return json.NewEncoder(out).Encode(r)
	case "hold":
		return hold(ctx, *addr, *n, out)
	}
	return fmt.Errorf("probe: unknown subcommand %q", args[0])
}

func probeServer(ctx context.Context, addr string) error {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("probe server: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			// Out of descriptors or similar: a benchmark client reports
			// the failed connection; keep serving the others.
			var ne net.Error
			if errors.As(err, &ne) && !errors.Is(err, net.ErrClosed) {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("probe server: %w", err)
		}
		go func() {
			defer c.Close()
			// Small buffer: every client sends single bytes, and 10,000
			// held connections must not cost 10,000 large buffers.
			buf := make([]byte, 512)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// RoundTripResult is the latency distribution of one rr run, in
// microseconds.
type RoundTripResult struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_us"`
	P90 float64 `json:"p90_us"`
	P99 float64 `json:"p99_us"`
}

func roundTrips(ctx context.Context, addr string, n, warmup int) (RoundTripResult, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return RoundTripResult{}, fmt.Errorf("rr: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	b := []byte{'x'}
	lat := make([]float64, 0, n)
	for i := range warmup + n {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			return RoundTripResult{}, fmt.Errorf("rr: writing: %w", err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return RoundTripResult{}, fmt.Errorf("rr: reading: %w", err)
		}
		if i >= warmup {
			lat = append(lat, float64(time.Since(start).Nanoseconds())/1e3)
		}
	}
	slices.Sort(lat)
	return RoundTripResult{N: n, P50: percentile(lat, 50), P90: percentile(lat, 90), P99: percentile(lat, 99)}, nil
}

// percentile of sorted values, nearest rank.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p/100*float64(len(sorted))+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// RateResult is one connection-rate run.
type RateResult struct {
	Conns  int64   `json:"conns"`
	Errors int64   `json:"errors"`
	PerSec float64 `json:"per_sec"`
}

// maxRateErrors ends a rate run early: a path that fails this often is
// broken, and its rate would be meaningless.
const maxRateErrors = 100

func connRate(ctx context.Context, addr string, conc int, d time.Duration) (RateResult, error) {
	start := time.Now()
	deadline := start.Add(d)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var conns, errs atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	// The clock, not ctx.Err, decides whether a failure is the end of the
	// run: a dial's socket deadline can fire before ctx's own timer, and a
	// loop on ctx.Err would then count a burst of spurious timeouts.
	over := func() bool { return ctx.Err() != nil || !time.Now().Before(deadline) }
	for range conc {
		wg.Go(func() {
			b := []byte{'x'}
			for !over() {
				if err := exchangeOnce(ctx, addr, b); err != nil {
					if over() {
						return
					}
					once.Do(func() { firstErr = err })
					if errs.Add(1) >= maxRateErrors {
						cancel()
					}
					continue
				}
				conns.Add(1)
			}
		})
	}
	wg.Wait()
	el := time.Since(start)
	r := RateResult{Conns: conns.Load(), Errors: errs.Load(), PerSec: float64(conns.Load()) / el.Seconds()}
	if r.Errors >= maxRateErrors {
		return r, fmt.Errorf("rate: %d failed connections, first: %w", r.Errors, firstErr)
	}
	return r, nil
}

// exchangeOnce connects, sends one byte, reads it back and closes.
func exchangeOnce(ctx context.Context, addr string, b []byte) error {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(b); err != nil {
		return err
	}
	_, err = io.ReadFull(c, b)
	return err
}

// holdParallel is how many connections hold opens at a time: fast, without
// a burst that overflows the server's accept queue.
const holdParallel = 16

func hold(ctx context.Context, addr string, n int, out io.Writer) error {
	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, holdParallel)
	for range holdParallel {
		wg.Go(func() {
			b := []byte{'x'}
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := (&net.Dialer{Timeout: 10 * time.Second}).DialContext(ctx, "tcp", addr)
				if err != nil {
					errc <- fmt.Errorf("hold: connection %d: %w", i, err)
					return
				}
				conns[i] = c
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write(b); err == nil {
					_, err = io.ReadFull(c, b)
				}
				if err != nil {
					errc <- fmt.Errorf("hold: connection %d: %w", i, err)
					return
				}
				c.SetDeadline(time.Time{})
			}
		})
	}
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
	}
	fmt.Fprintf(out, "ready %d\n", n)
	<-ctx.Done()
	return nil
}
