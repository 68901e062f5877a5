// Command warren-bench measures Warren against plain TCP and stunnel on the
// network-namespace testbed (see package bench) and writes results.json, a
// chart of ratios and the results section of BENCHMARKS.md. Needs root.
//
//	warren-bench [-smoke] [-agent bin/warren-agent] [-out bench-results] [-md BENCHMARKS.md]
//	warren-bench probe ...   (the probe the harness runs inside pods)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/warren-mesh/warren/test/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var err error
	if len(os.Args) > 1 && os.Args[1] == "probe" {
		err = bench.Probe(ctx, os.Args[2:], os.Stdout)
	} else {
		err = run(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "warren-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	smoke := flag.Bool("smoke", false, "measure everything once with tiny durations (proves the harness works; figures mean nothing)")
	agent := flag.String("agent", "bin/warren-agent", "warren-agent binary")
	fortio := flag.String("fortio", "", "fortio binary (default: fortio in PATH)")
	benchstat := flag.String("benchstat", "", "benchstat binary (default: benchstat in PATH)")
	out := flag.String("out", "bench-results", "directory for results.json and ratios.png")
	md := flag.String("md", "BENCHMARKS.md", "markdown file whose generated section is rewritten (empty: none)")
	runs := flag.Int("runs", 0, "runs of every measure (default 3, smoke 1)")
	note := flag.String("note", "", "note on the machine's state for the report (for example: shared, busy)")
	noMicro := flag.Bool("no-micro", false, "skip the Go micro-benchmarks")
	allowMissing := flag.Bool("allow-missing-tools", false, "skip measures whose tool is not installed instead of failing")
	render := flag.String("render", "", "measure nothing: render the chart and markdown from this results.json")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if *render != "" {
		b, err := os.ReadFile(*render)
		if err != nil {
			return fmt.Errorf("reading results: %w", err)
		}
		var res bench.Results
		if err := json.Unmarshal(b, &res); err != nil {
			return fmt.Errorf("parsing %s: %w", *render, err)
		}
		return write(&res, *out, *md, false)
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root (it builds network namespaces and runs the agents)")
	}

	cfg := bench.DefaultConfig()
	if *smoke {
		cfg = bench.SmokeConfig()
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding own binary for the probe: %w", err)
	}
	cfg.ProbeCmd = []string{self, "probe"}
	if cfg.AgentBin, err = filepath.Abs(*agent); err != nil {
		return err
	}
	cfg.Fortio, cfg.Benchstat = *fortio, *benchstat
	cfg.AllowMissingTools = *allowMissing
	if *runs > 0 {
		cfg.Runs = *runs
	}
	if *noMicro {
		cfg.Micro = nil
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))

	res, err := bench.Run(ctx, cfg, log)
	if err != nil {
		return err
	}
	res.Smoke = *smoke
	res.Machine.Note = *note
	if err := write(res, *out, *md, true); err != nil {
		return err
	}
	log.Info("done", "out", *out, "markdown", *md, "took_s", res.Settings.Took)
	return nil
}

// write stores results.json (when withJSON) and ratios.png in out, prints
// the summary and rewrites md's generated section.
func write(res *bench.Results, out, md string, withJSON bool) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", out, err)
	}
	if withJSON {
		b, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return fmt.Errorf("encoding results: %w", err)
		}
		if err := os.WriteFile(filepath.Join(out, "results.json"), append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("writing results: %w", err)
		}
	}
	png, err := bench.Chart(res)
	if err != nil {
		return err
	}
	chartPath := filepath.Join(out, "ratios.png")
	if err := os.WriteFile(chartPath, png, 0o644); err != nil {
		return fmt.Errorf("writing chart: %w", err)
	}
	fmt.Print(bench.Summary(res))
	if md == "" {
		return nil
	}
	rel, err := filepath.Rel(filepath.Dir(md), chartPath)
	if err != nil {
		rel = chartPath
	}
	return bench.UpdateMarkdown(md, res, filepath.ToSlash(rel))
}
