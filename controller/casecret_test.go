package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

func TestCAPopulated(t *testing.T) {
	v := []byte("x")
	tests := []struct {
		name    string
		data    map[string][]byte
		want    bool
		wantErr error
	}{
		{name: "nil"},
		{name: "unrelated keys only", data: map[string][]byte{"README": v}},
		{name: "empty values", data: map[string][]byte{"root.pem": nil, "root-key.pem": {}}},
		{name: "own root", data: map[string][]byte{"root.pem": v, "root-key.pem": v}, want: true},
		{name: "plugged", data: map[string][]byte{"ca-cert.pem": v, "ca-key.pem": v, "root-cert.pem": v, "cert-chain.pem": v}, want: true},
		{name: "half a root", data: map[string][]byte{"root.pem": v}, wantErr: ErrCASecretIncomplete},
		{name: "plugged without chain", data: map[string][]byte{"ca-cert.pem": v, "ca-key.pem": v, "root-cert.pem": v}, wantErr: ErrCASecretIncomplete},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := caPopulated(tt.data)
			if got != tt.want || !errors.Is(err, tt.wantErr) {
				t.Errorf("caPopulated = %v, %v; want %v, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// rootData is a distinct fake CA per caller.
func rootData(who string) map[string][]byte {
	return map[string][]byte{"root.pem": []byte("cert of " + who), "root-key.pem": []byte("key of " + who)}
}

func createSecret(t *testing.T, cl clients, ns, name string, data map[string][]byte) {
	t.Helper()
	_, err := cl.c.Client().CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Data: data,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func getSecret(t *testing.T, cl clients, ns, name string) *corev1.Secret {
	t.Helper()
	s, err := cl.c.Client().CoreV1().Secrets(ns).Get(t.Context(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestEnsureCASecretConcurrent: two leaders racing (say, across a
// takeover) fill the chart's empty Secret exactly once.
func TestEnsureCASecretConcurrent(t *testing.T) {
	cl := newClients(t)
	ns := cl.c.Namespace(t)
	createSecret(t, cl, ns, "cacerts", nil)
	w, err := cl.c.Client().CoreV1().Secrets(ns).Watch(t.Context(), metav1.ListOptions{
		FieldSelector: "metadata.name=cacerts", ResourceVersion: getSecret(t, cl, ns, "cacerts").ResourceVersion,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	// Both generators wait for each other (up to a second) so that both
	// callers have read the empty Secret before either writes.
	var (
		generated atomic.Int32
		barrier   sync.WaitGroup
	)
	barrier.Add(2)
	gen := func(who string) func() (map[string][]byte, error) {
		return func() (map[string][]byte, error) {
			generated.Add(1)
			barrier.Done()
			waited := make(chan struct{})
			go func() { barrier.Wait(); close(waited) }()
			select {
			case <-waited:
			case <-time.After(time.Second):
			}
			return rootData(who), nil
		}
	}
	errs := make(chan error, 2)
	for _, who := range []string{"a", "b"} {
		go func() { errs <- EnsureCASecret(t.Context(), cl.c.Client(), ns, "cacerts", gen(who)) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("EnsureCASecret: %v", err)
		}
	}
	t.Logf("generate called %d times", generated.Load())

	got := getSecret(t, cl, ns, "cacerts").Data
	if !maps.EqualFunc(got, rootData("a"), bytesEqual) && !maps.EqualFunc(got, rootData("b"), bytesEqual) {
		t.Errorf("secret data %q is neither caller's", got)
	}
	modified := 0
	timeout := time.After(time.Second)
	for done := false; !done; {
		select {
		case ev := <-w.ResultChan():
			if ev.Type == watch.Modified {
				modified++
			}
		case <-timeout:
			done = true
		}
	}
	if modified != 1 {
		t.Errorf("secret modified %d times, want once", modified)
	}
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }

func TestEnsureCASecretCases(t *testing.T) {
	cl := newClients(t)
	ns := cl.c.Namespace(t)
	v := []byte("x")
	plugged := map[string][]byte{"ca-cert.pem": v, "ca-key.pem": v, "root-cert.pem": v, "cert-chain.pem": v}
	tests := []struct {
		name     string
		existing map[string][]byte // nil: no Secret
		create   bool
		want     map[string][]byte
		wantErr  error
	}{
		{name: "missing secret is created", want: rootData("new")},
		{name: "empty secret is filled, other keys kept", create: true, existing: map[string][]byte{"note": v},
			want: map[string][]byte{"note": v, "root.pem": []byte("cert of new"), "root-key.pem": []byte("key of new")}},
		{name: "own root is kept", create: true, existing: rootData("old"), want: rootData("old")},
		{name: "plugged CA is kept", create: true, existing: plugged, want: plugged},
		{name: "incomplete is an error and kept", create: true, existing: map[string][]byte{"root-key.pem": v},
			want: map[string][]byte{"root-key.pem": v}, wantErr: ErrCASecretIncomplete},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("ca-%d", i)
			if tt.create {
				createSecret(t, cl, ns, name, tt.existing)
			}
			err := EnsureCASecret(t.Context(), cl.c.Client(), ns, name, func() (map[string][]byte, error) { return rootData("new"), nil })
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("EnsureCASecret: %v, want %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, getSecret(t, cl, ns, name).Data); diff != "" {
				t.Errorf("data (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("generator error", func(t *testing.T) {
		createSecret(t, cl, ns, "ca-gen-err", nil)
		boom := errors.New("no entropy")
		err := EnsureCASecret(t.Context(), cl.c.Client(), ns, "ca-gen-err", func() (map[string][]byte, error) { return nil, boom })
		if !errors.Is(err, boom) {
			t.Errorf("err %v, want %v", err, boom)
		}
	})
}

func TestWaitCASecret(t *testing.T) {
	cl := newClients(t)
	ns := cl.c.Namespace(t)
	createSecret(t, cl, ns, "cacerts", nil)

	type result struct {
		data map[string][]byte
		err  error
	}
	res := make(chan result, 1)
	go func() {
		d, err := WaitCASecret(t.Context(), cl.c.Client(), ns, "cacerts")
		res <- result{d, err}
	}()
	select {
	case r := <-res:
		t.Fatalf("returned before the secret was filled: %v %v", r.data, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	if err := EnsureCASecret(t.Context(), cl.c.Client(), ns, "cacerts", func() (map[string][]byte, error) { return rootData("leader"), nil }); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatal(r.err)
		}
		if diff := cmp.Diff(rootData("leader"), r.data); diff != "" {
			t.Errorf("data (-want +got):\n%s", diff)
		}
	case <-time.After(syncTimeout):
		t.Fatal("WaitCASecret did not return after the secret was filled")
	}

	t.Run("already populated returns at once", func(t *testing.T) {
		d, err := WaitCASecret(t.Context(), cl.c.Client(), ns, "cacerts")
		if err != nil || len(d) != 2 {
			t.Errorf("WaitCASecret = %v, %v", d, err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		if _, err := WaitCASecret(ctx, cl.c.Client(), ns, "never"); err == nil {
			t.Error("no error for a secret that never comes")
		}
	})
	t.Run("incomplete is an error", func(t *testing.T) {
		createSecret(t, cl, ns, "half", map[string][]byte{"root.pem": []byte("x")})
		_, err := WaitCASecret(t.Context(), cl.c.Client(), ns, "half")
		if !errors.Is(err, ErrCASecretIncomplete) {
			t.Errorf("err %v, want ErrCASecretIncomplete", err)
		}
	})
}

func TestPublishRoot(t *testing.T) {
	cl := newClients(t)
	ns := cl.c.Namespace(t)
	cms := cl.c.Client().CoreV1().ConfigMaps(ns)
	_, err := cms.Create(t.Context(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "istio-ca-root-cert"},
		Data:       map[string]string{"other": "kept"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	get := func() *corev1.ConfigMap {
		cm, err := cms.Get(t.Context(), "istio-ca-root-cert", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return cm
	}
	publish := func(roots string) {
		t.Helper()
		if err := PublishRoot(t.Context(), cl.c.Client(), ns, "istio-ca-root-cert", []byte(roots)); err != nil {
			t.Fatal(err)
		}
	}
	publish("ROOT1")
	cm := get()
	if diff := cmp.Diff(map[string]string{"other": "kept", RootConfigMapKey: "ROOT1"}, cm.Data); diff != "" {
		t.Errorf("data (-want +got):\n%s", diff)
	}
	publish("ROOT1")
	if rv := get().ResourceVersion; rv != cm.ResourceVersion {
		t.Errorf("publishing the same roots wrote the ConfigMap (resourceVersion %s -> %s)", cm.ResourceVersion, rv)
	}
	publish("ROOT1\nROOT2")
	if got := get().Data[RootConfigMapKey]; got != "ROOT1\nROOT2" {
		t.Errorf("roots %q after rotation", got)
	}
	t.Run("missing ConfigMap is created", func(t *testing.T) {
		if err := PublishRoot(t.Context(), cl.c.Client(), ns, "fresh", []byte("R")); err != nil {
			t.Fatal(err)
		}
		cm, err := cms.Get(t.Context(), "fresh", metav1.GetOptions{})
		if err != nil || cm.Data[RootConfigMapKey] != "R" {
			t.Errorf("ConfigMap %v, %v", cm, err)
		}
	})
}
