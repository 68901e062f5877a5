package scale

import (
	"context"
	"flag"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warren-mesh/warren/controller"
)

// benchTimeout bounds one wait of the benchmarks: a change or a full sync
// that takes longer is a hang, not a figure.
const benchTimeout = time.Minute

// fleetSizes are the numbers of agents the benchmarks run with. The
// agents share this process's CPUs and heap: on a small machine, 50 of
// them (each rebuilding its snapshot on every change, and all collected by
// one garbage collector) measure the machine more than the control plane,
// and take minutes, so larger fleets are opt-in:
//
//	go test -run '^$' -bench . ./test/scale -args -scale.agents=10,50
var fleetSizes = flag.String("scale.agents", "10", "comma-separated fleet sizes of the scale benchmarks, e.g. 10,50")

// agentCounts parses -scale.agents.
func agentCounts(b *testing.B) []int {
	b.Helper()
	var out []int
	for f := range strings.SplitSeq(*fleetSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			b.Fatalf("-scale.agents %q: %q is not a positive number", *fleetSizes, f)
		}
		out = append(out, n)
	}
	return out
}

// shared holds the large cluster and its controller sides, one per
// debounce: building one takes seconds, and benchmark functions run again
// for every -count. TestMain stops them.
var shared struct {
	mu      sync.Mutex
	cluster *cluster
	planes  map[time.Duration]*plane
}

// sharedPlane returns the running controller side of the large cluster
// with the given debounce, starting it on first use.
func sharedPlane(b *testing.B, debounce time.Duration) *plane {
	b.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if p := shared.planes[debounce]; p != nil {
		return p
	}
	if shared.cluster == nil {
		c, err := generate(large)
		if err != nil {
			b.Fatal(err)
		}
		shared.cluster = c
	}
	p, err := startPlane(shared.cluster, debounce, false)
	if err != nil {
		b.Fatal(err)
	}
	if shared.planes == nil {
		shared.planes = map[time.Duration]*plane{}
	}
	shared.planes[debounce] = p
	return p
}

func closeShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	for _, p := range shared.planes {
		p.stop()
	}
	shared.planes = nil
}

// syncFleet connects n new agents to p and waits until each holds the
// full state. It returns the time from connecting to the last agent's
// full snapshot. The fleet is stopped when b ends.
func syncFleet(ctx context.Context, b *testing.B, p *plane, n int) (*fleet, time.Duration) {
	b.Helper()
	f, err := newFleet(p.addr, n)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(f.stop)
	took, err := connect(ctx, f, p)
	if err != nil {
		b.Fatal(err)
	}
	return f, took
}

// connect starts f and waits for the full state on every agent.
func connect(ctx context.Context, f *fleet, p *plane) (time.Duration, error) {
	if n := f.expect(hasAll(p.sink.firstBuild())); n > 0 {
		return 0, fmt.Errorf("%d agents hold the full state before connecting", n)
	}
	start := time.Now()
	if err := f.start(ctx); err != nil {
		return 0, err
	}
	_, last, err := f.wait(benchTimeout)
	if err != nil {
		return 0, fmt.Errorf("initial sync of %d agents: %w", len(f.stores), err)
	}
	return last.Sub(start), nil
}

const mib = 1 << 20

// BenchmarkFullSync connects a fleet of new agents to the controller of
// the large cluster and waits until every one holds all 10,000 workloads,
// 2,000 services and 300 policies: one op is one fleet's initial sync
// ("full-sync-ms" is the same in milliseconds). It reports the live heap
// of the controller side holding the state ("controller-MB", without the
// fake apiserver), of each agent ("agent-MB": its xDS client and
// converted state and snapshot, plus the server's bookkeeping of what the
// agent's stream holds), and the bytes of one full push ("push-MB", the
// encoded resources). Fleets have 10 agents unless -scale.agents says
// otherwise.
func BenchmarkFullSync(b *testing.B) {
	for _, agents := range agentCounts(b) {
		b.Run(fmt.Sprintf("agents=%d", agents), func(b *testing.B) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			p := sharedPlane(b, controller.DefaultConfig().Debounce)
			var took time.Duration
			var perAgent uint64
			measured := false
			for b.Loop() {
				b.StopTimer()
				var before uint64
				if !measured {
					before = liveHeap()
				}
				f, err := newFleet(p.addr, agents)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				d, err := connect(ctx, f, p)
				b.StopTimer()
				if err != nil {
					f.stop()
					b.Fatal(err)
				}
				took += d
				if !measured {
					if after := liveHeap(); after > before {
						perAgent = (after - before) / uint64(agents)
					}
					measured = true
				}
				f.stop()
				b.StartTimer()
			}
			first := p.sink.firstBuild()
			b.ReportMetric(ms(took)/float64(b.N), "full-sync-ms")
			b.ReportMetric(float64(p.heldBytes)/mib, "controller-MB")
			b.ReportMetric(float64(perAgent)/mib, "agent-MB")
			b.ReportMetric(float64(first.pushBytes)/mib, "push-MB")
		})
	}
}

// BenchmarkPodChangeToAgents changes one pod per op (its canary label,
// which adds or removes a policy on its workload) through the fake
// apiserver and waits until every agent's store holds a snapshot with the
// change. ns/op is that delay, from the write to the last agent's swap; it
// reports its median and 99th percentile ("p50-ms", "p99-ms"), the median
// delay to the first agent ("first-p50-ms": the agents rebuild their
// snapshots on the same two cores, so the spread up to p50-ms is this
// process's, not a cluster's, where each agent has its node), the median
// part spent until the xDS cache had the change ("ctrl-p50-ms": the
// controller's debounce, its build, and the cache's Replace), the median
// of that Replace alone ("replace-p50-ms": comparing every resource, and
// computing every stream's delta), and the fleet's initial sync
// ("full-sync-ms"). The
// controller's debounce is a floor of the delay, so it runs with the
// default (100ms) and with 10ms; the agents' own debounce
// (discovery.DefaultXDSConfig, 10ms) is in every figure. Fleets have 10
// agents unless -scale.agents says otherwise.
func BenchmarkPodChangeToAgents(b *testing.B) {
	for _, debounce := range []time.Duration{controller.DefaultConfig().Debounce, 10 * time.Millisecond} {
		b.Run(fmt.Sprintf("debounce=%v", debounce), func(b *testing.B) {
			for _, agents := range agentCounts(b) {
				b.Run(fmt.Sprintf("agents=%d", agents), func(b *testing.B) {
					benchPodChange(b, debounce, agents)
				})
			}
		})
	}
}

func benchPodChange(b *testing.B, debounce time.Duration, agents int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := sharedPlane(b, debounce)
	f, synced := syncFleet(ctx, b, p, agents)
	var total, first, ctrl, replace []time.Duration
	for b.Loop() {
		b.StopTimer()
		ch, err := p.toggleCanary(ctx)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		d, err := propagate(ctx, p, f, ch, benchTimeout)
		if err != nil {
			b.Fatal(err)
		}
		total = append(total, d.agents)
		first = append(first, d.first)
		ctrl = append(ctrl, d.cache)
		replace = append(replace, d.replace)
	}
	b.ReportMetric(ms(percentile(total, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(total, 0.99)), "p99-ms")
	b.ReportMetric(ms(percentile(first, 0.50)), "first-p50-ms")
	b.ReportMetric(ms(percentile(ctrl, 0.50)), "ctrl-p50-ms")
	b.ReportMetric(ms(percentile(replace, 0.50)), "replace-p50-ms")
	b.ReportMetric(ms(synced), "full-sync-ms")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// percentile is the nearest-rank q-quantile of ds.
func percentile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(q * float64(len(s))))
	return s[max(rank, 1)-1]
}
