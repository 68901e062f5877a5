package kube

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warren-mesh/warren/ca/server"
	kubetest "github.com/warren-mesh/warren/test/kube"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// TestKubeAPIServer runs Authenticate and Authorize against a real
// kube-apiserver with real pod-bound tokens.
func TestKubeAPIServer(t *testing.T) {
	c := kubetest.Require(t)
	ns := c.Namespace(t)
	cfg := DefaultConfig()
	cfg.NodeAgents = []string{ns + "/agent"}
	k, err := New(cfg, c.Client(), discard())
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	id := func(sa string) spiffeid.ID { return spiffeid.RequireFromSegments(td, "ns", ns, "sa", sa) }

	agentA := c.Pod(t, ns, "agent", "node-a")
	webA := c.Pod(t, ns, "web", "node-a")
	c.Pod(t, ns, "db", "node-b")

	authenticate := func(t *testing.T, token string) (*Caller, error) {
		t.Helper()
		return k.Authenticate(t.Context(), token, nil)
	}
	mustAuthenticate := func(t *testing.T, token string) *Caller {
		t.Helper()
		caller, err := authenticate(t, token)
		if err != nil {
			t.Fatalf("Authenticate: %v", err)
		}
		return caller
	}

	t.Run("workload token", func(t *testing.T) {
		got := mustAuthenticate(t, c.PodToken(t, webA, "istio-ca"))
		want := Caller{Kind: server.KindKubernetes, Name: ns + "/" + webA.Name, Identity: id("web"), Node: "node-a"}
		if *got != want {
			t.Errorf("caller %+v, want %+v", *got, want)
		}
	})
	t.Run("node agent token", func(t *testing.T) {
		got := mustAuthenticate(t, c.PodToken(t, agentA, "istio-ca"))
		want := Caller{Kind: server.KindKubernetes, Name: ns + "/" + agentA.Name, Identity: id("agent"), Node: "node-a", MayImpersonate: true}
		if *got != want {
			t.Errorf("caller %+v, want %+v", *got, want)
		}
	})
	t.Run("wrong audience", func(t *testing.T) {
		_, err := authenticate(t, c.PodToken(t, webA, "not-istio-ca"))
		checkErr(t, err, server.ErrUnauthenticated)
	})
	t.Run("garbage token", func(t *testing.T) {
		_, err := authenticate(t, "not.a.token")
		checkErr(t, err, server.ErrUnauthenticated)
	})
	t.Run("expired token", func(t *testing.T) {
		// TokenRequest will not issue anything shorter than 10 minutes, so
		// take a real token and re-sign it with its lifetime in the past.
		token := c.PodToken(t, webA, "istio-ca")
		resigned, err := c.ResignToken(token, func(map[string]any) {})
		if err != nil {
			t.Fatal(err)
		}
		mustAuthenticate(t, resigned) // the forgery itself is accepted ...
		expired, err := c.ResignToken(token, func(claims map[string]any) {
			now := time.Now()
			claims["iat"] = now.Add(-2 * time.Hour).Unix()
			claims["nbf"] = now.Add(-2 * time.Hour).Unix()
			claims["exp"] = now.Add(-time.Hour).Unix()
		})
		if err != nil {
			t.Fatal(err)
		}
		_, err = authenticate(t, expired) // ... so only the expiry is refused
		checkErr(t, err, server.ErrUnauthenticated)
		t.Logf("expired: %v", err)
	})
	t.Run("token of a deleted pod", func(t *testing.T) {
		p := c.Pod(t, ns, "web", "node-a")
		token := c.PodToken(t, p, "istio-ca")
		mustAuthenticate(t, token) // also fills the apiserver's token cache
		c.DeletePod(t, p)
		start := time.Now()
		_, err := authenticate(t, token)
		checkErr(t, err, server.ErrUnauthenticated)
		if !strings.Contains(err.Error(), "no longer exists") {
			t.Errorf("error %q, want the pod check to refuse it", err)
		}
		t.Logf("refused %v after deletion: %v", time.Since(start), err)
		// The apiserver alone still accepts it from its 10 s success cache;
		// logged, not asserted: that is the apiserver's business.
		r, err := c.Client().AuthenticationV1().TokenReviews().Create(t.Context(), &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: cfg.Audiences},
		}, metav1.CreateOptions{})
		if err == nil {
			t.Logf("bare TokenReview right after deletion: authenticated=%v error=%q", r.Status.Authenticated, r.Status.Error)
		}
	})

	agent := mustAuthenticate(t, c.PodToken(t, agentA, "istio-ca"))
	web := mustAuthenticate(t, c.PodToken(t, webA, "istio-ca"))
	for _, tt := range []struct {
		name    string
		caller  *Caller
		id      spiffeid.ID
		wantErr error
	}{
		{name: "agent for a pod on its node", caller: agent, id: id("web")},
		{name: "agent for a pod on another node", caller: agent, id: id("db"), wantErr: server.ErrPermissionDenied},
		{name: "agent for a service account without pods", caller: agent, id: id("nobody"), wantErr: server.ErrPermissionDenied},
		{name: "workload for itself", caller: web, id: id("web")},
		{name: "workload for another on its node", caller: web, id: id("agent"), wantErr: server.ErrPermissionDenied},
		{name: "workload for another elsewhere", caller: web, id: id("db"), wantErr: server.ErrPermissionDenied},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := k.Authorize(t.Context(), tt.caller, tt.id)
			checkErr(t, err, tt.wantErr)
			if err != nil && !errors.Is(err, server.ErrPermissionDenied) {
				t.Errorf("unexpected error kind: %v", err)
			}
		})
	}
}
