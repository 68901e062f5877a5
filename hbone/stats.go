package hbone

// PoolStats is a point-in-time count of a Pool's connections, for metrics.
type PoolStats struct {
	// Connections is the number of pooled HTTP/2 connections.
	Connections int
	// Streams is the number of CONNECT streams open on them.
	Streams int
}

// Stats counts the pooled connections and their open streams. It takes the
// pool's lock and each connection's lock briefly, so it suits a scrape, not a
// per-connection path.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	var st PoolStats
	for _, e := range p.entries {
		st.Connections += len(e.conns)
		for _, c := range e.conns {
			st.Streams += c.streamCount()
		}
	}
	return st
}
