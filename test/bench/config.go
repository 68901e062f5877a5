package bench

import (
	"errors"
	"fmt"
	"runtime"
	"time"
)

// Config sets what a Run measures and for how long.
type Config struct {
	// AgentBin is the warren-agent binary.
	AgentBin string
	// ProbeCmd runs this package's probe (see Probe): a program and its
	// leading arguments, to which the probe's own arguments are appended.
	// warren-bench passes itself and "probe".
	ProbeCmd []string
	// Fortio is the fortio binary (v1.66.0); empty looks it up in PATH.
	Fortio string
	// Redirect is the agents' capture backend.
	Redirect string

	// Runs is how many times every measure is repeated; figures are the
	// median with min and max.
	Runs int
	// Throughput is how long each iperf3 test runs; IperfBytes, when set,
	// makes it send a fixed amount instead (smoke runs).
	Throughput time.Duration
	IperfBytes string
	// RoundTrips is how many 1-byte request/response exchanges make one
	// latency sample, after RoundTripWarmup unmeasured ones.
	RoundTrips      int
	RoundTripWarmup int
	// ConnRate is how long each connection-rate test runs.
	ConnRate time.Duration
	// HTTP is how long fortio runs at HTTPQPS requests per second with
	// HTTPConns connections and HTTPBody bytes each way.
	HTTP      time.Duration
	HTTPQPS   int
	HTTPConns int
	HTTPBody  int
	// IdleConns is how many idle connections are held open through Warren
	// to measure the agents' memory per connection.
	IdleConns int
	// PinCPU is the CPU that the latency and connection-rate tests pin every
	// process on the path to (clients, servers, agents, stunnel), so that a
	// request never waits for a wakeup on another CPU.
	PinCPU int
	// AllowMissingTools records measures whose tool (iperf3, stunnel,
	// fortio) is not installed as skipped instead of failing the run.
	AllowMissingTools bool

	// Micro lists the packages whose Go benchmarks are run (missing ones
	// are skipped) from RepoDir, MicroCount times each, summarised with
	// Benchstat (empty: looked up in PATH; missing: raw output only).
	Micro      []string
	MicroCount int
	MicroTime  string
	RepoDir    string
	Benchstat  string
}

// DefaultConfig is the full run of `make bench`: three runs of every
// measure, taking about fifteen minutes on two cores.
func DefaultConfig() Config {
	return Config{
		Redirect:   "nftables",
		Runs:       3,
		Throughput: 10 * time.Second,
		// 20,000 exchanges put about 200 samples above p99, enough for a
		// stable tail.
		RoundTrips:      20000,
		RoundTripWarmup: 1000,
		ConnRate:        5 * time.Second,
		HTTP:            10 * time.Second,
		HTTPQPS:         1000,
		// fortio's default connection count.
		HTTPConns: 4,
		HTTPBody:  1024,
		IdleConns: 10000,
		// The last CPU: on most machines interrupts and system daemons
		// favour CPU 0.
		PinCPU:     runtime.NumCPU() - 1,
		Micro:      []string{"./hbone", "./classify", "./authz", "./test/scale"},
		MicroCount: 6,
		RepoDir:    ".",
	}
}

// SmokeConfig measures everything once with tiny durations, to prove the
// harness works (seconds, not minutes); its figures mean nothing.
func SmokeConfig() Config {
	c := DefaultConfig()
	c.Runs = 1
	c.Throughput = 0
	c.IperfBytes = "8M"
	c.RoundTrips = 200
	c.RoundTripWarmup = 20
	c.ConnRate = 300 * time.Millisecond
	c.HTTP = time.Second
	c.HTTPQPS = 200
	c.IdleConns = 200
	c.MicroCount = 1
	c.MicroTime = "1x"
	return c
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	switch {
	case c.AgentBin == "":
		return errors.New("agent binary not set")
	case len(c.ProbeCmd) == 0:
		return errors.New("probe command not set")
	case c.Runs < 1:
		return fmt.Errorf("runs %d: want at least 1", c.Runs)
	case c.Throughput <= 0 && c.IperfBytes == "":
		return errors.New("throughput duration or byte count must be set")
	case c.RoundTrips < 1 || c.RoundTripWarmup < 0:
		return fmt.Errorf("round trips %d (warmup %d): want at least 1 (and no negative warmup)", c.RoundTrips, c.RoundTripWarmup)
	case c.ConnRate <= 0 || c.HTTP <= 0:
		return errors.New("connection-rate and HTTP durations must be positive")
	case c.HTTPQPS < 1 || c.HTTPConns < 1 || c.HTTPBody < 0:
		return fmt.Errorf("HTTP load %d/s over %d connections with %d-byte bodies: want positive rate and connections", c.HTTPQPS, c.HTTPConns, c.HTTPBody)
	case c.IdleConns < 1:
		return fmt.Errorf("idle connections %d: want at least 1", c.IdleConns)
	case c.PinCPU < 0 || c.PinCPU >= runtime.NumCPU():
		return fmt.Errorf("pin CPU %d: want 0..%d", c.PinCPU, runtime.NumCPU()-1)
	case len(c.Micro) > 0 && c.MicroCount < 1:
		return fmt.Errorf("micro-benchmark count %d: want at least 1", c.MicroCount)
	}
	return nil
}
