package harness

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
)

// Record is one access-log record of an agent, as written by flow.Record.
type Record struct {
	Node          string  `json:"-"`
	Seq           int     `json:"-"` // position among the node's records
	Level         string  `json:"level"`
	Msg           string  `json:"msg"`
	Component     string  `json:"component"`
	Direction     string  `json:"direction"`
	Path          string  `json:"path"`
	SrcAddr       string  `json:"src.addr"`
	DstAddr       string  `json:"dst.addr"`
	SrcWorkload   string  `json:"src.workload"`
	DstWorkload   string  `json:"dst.workload"`
	SrcIdentity   string  `json:"src.identity"`
	DstIdentity   string  `json:"dst.identity"`
	DstService    string  `json:"dst.service"`
	Target        string  `json:"target"`
	BytesSent     int64   `json:"bytes_sent"`
	BytesReceived int64   `json:"bytes_received"`
	DurationMS    float64 `json:"duration_ms"`
	Reason        string  `json:"reason"`
	Error         string  `json:"error"`
}

// Records reads every access-log record the agents have written so far,
// node by node in log order.
func (m *Mesh) Records() ([]Record, error) {
	var out []Record
	for _, n := range m.TB.Nodes {
		f, err := os.Open(m.LogPath(n.Name))
		if err != nil {
			return nil, fmt.Errorf("reading agent log: %w", err)
		}
		seq := 0
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 1<<20)
		for sc.Scan() {
			var r Record
			if json.Unmarshal(sc.Bytes(), &r) != nil || r.Msg != "connection" {
				continue
			}
			r.Node = n.Name
			r.Seq = seq
			seq++
			out = append(out, r)
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading agent log: %w", err)
		}
	}
	return out, nil
}

// Since returns the records of now that are not in before.
func Since(before, now []Record) []Record {
	seen := map[string]int{}
	for _, r := range before {
		seen[r.Node] = max(seen[r.Node], r.Seq+1)
	}
	var out []Record
	for _, r := range now {
		if r.Seq >= seen[r.Node] {
			out = append(out, r)
		}
	}
	return out
}
