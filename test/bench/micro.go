package bench

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// runMicro runs the Go benchmarks of cfg.Micro in cfg.RepoDir and returns
// benchstat's summary, or the raw output and a note when benchstat is
// missing. Packages that do not exist yet, or have no benchmarks, are left
// out; a failure is reported in the note, not as an error, because the
// testbed figures stand on their own.
func runMicro(ctx context.Context, cfg Config, log *slog.Logger) (summary, note string) {
	var pkgs, absent []string
	for _, p := range cfg.Micro {
		if hasBenchmarks(filepath.Join(cfg.RepoDir, p)) {
			pkgs = append(pkgs, p)
		} else {
			absent = append(absent, p)
		}
	}
	if len(absent) > 0 {
		note = fmt.Sprintf("no benchmarks in %s. ", strings.Join(absent, ", "))
	}
	if len(pkgs) == 0 {
		return "", note + "no micro-benchmarks run."
	}
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", strconv.Itoa(cfg.MicroCount)}
	if cfg.MicroTime != "" {
		args = append(args, "-benchtime", cfg.MicroTime)
	}
	args = append(args, pkgs...)
	log.Info("micro-benchmarks", "packages", pkgs, "count", cfg.MicroCount)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = cfg.RepoDir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	raw, err := cmd.Output()
	if err != nil {
		return string(raw), note + fmt.Sprintf("go %s failed: %v: %s", strings.Join(args, " "), err, lastLines(stderr.Bytes()))
	}
	bs := cfg.Benchstat
	if bs == "" {
		bs = "benchstat"
	}
	tmp, err := os.CreateTemp("", "warren-micro-*.txt")
	if err != nil {
		return string(raw), note + "writing benchmark output: " + err.Error()
	}
	defer os.Remove(tmp.Name())
	tmp.Write(raw)
	tmp.Close()
	out, err := exec.CommandContext(ctx, bs, tmp.Name()).CombinedOutput()
	if err != nil {
		return string(raw), note + fmt.Sprintf("benchstat unavailable (%v); raw go test output follows.", err)
	}
	// benchstat names the input file in its header; the temporary name
	// means nothing to a reader.
	return strings.ReplaceAll(string(out), tmp.Name(), "micro"), strings.TrimSpace(note)
}

// hasBenchmarks reports whether dir has a test file declaring a benchmark.
func hasBenchmarks(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte("\nfunc Benchmark")) {
			return true
		}
	}
	return false
}
