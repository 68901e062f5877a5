package kube

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// TestCluster checks what the CA tests rely on: the version stamp, pods
// bound to a node without a scheduler, pod-bound TokenRequest for the
// istio-ca audience, what TokenReview returns for it, and that SignToken
// produces tokens the apiserver accepts.
func TestCluster(t *testing.T) {
	c := Require(t)
	ctx := t.Context()
	client := c.Client()

	raw, err := client.Discovery().RESTClient().Get().AbsPath("/version").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var v version.Info
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if want := "v" + DefaultConfig().K8sVersion; v.GitVersion != want {
		t.Errorf("apiserver version %q, want %q", v.GitVersion, want)
	}

	ns := c.Namespace(t)
	p := c.Pod(t, ns, "web", "node-a")
	token := c.PodToken(t, p, "istio-ca")

	review := func(token string, aud ...string) authnv1.TokenReviewStatus {
		t.Helper()
		r, err := client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
			Spec: authnv1.TokenReviewSpec{Token: token, Audiences: aud},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return r.Status
	}
	st := review(token, "istio-ca")
	if !st.Authenticated {
		t.Fatalf("token review: %s", st.Error)
	}
	t.Logf("review: user %q groups %q audiences %q extra %v", st.User.Username, st.User.Groups, st.Audiences, st.User.Extra)
	for key, want := range map[string]string{
		"authentication.kubernetes.io/pod-name":  p.Name,
		"authentication.kubernetes.io/pod-uid":   string(p.UID),
		"authentication.kubernetes.io/node-name": "node-a",
	} {
		if got := st.User.Extra[key]; len(got) != 1 || got[0] != want {
			t.Errorf("extra %s = %q, want [%q]", key, got, want)
		}
	}
	if got := st.User.Extra["authentication.kubernetes.io/credential-id"]; len(got) != 1 {
		t.Errorf("extra credential-id = %q, want one value", got)
	}
	if st := review(token, "other"); st.Authenticated {
		t.Errorf("token for istio-ca accepted for audience other")
	}

	same, err := c.ResignToken(token, func(map[string]any) {})
	if err != nil {
		t.Fatal(err)
	}
	if st := review(same, "istio-ca"); !st.Authenticated {
		t.Errorf("re-signed token refused: %s", st.Error)
	}
	expired, err := c.ResignToken(token, func(claims map[string]any) {
		now := time.Now()
		claims["iat"] = now.Add(-2 * time.Hour).Unix()
		claims["nbf"] = now.Add(-2 * time.Hour).Unix()
		claims["exp"] = now.Add(-time.Hour).Unix()
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := review(expired, "istio-ca"); st.Authenticated {
		t.Errorf("expired token accepted")
	} else {
		t.Logf("expired token: %s", st.Error)
	}
}

func TestStartStop(t *testing.T) {
	if os.Getenv(skipEnv) == "1" {
		t.Skipf("%s=1: skipping test that needs a real kube-apiserver", skipEnv)
	}
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	bins, err := Build(ctx, DefaultConfig(), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c, err := Start(ctx, bins, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("started in %v", time.Since(start))
	if _, err := c.Client().CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
		t.Error(err)
	}
	start = time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(start))
	if _, err := os.Stat(c.dir); !os.IsNotExist(err) {
		t.Errorf("cluster dir %s still there (%v)", c.dir, err)
	}
	for _, p := range []*process{c.etcd, c.apiserver} {
		select {
		case <-p.done:
		default:
			t.Errorf("%s still running", p.cmd.Path)
		}
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// testLog logs through t.Log, shown with -v or on failure.
func testLog(t *testing.T) *slog.Logger { return slog.New(slog.NewTextHandler(tWriter{t}, nil)) }

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(b), "\n"))
	return len(b), nil
}
