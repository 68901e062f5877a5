package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		name             string
		in               []float64
		median, min, max float64
	}{
		{"one", []float64{5}, 5, 5, 5},
		{"odd", []float64{3, 1, 2}, 2, 1, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5, 1, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			med, lo, hi := summarize(tc.in)
			if diff := cmp.Diff([]float64{tc.median, tc.min, tc.max}, []float64{med, lo, hi}); diff != "" {
				t.Errorf("summarize(%v) (-want +got):\n%s", tc.in, diff)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(i + 1)
	}
	for _, tc := range []struct {
		p, want float64
	}{{50, 50}, {90, 90}, {99, 99}, {100, 100}, {0, 1}} {
		if got := percentile(v, tc.p); got != tc.want {
			t.Errorf("percentile(1..100, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
}

// sample builds results with the given medians (one run each).
func sample(vals map[key]float64) []Figure {
	s := newSampler()
	for _, m := range measures {
		for _, path := range []string{PathPlain, PathStunnel, PathWarren} {
			for _, where := range []string{CrossNode, SameNode} {
				if v, ok := vals[key{m.Name, path, where}]; ok {
					s.add(m.Name, path, where, v)
				}
			}
		}
	}
	return s.figures()
}

func TestRatiosAndTargets(t *testing.T) {
	figs := sample(map[key]float64{
		{"tput1", PathPlain, CrossNode}:     16,
		{"tput1", PathStunnel, CrossNode}:   5,
		{"tput1", PathWarren, CrossNode}:    10,
		{"rr_p50", PathPlain, CrossNode}:    25,
		{"rr_p50", PathWarren, CrossNode}:   100,
		{"cps1", PathPlain, CrossNode}:      6000,
		{"cps1", PathWarren, CrossNode}:     2000,
		{"http_cpu", PathWarren, CrossNode}: 0.04,
		{"http_rss", PathWarren, CrossNode}: 25,
	})
	wantRatios := []Ratio{
		{"tput1", CrossNode, PathPlain, 10.0 / 16},
		{"tput1", CrossNode, PathStunnel, 2},
		{"rr_p50", CrossNode, PathPlain, 4},
		{"cps1", CrossNode, PathPlain, 2000.0 / 6000},
	}
	if diff := cmp.Diff(wantRatios, ratios(figs)); diff != "" {
		t.Errorf("ratios (-want +got):\n%s", diff)
	}
	var met []string
	for _, tg := range targets(figs) {
		met = append(met, tg.Goal+" "+map[bool]string{true: "met", false: "missed"}[tg.Met])
	}
	want := []string{
		"single-stream throughput ≥ 0.5x plain met",
		"request/response p50 ≤ plain + 60 µs missed",
		"connection rate ≥ 0.5x plain missed",
		"≤ 0.05 vCPU per agent per 1,000 req/s met",
		"≤ 20 MB per agent at 1,000 req/s missed",
	}
	if diff := cmp.Diff(want, met); diff != "" {
		t.Errorf("targets (-want +got):\n%s", diff)
	}
}

func TestSkippedFigure(t *testing.T) {
	s := newSampler()
	s.skip("tput1", PathStunnel, CrossNode, "stunnel4 not installed")
	s.add("tput1", PathWarren, CrossNode, 3)
	figs := s.figures()
	if _, ok := find(figs, "tput1", PathStunnel, CrossNode); ok {
		t.Error("find returned a skipped figure")
	}
	if got := cell(figs, "tput1", PathStunnel, CrossNode); got != "—" {
		t.Errorf("cell of skipped figure = %q, want —", got)
	}
	if len(ratios(figs)) != 0 {
		t.Errorf("ratios against a skipped baseline: %v", ratios(figs))
	}
}

func TestReplaceSection(t *testing.T) {
	block := beginMarker + "\nNEW\n" + endMarker + "\n"
	for _, tc := range []struct {
		name, doc, want string
		wantErr         bool
	}{
		{"empty file", "", block, false},
		{"appended", "# Title\nintro", "# Title\nintro\n" + block, false},
		{"replaced", "# T\n" + beginMarker + "\nOLD\n" + endMarker + "\nafter\n", "# T\n" + block + "after\n", false},
		{"end marker only", "x\n" + endMarker + "\n", "", true},
		{"out of order", endMarker + "\n" + beginMarker + "\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := replaceSection([]byte(tc.doc), "NEW\n")
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, string(got)); !tc.wantErr && diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	// Rewriting twice changes nothing.
	once, _ := replaceSection([]byte("# T\n"), "NEW\n")
	twice, _ := replaceSection(once, "NEW\n")
	if !bytes.Equal(once, twice) {
		t.Errorf("second rewrite changed the file:\n%s", twice)
	}
}

func TestUncaptured(t *testing.T) {
	in := "- uid: a\n  protocol: HBONE\n  netns: /run/netns/x\n- uid: b\n  protocol: TCP\nservices:\n"
	want := "- uid: a\n  protocol: TCP\n- uid: b\n  protocol: TCP\nservices:\n"
	if diff := cmp.Diff(want, uncaptured(in)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestFmtNum(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 0.0412: "0.0412", 1.5: "1.50", 15.62: "15.6", 150.4: "150", 6012: "6,012", 1234567: "1,234,567", -2500: "-2,500"} {
		if got := fmtNum(in); got != want {
			t.Errorf("fmtNum(%v) = %q, want %q", in, got, want)
		}
	}
}

// TestProbe runs the probe's server and clients in-process over loopback.
func TestProbe(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	served := make(chan error, 1)
	go func() { served <- Probe(ctx, []string{"server", "-addr", addr}, io.Discard) }()
	waitDial(t, addr)

	t.Run("rr", func(t *testing.T) {
		var out bytes.Buffer
		if err := Probe(ctx, []string{"rr", "-addr", addr, "-n", "200", "-warmup", "10"}, &out); err != nil {
			t.Fatal(err)
		}
		var r RoundTripResult
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if r.N != 200 || r.P50 <= 0 || r.P50 > r.P90 || r.P90 > r.P99 {
			t.Errorf("implausible result %+v", r)
		}
	})
	t.Run("rate", func(t *testing.T) {
		var out bytes.Buffer
		if err := Probe(ctx, []string{"rate", "-addr", addr, "-c", "4", "-d", "200ms"}, &out); err != nil {
			t.Fatal(err)
		}
		var r RateResult
		if err := json.Unmarshal(out.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if r.Conns == 0 || r.PerSec <= 0 || r.Errors != 0 {
			t.Errorf("implausible result %+v", r)
		}
	})
	t.Run("hold", func(t *testing.T) {
		hctx, hcancel := context.WithCancel(ctx)
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() { done <- Probe(hctx, []string{"hold", "-addr", addr, "-n", "50"}, pw); pw.Close() }()
		line, err := bufio.NewReader(pr).ReadString('\n')
		if err != nil || line != "ready 50\n" {
			t.Fatalf("hold printed %q, %v; want \"ready 50\"", line, err)
		}
		hcancel()
		go io.Copy(io.Discard, pr)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
	t.Run("bad usage", func(t *testing.T) {
		for _, args := range [][]string{nil, {"rr"}, {"nope", "-addr", addr}} {
			if err := Probe(ctx, args, io.Discard); err == nil {
				t.Errorf("Probe(%q) succeeded", args)
			}
		}
	})
	cancel()
	if err := <-served; err != nil {
		t.Errorf("server: %v", err)
	}
}

func waitDial(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe server not up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestChartAndSection(t *testing.T) {
	res := &Results{Smoke: true, Figures: sample(map[key]float64{
		{"tput1", PathPlain, CrossNode}:   16,
		{"tput1", PathStunnel, CrossNode}: 5,
		{"tput1", PathWarren, CrossNode}:  10,
		{"rr_p50", PathPlain, SameNode}:   25,
		{"rr_p50", PathWarren, SameNode}:  100,
	})}
	res.Ratios = ratios(res.Figures)
	res.Targets = targets(res.Figures)
	b, err := Chart(res)
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("chart is not a PNG: %v", err)
	}
	if img.Bounds().Dx() != chartW || img.Bounds().Dy() < chartTop {
		t.Errorf("chart is %v", img.Bounds())
	}
	s := Section(res, "bench-results/ratios.png")
	for _, want := range []string{
		"Smoke run",
		"| Throughput, 1 stream (iperf3), Gbit/s (higher is better) | 16.0 | 5.00 | 10.0 | 0.62x | 2.00x |",
		"| request/response p50 ≤ plain + 60 µs | same-node | 75.0 µs over plain | no |",
		"![Warren's figures",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("section lacks %q:\n%s", want, s)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := SmokeConfig()
	ok.AgentBin, ok.ProbeCmd = "/bin/agent", []string{"/bin/probe"}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"ok", func(*Config) {}, ""},
		{"no agent", func(c *Config) { c.AgentBin = "" }, "agent binary not set"},
		{"no probe", func(c *Config) { c.ProbeCmd = nil }, "probe command not set"},
		{"no runs", func(c *Config) { c.Runs = 0 }, "runs 0: want at least 1"},
		{"bad cpu", func(c *Config) { c.PinCPU = -1 }, "pin CPU -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := c.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
	d := DefaultConfig()
	d.AgentBin, d.ProbeCmd = "/bin/agent", []string{"/bin/probe"}
	if err := d.Validate(); err != nil {
		t.Errorf("DefaultConfig: %v", err)
	}
}
