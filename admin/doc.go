// Package admin serves the agent's local admin API on 127.0.0.1:15000
// (ztunnel-compatible /config_dump, /logging, /quitquitquit, pprof) and the
// readiness probe on :15021.
package admin
