package kube

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Config says which etcd and kube-apiserver to build and where to keep them.
type Config struct {
	// CacheDir holds the built binaries and the throw-away build modules
	// across runs. Empty means $XDG_CACHE_HOME/warren/kube-<K8sVersion>
	// (or ~/.cache/... when XDG_CACHE_HOME is unset).
	CacheDir string
	// K8sVersion is the k8s.io/kubernetes release, e.g. "1.37.1"; its
	// staging modules are published as v0.<minor>.<patch>.
	K8sVersion string
	// EtcdVersion is the go.etcd.io/etcd/server/v3 release, e.g. "3.6.16".
	EtcdVersion string
}

// DefaultConfig returns the versions the recipe in
// /work/shared/reference/KUBE-APISERVER.md was verified with; client-go in
// go.mod is v0.37.1 to match.
func DefaultConfig() Config {
	return Config{K8sVersion: "1.37.1", EtcdVersion: "3.6.16"}
}

// Validate reports the first problem with c.
func (c Config) Validate() error {
	if _, _, err := splitVersion(c.K8sVersion); err != nil {
		return fmt.Errorf("kubernetes version: %w", err)
	}
	if _, _, err := splitVersion(c.EtcdVersion); err != nil {
		return fmt.Errorf("etcd version: %w", err)
	}
	if c.CacheDir != "" && !filepath.IsAbs(c.CacheDir) {
		return fmt.Errorf("cache dir %q: must be absolute", c.CacheDir)
	}
	return nil
}

// cacheDir resolves the default cache location.
func (c Config) cacheDir() (string, error) {
	if c.CacheDir != "" {
		return c.CacheDir, nil
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("finding the cache dir: %w", err)
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "warren", "kube-"+c.K8sVersion), nil
}

// splitVersion splits "1.37.1" into major "1" and the rest "37.1"; a leading
// "v" is refused so that module versions are spelled one way.
func splitVersion(v string) (major, rest string, err error) {
	if v == "" {
		return "", "", errors.New("empty")
	}
	if strings.HasPrefix(v, "v") {
		return "", "", fmt.Errorf("%q: give it without the leading v", v)
	}
	parts := strings.Split(v, ".")
	if len(parts) != 3 {
		return "", "", fmt.Errorf("%q: want major.minor.patch", v)
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return "", "", fmt.Errorf("%q: want major.minor.patch", v)
		}
	}
	return parts[0], parts[1] + "." + parts[2], nil
}
