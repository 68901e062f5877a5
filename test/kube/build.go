package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Binaries are the paths of a built etcd and kube-apiserver.
type Binaries struct {
	Etcd      string
	APIServer string
}

// Build returns the cached etcd and kube-apiserver for cfg, building whichever
// is missing first. Side effects, in order: creates the cache dir, takes an
// exclusive file lock on <cache>/.lock (so concurrent test processes build
// once and the others wait), and for a missing binary writes a throw-away
// main module under <cache>/src-<name>, runs go mod tidy and go build, and
// renames the result into <cache>/bin. Binaries that exist are never rebuilt
// or relinked. A failed build leaves no binary behind and may be retried.
//
// A cold build downloads ~210 MB of modules and takes ~4-5 min on two cores
// (up to ~10 min on a slow runner), longer than go test's default -timeout.
func Build(ctx context.Context, cfg Config, log *slog.Logger) (Binaries, error) {
	if err := cfg.Validate(); err != nil {
		return Binaries{}, fmt.Errorf("kube build config: %w", err)
	}
	dir, err := cfg.cacheDir()
	if err != nil {
		return Binaries{}, err
	}
	log = log.With("component", "kube-build", "dir", dir)
	bins := Binaries{
		Etcd:      filepath.Join(dir, "bin", "etcd-v"+cfg.EtcdVersion),
		APIServer: filepath.Join(dir, "bin", "kube-apiserver-v"+cfg.K8sVersion),
	}
	if exists(bins.Etcd) && exists(bins.APIServer) {
		return bins, nil
	}
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		return Binaries{}, fmt.Errorf("creating cache dir: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(dir, ".lock"), log)
	if err != nil {
		return Binaries{}, err
	}
	defer unlock()

	// Another process may have built them while we waited for the lock.
	if !exists(bins.Etcd) {
		if err := buildEtcd(ctx, dir, cfg.EtcdVersion, bins.Etcd, log); err != nil {
			return Binaries{}, err
		}
	}
	if !exists(bins.APIServer) {
		if err := buildAPIServer(ctx, dir, cfg.K8sVersion, bins.APIServer, log); err != nil {
			return Binaries{}, err
		}
	}
	return bins, nil
}

func exists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Size() > 0
}

// buildEtcd builds etcd as a dependency of a throw-away main module, because
// `go install go.etcd.io/etcd/server/v3@v` is refused: etcd's go.mod has
// replace directives.
func buildEtcd(ctx context.Context, cache, version, out string, log *slog.Logger) error {
	const pkg = "go.etcd.io/etcd/server/v3"
	src := filepath.Join(cache, "src-etcd")
	gomod := fmt.Sprintf("module warren/kube/build-etcd\n\ngo 1.26.0\n\nrequire %s v%s\n", pkg, version)
	if err := writeModule(src, gomod, pkg); err != nil {
		return err
	}
	start := time.Now()
	log.Info("building etcd from Go modules", "version", version)
	if err := goCmd(ctx, src, "mod", "tidy"); err != nil {
		return fmt.Errorf("building etcd v%s: %w", version, err)
	}
	if err := goBuild(ctx, src, "-s -w", pkg, out); err != nil {
		return fmt.Errorf("building etcd v%s: %w", version, err)
	}
	log.Info("built etcd", "path", out, "duration", time.Since(start).Round(time.Second))
	return nil
}

// buildAPIServer builds kube-apiserver as a dependency of a throw-away main
// module. k8s.io/kubernetes requires its staging modules (k8s.io/api,
// client-go, apiserver, ...) at v0.0.0 and replaces them with ./staging/...,
// which makes `go install` refuse it; the throw-away module replaces each of
// them with its published v0.<minor>.<patch> instead.
func buildAPIServer(ctx context.Context, cache, version, out string, log *slog.Logger) error {
	const pkg = "k8s.io/kubernetes/cmd/kube-apiserver"
	major, rest, err := splitVersion(version)
	if err != nil {
		return err
	}
	src := filepath.Join(cache, "src-kube-apiserver")
	// godebug default=go1.26 keeps the runtime defaults k8s.io/kubernetes was
	// released with rather than the ones of our throw-away go line.
	gomod := fmt.Sprintf("module warren/kube/build-apiserver\n\ngo 1.26.0\n\ngodebug default=go1.26\n\nrequire k8s.io/kubernetes v%s\n", version)
	if err := writeModule(src, gomod, pkg); err != nil {
		return err
	}
	start := time.Now()
	log.Info("building kube-apiserver from Go modules", "version", version)
	staging, err := stagingModules(ctx, src, version)
	if err != nil {
		return fmt.Errorf("building kube-apiserver v%s: %w", version, err)
	}
	args := []string{"mod", "edit"}
	for _, m := range staging {
		args = append(args, fmt.Sprintf("-replace=%s=%s@v0.%s", m, m, rest))
	}
	if err := goCmd(ctx, src, args...); err != nil {
		return fmt.Errorf("building kube-apiserver v%s: %w", version, err)
	}
	if err := goCmd(ctx, src, "mod", "tidy"); err != nil {
		return fmt.Errorf("building kube-apiserver v%s: %w", version, err)
	}
	// Stamp the version as the release build does; otherwise /version says
	// v0.0.0-master. buildDate stays unset (the epoch) so that the link is
	// reproducible.
	minor, _, _ := strings.Cut(rest, ".")
	const v = "k8s.io/component-base/version"
	ldflags := fmt.Sprintf("-s -w -X %[1]s.gitVersion=v%[2]s -X %[1]s.gitMajor=%[3]s -X %[1]s.gitMinor=%[4]s -X %[1]s.gitTreeState=clean",
		v, version, major, minor)
	if err := goBuild(ctx, src, ldflags, pkg, out); err != nil {
		return fmt.Errorf("building kube-apiserver v%s: %w", version, err)
	}
	log.Info("built kube-apiserver", "path", out, "duration", time.Since(start).Round(time.Second))
	return nil
}

// stagingModules lists the modules k8s.io/kubernetes@v<version> replaces
// with a ./staging/ directory.
func stagingModules(ctx context.Context, src, version string) ([]string, error) {
	cmd := goExec(ctx, src, "mod", "download", "-json", "k8s.io/kubernetes@v"+version)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	outb, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download k8s.io/kubernetes: %w: %s", err, tail(stderr.Bytes()))
	}
	var dl struct{ GoMod string }
	if err := json.Unmarshal(outb, &dl); err != nil || dl.GoMod == "" {
		return nil, fmt.Errorf("go mod download k8s.io/kubernetes: no go.mod in %q (%v)", outb, err)
	}
	data, err := os.ReadFile(dl.GoMod)
	if err != nil {
		return nil, fmt.Errorf("reading k8s.io/kubernetes go.mod: %w", err)
	}
	mods := parseStaging(data)
	if len(mods) == 0 {
		return nil, errors.New("k8s.io/kubernetes go.mod replaces no staging modules; the build recipe needs updating")
	}
	return mods, nil
}

// parseStaging returns the modules a go.mod replaces with a ./staging/
// directory, written either as "replace a => ./staging/src/a" or as
// "a => ./staging/src/a" inside a replace block.
func parseStaging(gomod []byte) []string {
	var mods []string
	for line := range strings.Lines(string(gomod)) {
		fields := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "replace "))
		if len(fields) == 3 && fields[1] == "=>" && strings.HasPrefix(fields[2], "./staging/") {
			mods = append(mods, fields[0])
		}
	}
	return mods
}

// writeModule (re)writes a throw-away main module whose only file imports
// pkgs, so that go mod tidy keeps their requirements.
func writeModule(dir, gomod string, pkgs ...string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating build module: %w", err)
	}
	_ = os.Remove(filepath.Join(dir, "go.sum"))
	tools := "//go:build tools\n\npackage tools\n\n"
	for _, pkg := range pkgs {
		tools += fmt.Sprintf("import _ %q\n", pkg)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(gomod), 0o644); err != nil {
		return fmt.Errorf("writing build module: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tools.go"), []byte(tools), 0o644); err != nil {
		return fmt.Errorf("writing build module: %w", err)
	}
	return nil
}

// goBuild builds pkg to a temporary file beside out and renames it, so that a
// half-written binary never looks cached.
func goBuild(ctx context.Context, src, ldflags, pkg, out string) error {
	tmp := out + ".tmp"
	defer os.Remove(tmp)
	if err := goCmd(ctx, src, "build", "-trimpath", "-ldflags="+ldflags, "-o", tmp, pkg); err != nil {
		return err
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("installing %s: %w", out, err)
	}
	return nil
}

func goCmd(ctx context.Context, dir string, args ...string) error {
	cmd := goExec(ctx, dir, args...)
	outb, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w: %s", strings.Join(args[:min(2, len(args))], " "), err, tail(outb))
	}
	return nil
}

// goExec runs the go command found in PATH (go test puts its own GOROOT/bin
// first) in the throw-away module dir, isolated from the caller's module:
// no workspace, no VCS stamping (the module dir is not a repository), and the
// local toolchain (no toolchain downloads).
func goExec(ctx context.Context, dir string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-buildvcs=false", "GOWORK=off", "GOTOOLCHAIN=local")
	return cmd
}

// tail keeps the end of a command's output, where go puts the error.
func tail(b []byte) string {
	const n = 2000
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}
