package kube

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/warren-mesh/warren/ca/server"
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func pod(ns, name, uid, sa, node string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: node},
	}
}

// boundStatus is what the apiserver answers for a valid pod-bound token.
func boundStatus(ns, sa, podName, uid, node string) authnv1.TokenReviewStatus {
	extra := map[string]authnv1.ExtraValue{
		extraPodName: {podName},
		extraPodUID:  {uid},
	}
	if node != "" {
		extra[extraNodeName] = authnv1.ExtraValue{node}
	}
	return authnv1.TokenReviewStatus{
		Authenticated: true,
		Audiences:     []string{"istio-ca"},
		User:          authnv1.UserInfo{Username: "system:serviceaccount:" + ns + ":" + sa, Extra: extra},
	}
}

func TestAuthenticate(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	web := pod("shop", "web-1", "uid-web", "web", "node-a")
	agent := pod("istio-system", "ztunnel-x", "uid-zt", "ztunnel", "node-a")
	tests := []struct {
		name      string
		token     string
		status    authnv1.TokenReviewStatus
		reviewErr error
		want      *Caller
		wantErr   error // nil: success; errAny: an error that is not unauthenticated
	}{
		{
			name: "workload", token: "t", status: boundStatus("shop", "web", "web-1", "uid-web", "node-a"),
			want: &Caller{Kind: "kubernetes", Name: "shop/web-1", Identity: spiffeid.RequireFromPath(td, "/ns/shop/sa/web"), Node: "node-a"},
		},
		{
			name: "node agent", token: "t", status: boundStatus("istio-system", "ztunnel", "ztunnel-x", "uid-zt", "node-a"),
			want: &Caller{Kind: "kubernetes", Name: "istio-system/ztunnel-x", Identity: spiffeid.RequireFromPath(td, "/ns/istio-system/sa/ztunnel"), Node: "node-a", MayImpersonate: true},
		},
		{
			name: "node from pod when token has none", token: "t", status: boundStatus("shop", "web", "web-1", "uid-web", ""),
			want: &Caller{Kind: "kubernetes", Name: "shop/web-1", Identity: spiffeid.RequireFromPath(td, "/ns/shop/sa/web"), Node: "node-a"},
		},
		{name: "no token", token: "", wantErr: server.ErrUnauthenticated},
		{name: "api down", token: "t", reviewErr: errors.New("connection refused"), wantErr: errAny},
		{
			name: "rejected", token: "t", wantErr: server.ErrUnauthenticated,
			status: authnv1.TokenReviewStatus{Error: "token has expired"},
		},
		{
			name: "wrong audience", token: "t", wantErr: server.ErrUnauthenticated,
			status: func() authnv1.TokenReviewStatus {
				s := boundStatus("shop", "web", "web-1", "uid-web", "node-a")
				s.Audiences = []string{"other"}
				return s
			}(),
		},
		{
			name: "audience-agnostic authenticator", token: "t", wantErr: server.ErrUnauthenticated,
			status: func() authnv1.TokenReviewStatus {
				s := boundStatus("shop", "web", "web-1", "uid-web", "node-a")
				s.Audiences = nil
				return s
			}(),
		},
		{
			name: "not a service account", token: "t", wantErr: server.ErrUnauthenticated,
			status: func() authnv1.TokenReviewStatus {
				s := boundStatus("shop", "web", "web-1", "uid-web", "node-a")
				s.User.Username = "admin"
				return s
			}(),
		},
		{
			name: "not bound to a pod", token: "t", wantErr: server.ErrUnauthenticated,
			status: func() authnv1.TokenReviewStatus {
				s := boundStatus("shop", "web", "web-1", "uid-web", "node-a")
				s.User.Extra = nil
				return s
			}(),
		},
		{name: "pod deleted", token: "t", status: boundStatus("shop", "web", "web-2", "uid-web2", "node-a"), wantErr: server.ErrUnauthenticated},
		{name: "pod recreated", token: "t", status: boundStatus("shop", "web", "web-1", "uid-old", "node-a"), wantErr: server.ErrUnauthenticated},
		{name: "pod of another service account", token: "t", status: boundStatus("shop", "admin", "web-1", "uid-web", "node-a"), wantErr: server.ErrUnauthenticated},
		{name: "node mismatch", token: "t", status: boundStatus("shop", "web", "web-1", "uid-web", "node-b"), wantErr: server.ErrUnauthenticated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(web, agent)
			var gotSpec authnv1.TokenReviewSpec
			client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
				gotSpec = a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).Spec
				if tt.reviewErr != nil {
					return true, nil, tt.reviewErr
				}
				return true, &authnv1.TokenReview{Spec: gotSpec, Status: tt.status}, nil
			})
			k, err := New(DefaultConfig(), client, discard())
			if err != nil {
				t.Fatal(err)
			}
			got, err := k.Authenticate(t.Context(), tt.token, nil)
			checkErr(t, err, tt.wantErr)
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b spiffeid.ID) bool { return a == b })); diff != "" {
				t.Errorf("caller (-want +got):\n%s", diff)
			}
			if tt.token != "" {
				if diff := cmp.Diff(authnv1.TokenReviewSpec{Token: "t", Audiences: []string{"istio-ca"}}, gotSpec); diff != "" {
					t.Errorf("review spec (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// errAny stands for an error that is neither unauthenticated nor denied:
// the check itself failed.
var errAny = errors.New("any other error")

func checkErr(t *testing.T, err, want error) {
	t.Helper()
	switch {
	case want == nil && err != nil:
		t.Fatalf("error %v, want none", err)
	case want == errAny && (err == nil || errors.Is(err, server.ErrUnauthenticated) || errors.Is(err, server.ErrPermissionDenied)):
		t.Fatalf("error %v, want one that is neither unauthenticated nor denied", err)
	case want != nil && want != errAny && !errors.Is(err, want):
		t.Fatalf("error %v, want %v", err, want)
	}
}

func TestAuthorize(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	id := func(p string) spiffeid.ID { return spiffeid.RequireFromPath(td, p) }
	agentOn := func(node string) *Caller {
		return &Caller{Kind: "kubernetes", Name: "istio-system/zt", Identity: id("/ns/istio-system/sa/ztunnel"), Node: node, MayImpersonate: true}
	}
	workload := &Caller{Kind: "kubernetes", Name: "shop/web-1", Identity: id("/ns/shop/sa/web"), Node: "node-a"}
	done := pod("shop", "job-1", "uid-job", "batch", "node-a")
	done.Status.Phase = corev1.PodSucceeded
	objects := []runtime.Object{
		pod("shop", "web-1", "uid-web", "web", "node-a"),
		pod("shop", "db-1", "uid-db", "db", "node-b"),
		pod("shop", "legacy", "uid-legacy", "", "node-a"),
		done,
	}
	tests := []struct {
		name    string
		caller  *Caller
		id      spiffeid.ID
		listErr error
		wantErr error
	}{
		{name: "own identity", caller: workload, id: id("/ns/shop/sa/web")},
		{name: "workload asks for another", caller: workload, id: id("/ns/shop/sa/db"), wantErr: server.ErrPermissionDenied},
		{name: "agent, pod on its node", caller: agentOn("node-a"), id: id("/ns/shop/sa/web")},
		{name: "agent, pod without service account name", caller: agentOn("node-a"), id: id("/ns/shop/sa/default")},
		{name: "agent, pod on another node", caller: agentOn("node-a"), id: id("/ns/shop/sa/db"), wantErr: server.ErrPermissionDenied},
		{name: "agent, finished pod", caller: agentOn("node-a"), id: id("/ns/shop/sa/batch"), wantErr: server.ErrPermissionDenied},
		{name: "agent, other namespace", caller: agentOn("node-a"), id: id("/ns/other/sa/web"), wantErr: server.ErrPermissionDenied},
		{name: "agent, other trust domain", caller: agentOn("node-a"), id: spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/web"), wantErr: server.ErrPermissionDenied},
		{name: "agent, not a kubernetes identity", caller: agentOn("node-a"), id: id("/ns/shop/sa/web/extra"), wantErr: server.ErrPermissionDenied},
		{name: "agent without node", caller: agentOn(""), id: id("/ns/shop/sa/web"), wantErr: server.ErrPermissionDenied},
		{name: "no caller", caller: nil, id: id("/ns/shop/sa/web"), wantErr: server.ErrPermissionDenied},
		{name: "api down", caller: agentOn("node-a"), id: id("/ns/shop/sa/web"), listErr: errors.New("connection refused"), wantErr: errAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(objects...)
			if tt.listErr != nil {
				client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
					return true, nil, tt.listErr
				})
			}
			k, err := New(DefaultConfig(), client, discard())
			if err != nil {
				t.Fatal(err)
			}
			checkErr(t, k.Authorize(t.Context(), tt.caller, tt.id), tt.wantErr)
		})
	}
}

// TestAuthorizeCache: an allowed answer is reused for podCacheTTL, a denied
// one never is.
func TestAuthorizeCache(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	agent := &Caller{Kind: "kubernetes", Name: "istio-system/zt", Identity: spiffeid.RequireFromPath(td, "/ns/istio-system/sa/ztunnel"), Node: "node-a", MayImpersonate: true}
	web := spiffeid.RequireFromPath(td, "/ns/shop/sa/web")
	client := fake.NewClientset()
	lists := 0
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		lists++
		return false, nil, nil
	})
	k, err := New(DefaultConfig(), client, discard())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	k.now = func() time.Time { return now }
	ctx := context.Background()
	pods := client.CoreV1().Pods("shop")

	// Denied: not cached, so the pod created next is seen at once.
	checkErr(t, k.Authorize(ctx, agent, web), server.ErrPermissionDenied)
	if _, err := pods.Create(ctx, pod("shop", "web-1", "uid-web", "web", "node-a"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkErr(t, k.Authorize(ctx, agent, web), nil)
	// Allowed: answered from the cache within the TTL ...
	if err := pods.Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(podCacheTTL - time.Millisecond)
	checkErr(t, k.Authorize(ctx, agent, web), nil)
	if lists != 2 {
		t.Errorf("%d pod lists, want 2 (second allow from the cache)", lists)
	}
	// ... and listed afresh after it.
	now = now.Add(time.Millisecond)
	checkErr(t, k.Authorize(ctx, agent, web), server.ErrPermissionDenied)
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		ok     bool
	}{
		{name: "default", change: func(*Config) {}, ok: true},
		{name: "no audience", change: func(c *Config) { c.Audiences = nil }},
		{name: "empty audience", change: func(c *Config) { c.Audiences = []string{""} }},
		{name: "bad trust domain", change: func(c *Config) { c.TrustDomain = "spiffe://x" }},
		{name: "empty trust domain", change: func(c *Config) { c.TrustDomain = "" }},
		{name: "agent without namespace", change: func(c *Config) { c.NodeAgents = []string{"ztunnel"} }},
		{name: "agent with extra slash", change: func(c *Config) { c.NodeAgents = []string{"a/b/c"} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := DefaultConfig()
			tt.change(&c)
			if err := c.Validate(); (err == nil) != tt.ok {
				t.Errorf("Validate() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}
