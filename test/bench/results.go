package bench

import (
	"fmt"
	"slices"
	"time"
)

// Paths compared in every run.
const (
	PathPlain   = "plain"   // plain TCP pod to pod, no mesh: the machine's limit
	PathStunnel = "stunnel" // stunnel4, TLS 1.3 with mutual TLS, between the two pods
	PathWarren  = "warren"  // captured by the agents, carried in HBONE
)

// Where a figure was measured.
const (
	CrossNode = "cross-node"  // client pod on node1, server pod on node2
	SameNode  = "same-node"   // both pods on node1
	Agent1    = "node1 agent" // the client side's agent
	Agent2    = "node2 agent" // the server side's agent
)

// Measure describes one kind of figure.
type Measure struct {
	Name   string `json:"name"`
	Title  string `json:"title"`
	Unit   string `json:"unit"`
	Higher bool   `json:"higher_is_better"`
}

// Measures in report order.
var measures = []Measure{
	{"tput1", "Throughput, 1 stream (iperf3)", "Gbit/s", true},
	{"tput8", "Throughput, 8 streams (iperf3)", "Gbit/s", true},
	{"rr_p50", "1-byte request/response p50", "µs", false},
	{"rr_p90", "1-byte request/response p90", "µs", false},
	{"rr_p99", "1-byte request/response p99", "µs", false},
	{"cps1", "New connections/s, 1 at a time", "conn/s", true},
	{"cps8", "New connections/s, 8 at a time", "conn/s", true},
	{"http_p50", "HTTP 1 KB at fixed rate, p50 (fortio)", "µs", false},
	{"http_p90", "HTTP 1 KB at fixed rate, p90", "µs", false},
	{"http_p99", "HTTP 1 KB at fixed rate, p99", "µs", false},
	{"http_cpu", "Proxy CPU per 1,000 req/s, busiest process", "vCPU", false},
	{"http_cpu_total", "Proxy CPU per 1,000 req/s, all proxy processes", "vCPU", false},
	{"http_rss", "Proxy peak RSS during HTTP, largest process", "MB", false},
	{"rss_idle", "Agent RSS, idle", "MB", false},
	{"rss_conns", "Agent RSS with idle connections held", "MB", false},
	{"conn_bytes", "Agent memory per idle connection", "bytes", false},
}

func measureByName(name string) (Measure, bool) {
	for _, m := range measures {
		if m.Name == name {
			return m, true
		}
	}
	return Measure{}, false
}

// Figure is one measure on one path and topology over all runs.
type Figure struct {
	Measure string    `json:"measure"`
	Path    string    `json:"path"`
	Where   string    `json:"where"`
	Unit    string    `json:"unit"`
	Runs    []float64 `json:"runs"`
	Median  float64   `json:"median"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
	Skipped string    `json:"skipped,omitempty"`
}

// Ratio is a Warren figure divided by the same figure of a baseline.
type Ratio struct {
	Measure string  `json:"measure"`
	Where   string  `json:"where"`
	Versus  string  `json:"versus"`
	Ratio   float64 `json:"ratio"`
}

// Target is one of the goals for Warren, evaluated on medians.
type Target struct {
	Goal  string  `json:"goal"`
	Where string  `json:"where"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	Met   bool    `json:"met"`
}

// Machine describes where the figures were taken.
type Machine struct {
	CPUModel  string `json:"cpu_model"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Note      string `json:"note,omitempty"`
}

// Settings records the run's parameters, so a reader can repeat it.
type Settings struct {
	Runs       int     `json:"runs"`
	Throughput string  `json:"throughput"`
	RoundTrips int     `json:"round_trips"`
	ConnRate   string  `json:"conn_rate"`
	HTTP       string  `json:"http"`
	HTTPQPS    int     `json:"http_qps"`
	HTTPConns  int     `json:"http_conns"`
	HTTPBody   int     `json:"http_body"`
	IdleConns  int     `json:"idle_conns"`
	PinCPU     int     `json:"pin_cpu"`
	Redirect   string  `json:"redirect"`
	Tools      []Tool  `json:"tools"`
	Took       float64 `json:"took_seconds"`
}

// Tool is an external program and the version it reported.
type Tool struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

// Results is everything one Run produced; it is written as results.json and
// the report and chart are rendered from it alone.
type Results struct {
	Started   time.Time `json:"started"`
	Smoke     bool      `json:"smoke"`
	Machine   Machine   `json:"machine"`
	Settings  Settings  `json:"settings"`
	Figures   []Figure  `json:"figures"`
	Ratios    []Ratio   `json:"ratios"`
	Targets   []Target  `json:"targets"`
	Micro     string    `json:"micro,omitempty"`      // benchstat summary (or raw output)
	MicroNote string    `json:"micro_note,omitempty"` // why micro-benchmarks are missing or raw
}

// sampler collects samples by (measure, path, where) across runs.
type sampler struct {
	order   []key
	samples map[key][]float64
	skipped map[key]string
}

type key struct{ measure, path, where string }

func newSampler() *sampler {
	return &sampler{samples: map[key][]float64{}, skipped: map[key]string{}}
}

func (s *sampler) add(measure, path, where string, v float64) {
	k := key{measure, path, where}
	if _, ok := s.samples[k]; !ok {
		s.order = append(s.order, k)
	}
	s.samples[k] = append(s.samples[k], v)
}

func (s *sampler) skip(measure, path, where, why string) {
	k := key{measure, path, where}
	if _, ok := s.samples[k]; !ok {
		s.order = append(s.order, k)
		s.samples[k] = nil
	}
	s.skipped[k] = why
}

// figures summarises every key: median, min and max of its runs.
func (s *sampler) figures() []Figure {
	var out []Figure
	for _, k := range s.order {
		m, _ := measureByName(k.measure)
		f := Figure{Measure: k.measure, Path: k.path, Where: k.where, Unit: m.Unit, Runs: s.samples[k]}
		if len(f.Runs) == 0 {
			f.Skipped = s.skipped[k]
			if f.Skipped == "" {
				f.Skipped = "no samples"
			}
		} else {
			f.Median, f.Min, f.Max = summarize(f.Runs)
		}
		out = append(out, f)
	}
	return out
}

// summarize returns the median (the mean of the middle two for an even
// count), min and max.
func summarize(v []float64) (median, lo, hi float64) {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		median = s[n/2]
	} else {
		median = (s[n/2-1] + s[n/2]) / 2
	}
	return median, s[0], s[n-1]
}

// find returns the figure, if it was measured.
func find(figs []Figure, measure, path, where string) (Figure, bool) {
	for _, f := range figs {
		if f.Measure == measure && f.Path == path && f.Where == where && f.Skipped == "" {
			return f, true
		}
	}
	return Figure{}, false
}

// ratios divides every Warren figure by the plain and stunnel figures of the
// same measure and place, where those exist and are not zero.
func ratios(figs []Figure) []Ratio {
	var out []Ratio
	for _, w := range figs {
		if w.Path != PathWarren || w.Skipped != "" {
			continue
		}
		for _, base := range []string{PathPlain, PathStunnel} {
			b, ok := find(figs, w.Measure, base, w.Where)
			if !ok || b.Median == 0 {
				continue
			}
			out = append(out, Ratio{Measure: w.Measure, Where: w.Where, Versus: base, Ratio: w.Median / b.Median})
		}
	}
	return out
}

// Targets from the issue: throughput at least half of plain TCP, p50 within
// 60 µs of plain, connection rate at least half of plain, and at most 0.05
// vCPU and 20 MB per agent per 1,000 HTTP requests/s.
const (
	minThroughputRatio = 0.5
	maxExtraP50        = 60.0 // µs
	minConnRateRatio   = 0.5
	maxAgentCPU        = 0.05 // vCPU per 1,000 req/s
	maxAgentMB         = 20.0 // MB at 1,000 req/s
)

func targets(figs []Figure) []Target {
	var out []Target
	for _, where := range []string{CrossNode, SameNode} {
		ratioOf := func(measure string) (float64, bool) {
			w, ok1 := find(figs, measure, PathWarren, where)
			p, ok2 := find(figs, measure, PathPlain, where)
			if !ok1 || !ok2 || p.Median == 0 {
				return 0, false
			}
			return w.Median / p.Median, true
		}
		if r, ok := ratioOf("tput1"); ok {
			out = append(out, Target{fmt.Sprintf("single-stream throughput ≥ %.1fx plain", minThroughputRatio), where, r, "x", r >= minThroughputRatio})
		}
		w, ok1 := find(figs, "rr_p50", PathWarren, where)
		p, ok2 := find(figs, "rr_p50", PathPlain, where)
		if ok1 && ok2 {
			d := w.Median - p.Median
			out = append(out, Target{fmt.Sprintf("request/response p50 ≤ plain + %.0f µs", maxExtraP50), where, d, "µs over plain", d <= maxExtraP50})
		}
		if r, ok := ratioOf("cps1"); ok {
			out = append(out, Target{fmt.Sprintf("connection rate ≥ %.1fx plain", minConnRateRatio), where, r, "x", r >= minConnRateRatio})
		}
		if f, ok := find(figs, "http_cpu", PathWarren, where); ok {
			out = append(out, Target{fmt.Sprintf("≤ %.2f vCPU per agent per 1,000 req/s", maxAgentCPU), where, f.Median, "vCPU", f.Median <= maxAgentCPU})
		}
		if f, ok := find(figs, "http_rss", PathWarren, where); ok {
			out = append(out, Target{fmt.Sprintf("≤ %.0f MB per agent at 1,000 req/s", maxAgentMB), where, f.Median, "MB", f.Median <= maxAgentMB})
		}
	}
	return out
}
