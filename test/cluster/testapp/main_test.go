package main

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/warren-mesh/warren/test/cluster"
)

// get fetches path from srv and decodes the answer into the cluster
// package's types, which is how tests read it.
func get[T any](t *testing.T, srv *httptest.Server, path string) (T, int) {
	t.Helper()
	resp, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v T
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("decoding %s: %v", path, err)
	}
	return v, resp.StatusCode
}

func TestApp(t *testing.T) {
	target := httptest.NewServer(handler(info{Pod: "b", PodIP: "10.244.2.5", Node: "n2"}))
	defer target.Close()
	app := httptest.NewServer(handler(info{Pod: "a", PodIP: "10.244.1.5", Node: "n1"}))
	defer app.Close()
	el, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer el.Close()
	go echo(el)
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.Addr().String()
	closed.Close()
	targetAddr := strings.TrimPrefix(target.URL, "http://")

	t.Run("who am I", func(t *testing.T) {
		got, code := get[cluster.AppInfo](t, app, "/")
		if code != http.StatusOK || got.Pod != "a" || got.PodIP != "10.244.1.5" || got.Node != "n1" || !strings.HasPrefix(got.Peer, "127.0.0.1:") {
			t.Errorf("GET / = %d %+v", code, got)
		}
	})
	t.Run("fetch another app", func(t *testing.T) {
		got, code := get[cluster.FetchResult](t, app, "/fetch?target="+url.QueryEscape(targetAddr))
		if code != http.StatusOK || got.Error != "" || got.Status != http.StatusOK || got.App == nil {
			t.Fatalf("fetch = %d %+v", code, got)
		}
		// The target saw the connection the app made, from the address
		// the app reports as its own side.
		if got.App.Pod != "b" || got.App.Peer != got.Local {
			t.Errorf("target saw %+v, app connected from %s", *got.App, got.Local)
		}
	})
	t.Run("fetch a closed port", func(t *testing.T) {
		got, code := get[cluster.FetchResult](t, app, "/fetch?target="+url.QueryEscape(closedAddr))
		if code != http.StatusBadGateway || !strings.Contains(got.Error, "refused") {
			t.Errorf("fetch = %d %+v, want 502 with connection refused", code, got)
		}
	})
	t.Run("fetch without target", func(t *testing.T) {
		if got, code := get[cluster.FetchResult](t, app, "/fetch"); code != http.StatusBadGateway || got.Error == "" {
			t.Errorf("fetch = %d %+v, want 502", code, got)
		}
	})
	t.Run("tcp echo", func(t *testing.T) {
		got, code := get[cluster.FetchResult](t, app, "/tcp?data=hello&target="+url.QueryEscape(el.Addr().String()))
		if code != http.StatusOK || got.Echo != "hello" || got.Local == "" {
			t.Errorf("tcp = %d %+v", code, got)
		}
	})
}
