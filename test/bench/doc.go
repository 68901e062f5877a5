// Package bench measures Warren against plain TCP and stunnel on the
// network-namespace testbed and renders the results as JSON, a PNG chart of
// ratios and a BENCHMARKS.md section; `make bench` drives it through
// cmd/warren-bench.
package bench
