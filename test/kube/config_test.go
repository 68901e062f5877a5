package kube

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseStaging(t *testing.T) {
	gomod := `module k8s.io/kubernetes

require k8s.io/api v0.0.0

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	example.com/other => example.com/other v1.2.3
)

replace k8s.io/kms => ./staging/src/k8s.io/kms
`
	want := []string{"k8s.io/api", "k8s.io/client-go", "k8s.io/kms"}
	if diff := cmp.Diff(want, parseStaging([]byte(gomod))); diff != "" {
		t.Errorf("staging modules (-want +got):\n%s", diff)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{name: "default", cfg: DefaultConfig(), ok: true},
		{name: "leading v", cfg: Config{K8sVersion: "v1.37.1", EtcdVersion: "3.6.16"}},
		{name: "two parts", cfg: Config{K8sVersion: "1.37", EtcdVersion: "3.6.16"}},
		{name: "no etcd", cfg: Config{K8sVersion: "1.37.1"}},
		{name: "relative cache", cfg: Config{CacheDir: "cache", K8sVersion: "1.37.1", EtcdVersion: "3.6.16"}},
		{name: "absolute cache", cfg: Config{CacheDir: "/tmp/c", K8sVersion: "1.37.1", EtcdVersion: "3.6.16"}, ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.cfg.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestCacheDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/x")
	got, err := DefaultConfig().cacheDir()
	if err != nil || got != "/x/warren/kube-1.37.1" {
		t.Errorf("cacheDir() = %q, %v; want /x/warren/kube-1.37.1", got, err)
	}
}
