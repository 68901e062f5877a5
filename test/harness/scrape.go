package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/warren-mesh/warren/netns"
)

// Get fetches http://127.0.0.1:<port><path> from inside node's namespace,
// where the agent's admin, metrics and readiness servers listen.
func (m *Mesh) Get(ctx context.Context, node string, port int, path string) (int, []byte, error) {
	n := m.node(node)
	if n == nil {
		return 0, nil, fmt.Errorf("no node %q", node)
	}
	ns, err := netns.Open(n.NetNS)
	if err != nil {
		return 0, nil, err
	}
	defer ns.Close()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, &net.Dialer{}, network, addr)
		},
	}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", port, path), nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// Metric sums the samples of a counter or gauge family on node whose labels
// include every pair in match.
func (m *Mesh) Metric(ctx context.Context, node, name string, match map[string]string) (float64, error) {
	code, body, err := m.Get(ctx, node, 15020, "/metrics")
	if err != nil {
		return 0, err
	}
	if code != http.StatusOK {
		return 0, fmt.Errorf("metrics answered %d", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("parsing metrics: %w", err)
	}
	fam, ok := fams[name]
	if !ok {
		return 0, nil
	}
	var sum float64
	for _, mt := range fam.GetMetric() {
		if labelsMatch(mt, match) {
			switch {
			case mt.Counter != nil:
				sum += mt.Counter.GetValue()
			case mt.Gauge != nil:
				sum += mt.Gauge.GetValue()
			}
		}
	}
	return sum, nil
}

func labelsMatch(mt *dto.Metric, match map[string]string) bool {
	found := 0
	for _, lp := range mt.GetLabel() {
		if v, ok := match[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(match)
}
