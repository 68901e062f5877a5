package controller

import (
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Config)
		wantErr bool
	}{
		{name: "default", mod: func(*Config) {}},
		{name: "no debounce", mod: func(c *Config) { c.Debounce = 0 }},
		{name: "empty cluster", mod: func(c *Config) { c.ClusterID = "" }, wantErr: true},
		{name: "slash in cluster", mod: func(c *Config) { c.ClusterID = "a/b" }, wantErr: true},
		{name: "trust domain URI", mod: func(c *Config) { c.TrustDomain = "spiffe://cluster.local" }, wantErr: true},
		{name: "bad domain suffix", mod: func(c *Config) { c.DomainSuffix = "Cluster_Local" }, wantErr: true},
		{name: "bad root namespace", mod: func(c *Config) { c.RootNamespace = "" }, wantErr: true},
		{name: "no waypoint class", mod: func(c *Config) { c.WaypointClass = "" }, wantErr: true},
		{name: "negative debounce", mod: func(c *Config) { c.Debounce = -time.Second }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.mod(&c)
			if err := c.Validate(); (err != nil) != tt.wantErr {
				t.Errorf("Validate() = %v, want error %v", err, tt.wantErr)
			}
		})
	}
}
