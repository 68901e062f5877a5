package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warren-mesh/warren/test/harness"
	"github.com/warren-mesh/warren/test/testbed"
)

// service is one of the servers every server pod runs.
type service int

const (
	svcIperf service = iota
	svcProbe
	svcHTTP
	numServices
)

// Ports. Listening ports stay below 20000, where the testbed's ephemeral
// range starts, so no client socket can hold one; backends use their
// tools' usual ports.
var backendPort = [numServices]int{svcIperf: 5201, svcProbe: 7000, svcHTTP: 8080}

const (
	// stunnel's client side listens on 127.0.0.1 in the client pod, one
	// block of ports per server pod; its server side listens on the server
	// pod's address and connects to the backend on 127.0.0.1.
	stunnelSameNodeBase  = 12000
	stunnelCrossNodeBase = 13000
	stunnelServerBase    = 14000
)

// openFilesMargin is the descriptors a process needs besides the idle
// connections: listeners, logs, pools, the runtime's own.
const openFilesMargin = 1024

// runner holds one Run's state.
type runner struct {
	cfg  Config
	log  *slog.Logger
	m    *harness.Mesh
	s    *sampler
	dir  string
	tool map[string]string // tool name -> path; missing tools are absent
	miss map[string]string // tool name -> why missing

	meshConfig, plainConfig string
	stunnel                 map[string]*testbed.Process // "client-"+where, "server-"+where
}

// Run builds the two-node mesh, measures plain TCP, stunnel and Warren
// across nodes and on one node, Runs times each, then runs the Go
// micro-benchmarks, and returns the results. In order it raises the
// descriptor limit, starts the mesh, starts iperf3, the probe echo server,
// fortio and stunnel in the pods, and for each run measures the baselines
// with capture switched off (every pod protocol TCP in the state file) and
// Warren with capture on. Everything it started is stopped before it
// returns. Needs root.
func Run(ctx context.Context, cfg Config, log *slog.Logger) (*Results, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("validating bench config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	res := &Results{Started: start.UTC(), Machine: machine(), Settings: settings(cfg)}
	// Each process on the idle-connection path (client, server, both
	// agents) holds one descriptor per connection, plus a margin for its
	// own sockets and files.
	need := uint64(cfg.IdleConns) + openFilesMargin
	if got, err := raiseOpenFiles(need); err != nil {
		return nil, err
	} else if got < need {
		return nil, fmt.Errorf("descriptor limit %d is below the %d the idle-connection test needs; lower the connection count or raise the hard limit", got, need)
	}
	r := &runner{cfg: cfg, log: log, s: newSampler(), tool: map[string]string{}, miss: map[string]string{}, stunnel: map[string]*testbed.Process{}}
	if err := r.findTools(); err != nil {
		return nil, err
	}
	res.Settings.Tools = r.versions(ctx)

	m, err := harness.Start(ctx, harness.Options{AgentBin: cfg.AgentBin, Redirect: cfg.Redirect, Log: log})
	if err != nil {
		return nil, fmt.Errorf("starting mesh: %w", err)
	}
	r.m = m
	defer m.Close()
	r.dir = filepath.Join(m.Dir, "bench")
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating scratch dir: %w", err)
	}
	r.meshConfig = m.Config()
	r.plainConfig = uncaptured(r.meshConfig)

	if err := r.startServers(ctx); err != nil {
		return nil, err
	}
	for run := 1; run <= cfg.Runs; run++ {
		log.Info("run", "n", run, "of", cfg.Runs)
		if err := r.setCapture(ctx, false); err != nil {
			return nil, err
		}
		for _, path := range []string{PathPlain, PathStunnel} {
			if err := r.measurePath(ctx, path); err != nil {
				return nil, err
			}
		}
		// Fresh agents for every run: Go keeps memory it once used (the
		// previous run's 10,000 idle connections), which would otherwise
		// show up in this run's RSS figures.
		for _, n := range m.TB.Nodes {
			if err := m.StopAgent(n.Name); err != nil {
				return nil, fmt.Errorf("restarting agent on %s: %w", n.Name, err)
			}
			if err := m.StartAgent(ctx, n.Name); err != nil {
				return nil, fmt.Errorf("restarting agent on %s: %w", n.Name, err)
			}
		}
		if err := r.setCapture(ctx, true); err != nil {
			return nil, err
		}
		if err := r.measurePath(ctx, PathWarren); err != nil {
			return nil, err
		}
		if err := r.idle(ctx); err != nil {
			return nil, err
		}
	}
	if err := m.Close(); err != nil {
		return nil, fmt.Errorf("tearing down mesh: %w", err)
	}

	res.Micro, res.MicroNote = runMicro(ctx, cfg, log)
	res.Figures = r.s.figures()
	res.Ratios = ratios(res.Figures)
	res.Targets = targets(res.Figures)
	res.Settings.Took = time.Since(start).Seconds()
	return res, nil
}

func settings(cfg Config) Settings {
	tput := cfg.Throughput.String() + " (first second omitted)"
	if cfg.IperfBytes != "" {
		tput = cfg.IperfBytes + "B per test"
	}
	return Settings{
		Runs: cfg.Runs, Throughput: tput, RoundTrips: cfg.RoundTrips, ConnRate: cfg.ConnRate.String(),
		HTTP: cfg.HTTP.String(), HTTPQPS: cfg.HTTPQPS, HTTPConns: cfg.HTTPConns, HTTPBody: cfg.HTTPBody,
		IdleConns: cfg.IdleConns, PinCPU: cfg.PinCPU, Redirect: cfg.Redirect,
	}
}

// uncaptured turns the mesh's state file into one where every pod is plain
// TCP and names no network namespace, so the agents release them and
// remove their capture rules while the veths and routes stay the same.
func uncaptured(meshConfig string) string {
	var b strings.Builder
	for _, line := range strings.SplitAfter(meshConfig, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "netns:") {
			continue
		}
		b.WriteString(strings.Replace(line, "protocol: HBONE", "protocol: TCP", 1))
	}
	return b.String()
}

func (r *runner) findTools() error {
	want := map[string]string{"iperf3": "iperf3", "stunnel": "stunnel4", "fortio": r.cfg.Fortio, "taskset": "taskset"}
	if want["fortio"] == "" {
		want["fortio"] = "fortio"
	}
	for name, bin := range want {
		p, err := exec.LookPath(bin)
		if err != nil && name == "stunnel" {
			p, err = exec.LookPath("stunnel")
		}
		if err != nil {
			if name == "taskset" || !r.cfg.AllowMissingTools {
				return fmt.Errorf("%s not installed (make bench installs it): %w", bin, err)
			}
			r.miss[name] = bin + " not installed"
			r.log.Warn("tool missing, its measures are skipped", "tool", bin)
			continue
		}
		r.tool[name] = p
	}
	return nil
}

// versions asks each tool for its version, for the report.
func (r *runner) versions(ctx context.Context) []Tool {
	args := map[string][]string{"iperf3": {"--version"}, "stunnel": {"-version"}, "fortio": {"version"}}
	var out []Tool
	for _, name := range []string{"iperf3", "stunnel", "fortio"} {
		p, ok := r.tool[name]
		if !ok {
			continue
		}
		b, _ := exec.CommandContext(ctx, p, args[name]...).CombinedOutput()
		v := ""
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" && (name != "stunnel" || strings.HasPrefix(line, "stunnel ")) {
				v = line
				break
			}
		}
		out = append(out, Tool{Name: name, Version: v})
	}
	return out
}

// serverPod is where the servers of a topology run.
func (r *runner) serverPod(where string) *testbed.Pod {
	if where == SameNode {
		return r.m.Pod(harness.Local)
	}
	return r.m.Pod(harness.Remote)
}

// addr is what the client pod dials to reach svc over path.
func (r *runner) addr(path, where string, svc service) (host string, port int) {
	if path == PathStunnel {
		base := stunnelCrossNodeBase
		if where == SameNode {
			base = stunnelSameNodeBase
		}
		return "127.0.0.1", base + int(svc)
	}
	return r.serverPod(where).IP.String(), backendPort[svc]
}

// start runs a long-lived program in nsPath with its output in a log file,
// pinned to the benchmark CPU when pin is set, and waits until it listens
// on port (0: no wait).
func (r *runner) start(ctx context.Context, nsPath, logName string, pin bool, port int, name string, args ...string) (*testbed.Process, error) {
	logf, err := os.Create(filepath.Join(r.dir, logName+".log"))
	if err != nil {
		return nil, fmt.Errorf("creating log: %w", err)
	}
	defer logf.Close()
	if pin {
		args = append([]string{"-c", strconv.Itoa(r.cfg.PinCPU), name}, args...)
		name = r.tool["taskset"]
	}
	p, err := r.m.TB.Start(ctx, nsPath, logf, logf, name, args...)
	if err != nil {
		return nil, err
	}
	if port == 0 {
		return p, nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for !listening(p.Pid(), port) {
		select {
		case <-p.Done():
			b, _ := os.ReadFile(logf.Name())
			return nil, fmt.Errorf("%s exited before listening on %d: %v: %s", logName, port, p.Wait(), lastLines(b))
		default:
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s not listening on %d after 10s", logName, port)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p, nil
}

// startServers starts, in both server pods, iperf3, the probe echo server
// (pinned) and fortio's echo server, then the stunnel pairs.
func (r *runner) startServers(ctx context.Context) error {
	for _, where := range []string{CrossNode, SameNode} {
		pod := r.serverPod(where)
		if p, ok := r.tool["iperf3"]; ok {
			if _, err := r.start(ctx, pod.NetNS, "iperf3-"+pod.Name, false, backendPort[svcIperf], p, "-s", "-p", strconv.Itoa(backendPort[svcIperf])); err != nil {
				return err
			}
		}
		probe := append(r.cfg.ProbeCmd[1:len(r.cfg.ProbeCmd):len(r.cfg.ProbeCmd)], "server", "-addr", ":"+strconv.Itoa(backendPort[svcProbe]))
		if _, err := r.start(ctx, pod.NetNS, "probe-"+pod.Name, true, backendPort[svcProbe], r.cfg.ProbeCmd[0], probe...); err != nil {
			return err
		}
		if p, ok := r.tool["fortio"]; ok {
			if _, err := r.start(ctx, pod.NetNS, "fortio-"+pod.Name, false, backendPort[svcHTTP], p, "server", "-quiet",
				"-http-port", strconv.Itoa(backendPort[svcHTTP]),
				"-grpc-port", "disabled", "-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled"); err != nil {
				return err
			}
		}
	}
	if _, ok := r.tool["stunnel"]; ok {
		return r.startStunnel(ctx)
	}
	return nil
}

// setCapture switches the agents between capturing the pods (the mesh's
// state file) and not (every pod plain TCP), and waits until a test
// connection to each server pod does (or does not) show in the access log.
func (r *runner) setCapture(ctx context.Context, on bool) error {
	content := r.plainConfig
	if on {
		content = r.meshConfig
	}
	if err := r.m.WriteConfig(content); err != nil {
		return err
	}
	deadline := time.Now().Add(20 * time.Second)
	var last error
	for {
		ok := true
		for _, where := range []string{CrossNode, SameNode} {
			// While the agents switch, one end may be captured and the
			// other not, and a test connection may fail: retry until
			// both ends agree.
			seen, err := r.captured(ctx, where)
			if err != nil {
				last = err
			}
			ok = ok && err == nil && seen == on
		}
		if ok {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("capture not switched %s 20s after changing the state file (last test connection: %v)", map[bool]string{true: "on", false: "off"}[on], last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// accessLogWait is how long after a connection closes its access-log
// record is looked for; the agent writes it at close.
const accessLogWait = 150 * time.Millisecond

// captured makes one connection from the client pod to where's probe
// server and reports whether an agent logged it.
func (r *runner) captured(ctx context.Context, where string) (bool, error) {
	sizes := map[string]int64{}
	for _, n := range r.m.TB.Nodes {
		if st, err := os.Stat(r.m.LogPath(n.Name)); err == nil {
			sizes[n.Name] = st.Size()
		}
	}
	host, port := r.addr(PathPlain, where, svcProbe)
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := r.m.Pod(harness.Client).Dial(dctx, host+":"+strconv.Itoa(port))
	if err != nil {
		return false, fmt.Errorf("test connection to %s: %w", where, err)
	}
	c.SetDeadline(time.Now().Add(2 * time.Second))
	b := []byte{'x'}
	_, err = c.Write(b)
	if err == nil {
		_, err = io.ReadFull(c, b)
	}
	c.Close()
	if err != nil {
		return false, fmt.Errorf("test exchange with %s: %w", where, err)
	}
	time.Sleep(accessLogWait)
	for _, n := range r.m.TB.Nodes {
		f, err := os.Open(r.m.LogPath(n.Name))
		if err != nil {
			continue
		}
		f.Seek(sizes[n.Name], io.SeekStart)
		tail, _ := io.ReadAll(f)
		f.Close()
		if bytes.Contains(tail, []byte(`"msg":"connection"`)) {
			return true, nil
		}
	}
	return false, nil
}

// measurePath takes one sample of every measure over path, across nodes
// and on one node.
func (r *runner) measurePath(ctx context.Context, path string) error {
	if why, ok := r.miss["stunnel"]; ok && path == PathStunnel {
		for _, where := range []string{CrossNode, SameNode} {
			for _, m := range measures {
				if !agentOnly[m.Name] {
					r.s.skip(m.Name, path, where, why)
				}
			}
		}
		return nil
	}
	for _, where := range []string{CrossNode, SameNode} {
		r.log.Info("measuring", "path", path, "where", where)
		steps := []func(context.Context, string, string) error{r.throughput, r.latency, r.connRate, r.http}
		for _, step := range steps {
			if err := step(ctx, path, where); err != nil {
				return fmt.Errorf("%s %s: %w", path, where, err)
			}
		}
	}
	return nil
}

// agentOnly are the measures taken on Warren's agents alone, not per path.
var agentOnly = map[string]bool{"rss_idle": true, "rss_conns": true, "conn_bytes": true}

// proxies are the process ids that carry path's traffic to where.
func (r *runner) proxies(path, where string) []int {
	switch path {
	case PathWarren:
		pids := []int{r.m.AgentPID("node1")}
		if where == CrossNode {
			pids = append(pids, r.m.AgentPID("node2"))
		}
		return pids
	case PathStunnel:
		return []int{r.stunnel["client-"+where].Pid(), r.stunnel["server-"+where].Pid()}
	}
	return nil
}

// pinProxies pins path's proxies to the benchmark CPU; the returned func
// lets them run anywhere again.
func (r *runner) pinProxies(path, where string) (func(), error) {
	pids := r.proxies(path, where)
	for _, pid := range pids {
		if err := pinThreads(pid, []int{r.cfg.PinCPU}); err != nil {
			return nil, err
		}
	}
	return func() {
		for _, pid := range pids {
			if err := pinThreads(pid, nil); err != nil {
				r.log.Warn("unpinning", "pid", pid, "error", err)
			}
		}
	}, nil
}

// runTool runs a program in the client pod to completion and returns its
// standard output.
func (r *runner) runTool(ctx context.Context, pin bool, name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	if pin {
		args = append([]string{"-c", strconv.Itoa(r.cfg.PinCPU), name}, args...)
		name = r.tool["taskset"]
	}
	p, err := r.m.TB.Start(ctx, r.m.Pod(harness.Client).NetNS, &stdout, &stderr, name, args...)
	if err != nil {
		return nil, err
	}
	if err := p.Wait(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s%s", filepath.Base(name), strings.Join(args, " "), err, lastLines(stderr.Bytes()), lastLines(stdout.Bytes()))
	}
	return stdout.Bytes(), nil
}

func (r *runner) probe(ctx context.Context, pin bool, args ...string) ([]byte, error) {
	full := append(r.cfg.ProbeCmd[1:len(r.cfg.ProbeCmd):len(r.cfg.ProbeCmd)], args...)
	return r.runTool(ctx, pin, r.cfg.ProbeCmd[0], full...)
}

// throughput runs iperf3 with 1 and 8 streams, neither pinned: bulk
// transfer is best spread over every CPU by the scheduler.
func (r *runner) throughput(ctx context.Context, path, where string) error {
	p, ok := r.tool["iperf3"]
	if !ok {
		r.s.skip("tput1", path, where, r.miss["iperf3"])
		r.s.skip("tput8", path, where, r.miss["iperf3"])
		return nil
	}
	host, port := r.addr(path, where, svcIperf)
	for _, streams := range []int{1, 8} {
		args := []string{"-c", host, "-p", strconv.Itoa(port), "-P", strconv.Itoa(streams), "-J"}
		if r.cfg.IperfBytes != "" {
			args = append(args, "-n", r.cfg.IperfBytes)
		} else {
			// -O 1 leaves slow start out of the figure.
			args = append(args, "-t", strconv.Itoa(int(r.cfg.Throughput.Seconds())), "-O", "1")
		}
		out, err := r.runTool(ctx, false, p, args...)
		var rep struct {
			Error string `json:"error"`
			End   struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
				SumSent struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_sent"`
			} `json:"end"`
		}
		if jerr := json.Unmarshal(out, &rep); jerr == nil && rep.Error != "" {
			return fmt.Errorf("iperf3: %s", rep.Error)
		}
		if err != nil {
			return err
		}
		bps := rep.End.SumReceived.BitsPerSecond
		if bps <= 0 && r.cfg.IperfBytes != "" {
			// A byte-count (smoke) transfer can end before the server's
			// first report, leaving the receiver's sum empty: the sender's
			// figure is the same bytes.
			bps = rep.End.SumSent.BitsPerSecond
		}
		if bps <= 0 {
			return fmt.Errorf("iperf3 reported no throughput: %s", lastLines(out))
		}
		r.s.add("tput"+strconv.Itoa(streams), path, where, bps/1e9)
	}
	return nil
}

// latency measures 1-byte round trips on one connection with everything
// on the path pinned to one CPU.
func (r *runner) latency(ctx context.Context, path, where string) error {
	unpin, err := r.pinProxies(path, where)
	if err != nil {
		return err
	}
	defer unpin()
	host, port := r.addr(path, where, svcProbe)
	out, err := r.probe(ctx, true, "rr", "-addr", host+":"+strconv.Itoa(port), "-n", strconv.Itoa(r.cfg.RoundTrips), "-warmup", strconv.Itoa(r.cfg.RoundTripWarmup))
	if err != nil {
		return err
	}
	var rr RoundTripResult
	if err := json.Unmarshal(out, &rr); err != nil {
		return fmt.Errorf("parsing probe rr output %q: %w", out, err)
	}
	r.s.add("rr_p50", path, where, rr.P50)
	r.s.add("rr_p90", path, where, rr.P90)
	r.s.add("rr_p99", path, where, rr.P99)
	return nil
}

// connRate measures connections per second, 1 and 8 at a time, pinned like
// latency.
func (r *runner) connRate(ctx context.Context, path, where string) error {
	unpin, err := r.pinProxies(path, where)
	if err != nil {
		return err
	}
	defer unpin()
	host, port := r.addr(path, where, svcProbe)
	for _, c := range []int{1, 8} {
		out, err := r.probe(ctx, true, "rate", "-addr", host+":"+strconv.Itoa(port), "-c", strconv.Itoa(c), "-d", r.cfg.ConnRate.String())
		if err != nil {
			return err
		}
		var rr RateResult
		if err := json.Unmarshal(out, &rr); err != nil {
			return fmt.Errorf("parsing probe rate output %q: %w", out, err)
		}
		r.s.add("cps"+strconv.Itoa(c), path, where, rr.PerSec)
	}
	return nil
}

// http runs fortio at a fixed rate with 1 KB request and response bodies
// and reads the proxies' CPU time and peak memory around it.
func (r *runner) http(ctx context.Context, path, where string) error {
	names := []string{"http_p50", "http_p90", "http_p99", "http_cpu", "http_cpu_total", "http_rss"}
	p, ok := r.tool["fortio"]
	if !ok {
		for _, n := range names {
			r.s.skip(n, path, where, r.miss["fortio"])
		}
		return nil
	}
	host, port := r.addr(path, where, svcHTTP)
	pids := r.proxies(path, where)
	cpu0 := make([]float64, len(pids))
	for i, pid := range pids {
		if err := resetPeak(pid); err != nil {
			return err
		}
		var err error
		if cpu0[i], err = cpuSeconds(pid); err != nil {
			return err
		}
	}
	start := time.Now()
	out, err := r.runTool(ctx, false, p, "load", "-quiet", "-json", "-",
		"-qps", strconv.Itoa(r.cfg.HTTPQPS), "-c", strconv.Itoa(r.cfg.HTTPConns), "-t", r.cfg.HTTP.String(),
		"-payload-size", strconv.Itoa(r.cfg.HTTPBody), "-p", "50,90,99",
		fmt.Sprintf("http://%s:%d/echo", host, port))
	elapsed := time.Since(start).Seconds()
	if err != nil {
		return err
	}
	var rep struct {
		ActualQPS         float64
		RetCodes          map[string]int64
		DurationHistogram struct {
			Percentiles []struct {
				Percentile float64
				Value      float64 // seconds
			}
		}
	}
	if err := json.Unmarshal(out, &rep); err != nil {
		return fmt.Errorf("parsing fortio output: %w: %s", err, lastLines(out))
	}
	for code, n := range rep.RetCodes {
		if code != "200" && n > 0 {
			return fmt.Errorf("fortio: %d responses with status %s", n, code)
		}
	}
	if rep.ActualQPS <= 0 {
		return errors.New("fortio reported no requests")
	}
	for _, pc := range rep.DurationHistogram.Percentiles {
		r.s.add(fmt.Sprintf("http_p%.0f", pc.Percentile), path, where, pc.Value*1e6)
	}
	if len(pids) == 0 {
		return nil
	}
	var busiest, total float64
	var peak int64
	for i, pid := range pids {
		c, err := cpuSeconds(pid)
		if err != nil {
			return err
		}
		mem, err := memoryOf(pid)
		if err != nil {
			return err
		}
		// vCPU per 1,000 requests/s: CPU seconds per second of load,
		// scaled by the rate fortio actually reached.
		v := (c - cpu0[i]) / elapsed / (rep.ActualQPS / 1000)
		busiest = max(busiest, v)
		total += v
		peak = max(peak, mem.peak)
	}
	r.s.add("http_cpu", path, where, busiest)
	r.s.add("http_cpu_total", path, where, total)
	r.s.add("http_rss", path, where, float64(peak)/1e6)
	return nil
}

// idle reads the agents' memory idle and while IdleConns connections from
// the client pod to the remote pod are held open through Warren.
func (r *runner) idle(ctx context.Context) error {
	agents := []struct{ where, node string }{{Agent1, "node1"}, {Agent2, "node2"}}
	before := make([]memory, len(agents))
	for i, a := range agents {
		var err error
		if before[i], err = memoryOf(r.m.AgentPID(a.node)); err != nil {
			return err
		}
	}
	ready := newLineWaiter()
	var stderr bytes.Buffer
	host, port := r.addr(PathWarren, CrossNode, svcProbe)
	args := append(r.cfg.ProbeCmd[1:len(r.cfg.ProbeCmd):len(r.cfg.ProbeCmd)], "hold", "-addr", host+":"+strconv.Itoa(port), "-n", strconv.Itoa(r.cfg.IdleConns))
	p, err := r.m.TB.Start(ctx, r.m.Pod(harness.Client).NetNS, ready, &stderr, r.cfg.ProbeCmd[0], args...)
	if err != nil {
		return err
	}
	defer p.Stop()
	// Generous: opening 10,000 tunnelled connections takes seconds.
	timeout := 30*time.Second + time.Duration(r.cfg.IdleConns)*time.Millisecond
	select {
	case <-ready.c:
	case <-p.Done():
		return fmt.Errorf("probe hold exited: %v: %s", p.Wait(), lastLines(stderr.Bytes()))
	case <-time.After(timeout):
		return fmt.Errorf("probe hold: connections not up after %v", timeout)
	}
	// Let the agents finish the work of the burst (access logs, buffers
	// returned) before reading.
	time.Sleep(time.Second)
	for i, a := range agents {
		after, err := memoryOf(r.m.AgentPID(a.node))
		if err != nil {
			return err
		}
		r.s.add("rss_idle", PathWarren, a.where, float64(before[i].rss)/1e6)
		r.s.add("rss_conns", PathWarren, a.where, float64(after.rss)/1e6)
		r.s.add("conn_bytes", PathWarren, a.where, float64(after.rss-before[i].rss)/float64(r.cfg.IdleConns))
	}
	return p.Stop()
}

// lineWaiter is a process's stdout that signals its first complete line.
type lineWaiter struct {
	c    chan struct{}
	once sync.Once
	mu   sync.Mutex
	buf  bytes.Buffer
}

func newLineWaiter() *lineWaiter { return &lineWaiter{c: make(chan struct{})} }

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if bytes.IndexByte(w.buf.Bytes(), '\n') >= 0 {
		w.once.Do(func() { close(w.c) })
	}
	return len(p), nil
}

// lastLines is the end of a tool's output, for error messages.
func lastLines(b []byte) string {
	const n = 1000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}
