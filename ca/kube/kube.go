package kube

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/warren-mesh/warren/ca/server"
)

// Keys of TokenReview status.user.extra that the apiserver fills from the
// claims of a pod-bound service-account token.
const (
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
	extraNodeName = "authentication.kubernetes.io/node-name"
)

// saUserPrefix starts the user name of every service account:
// system:serviceaccount:<namespace>:<name>.
const saUserPrefix = "system:serviceaccount:"

// podCacheTTL is how long a list of a node's pods in one namespace answers
// impersonation checks. An agent (re)starting asks for every pod on its
// node within a second or two, often many of one namespace; one list serves
// them all. Only "allowed" is answered from the cache: a service account not
// found in it is looked up afresh, so a pod created a moment ago is never
// refused because of the cache, and a deleted pod's identity stays
// obtainable for at most this long.
const podCacheTTL = 2 * time.Second

// podCacheMax bounds the cache; past it, expired entries are dropped.
const podCacheMax = 4096

// Kube is the CA's Authenticator and Authorizer for Kubernetes callers.
// Safe for concurrent use.
//
// Impersonation checks list pods with the field selector spec.nodeName in
// the requested namespace, which the apiserver answers from its watch cache,
// plus a short positive cache (podCacheTTL). A cluster-wide pod informer
// indexed by node would avoid the lists entirely, at the price of holding
// every pod of the cluster in the CA's memory and of list/watch RBAC on all
// pods; at one list per agent burst the direct list is the simpler trade.
type Kube struct {
	td        spiffeid.TrustDomain
	audiences []string
	agents    map[string]bool // "ns/sa"
	client    kubernetes.Interface
	log       *slog.Logger
	now       func() time.Time

	mu    sync.Mutex
	cache map[nodeNamespace]podsEntry
}

type nodeNamespace struct{ node, namespace string }

type podsEntry struct {
	serviceAccounts map[string]bool
	listed          time.Time
}

var (
	_ server.Authenticator = (*Kube)(nil)
	_ server.Authorizer    = (*Kube)(nil)
)

// New checks cfg and returns a Kube that uses client, which needs RBAC to
// create tokenreviews and to get and list pods.
func New(cfg Config, client kubernetes.Interface, log *slog.Logger) (*Kube, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kubernetes CA auth config: %w", err)
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("kubernetes CA auth config: %w", err)
	}
	k := &Kube{
		td:        td,
		audiences: slices.Clone(cfg.Audiences),
		agents:    map[string]bool{},
		client:    client,
		log:       log.With("component", "ca-kube"),
		now:       time.Now,
		cache:     map[nodeNamespace]podsEntry{},
	}
	for _, a := range cfg.NodeAgents {
		k.agents[a] = true
	}
	return k, nil
}

// Authenticate verifies a pod-bound service-account token: a TokenReview
// for the configured audiences, then a read of the bound pod, which must
// still exist with the UID in the token. The pod read is what refuses the
// token of a deleted pod at once; the apiserver alone keeps accepting it
// for up to 10 s (its token success cache). Tokens not bound to a pod
// (legacy secret tokens, unbound TokenRequests) are refused: they outlive
// the workload and carry no node. Client certificates are ignored.
//
// Errors wrap server.ErrUnauthenticated, except when the API could not be
// asked (then retrying may help).
func (k *Kube) Authenticate(ctx context.Context, token string, _ []*x509.Certificate) (*Caller, error) {
	if token == "" {
		return nil, fmt.Errorf("%w: no bearer token", server.ErrUnauthenticated)
	}
	review, err := k.client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: k.audiences},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("reviewing token: %w", err)
	}
	st := review.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return nil, fmt.Errorf("%w: token review: %s", server.ErrUnauthenticated, reason)
	}
	// The apiserver answers with the requested audiences the token is valid
	// for; an authenticator that ignores audiences answers none.
	if !slices.ContainsFunc(st.Audiences, func(a string) bool { return slices.Contains(k.audiences, a) }) {
		return nil, fmt.Errorf("%w: token audiences %q do not include %q", server.ErrUnauthenticated, st.Audiences, k.audiences)
	}
	ns, sa, ok := serviceAccount(st.User.Username)
	if !ok {
		return nil, fmt.Errorf("%w: user %q is not a service account", server.ErrUnauthenticated, st.User.Username)
	}
	podName, podUID := extra(st.User.Extra, extraPodName), extra(st.User.Extra, extraPodUID)
	if podName == "" || podUID == "" {
		return nil, fmt.Errorf("%w: token of %s/%s is not bound to a pod", server.ErrUnauthenticated, ns, sa)
	}
	pod, err := k.client.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: pod %s/%s of the token no longer exists", server.ErrUnauthenticated, ns, podName)
	}
	if err != nil {
		return nil, fmt.Errorf("reading pod %s/%s of the token: %w", ns, podName, err)
	}
	if string(pod.UID) != podUID {
		return nil, fmt.Errorf("%w: pod %s/%s of the token was replaced (uid %s, token for %s)", server.ErrUnauthenticated, ns, podName, pod.UID, podUID)
	}
	if podServiceAccount(pod) != sa {
		return nil, fmt.Errorf("%w: pod %s/%s runs as service account %q, token is for %q", server.ErrUnauthenticated, ns, podName, podServiceAccount(pod), sa)
	}
	// Tokens from 1.30 on name the node (ServiceAccountTokenPodNodeInfo);
	// older ones only the pod. A pod's node never changes once set.
	node := extra(st.User.Extra, extraNodeName)
	if node == "" {
		node = pod.Spec.NodeName
	} else if pod.Spec.NodeName != "" && pod.Spec.NodeName != node {
		return nil, fmt.Errorf("%w: token names node %q, pod %s/%s runs on %q", server.ErrUnauthenticated, node, ns, podName, pod.Spec.NodeName)
	}
	id, err := spiffeid.FromSegments(k.td, "ns", ns, "sa", sa)
	if err != nil {
		return nil, fmt.Errorf("%w: identity of %s/%s: %v", server.ErrUnauthenticated, ns, sa, err)
	}
	return &Caller{
		Kind:           server.KindKubernetes,
		Name:           ns + "/" + podName,
		Identity:       id,
		Node:           node,
		MayImpersonate: k.agents[ns+"/"+sa],
	}, nil
}

// Caller is the CA service's caller type, named here for brevity.
type Caller = server.Caller

// Authorize lets a caller obtain its own identity, and a node agent the
// identity spiffe://<td>/ns/<ns>/sa/<sa> of a pod that runs on the agent's
// node (not finished: Pending or Running). Errors wrap
// server.ErrPermissionDenied, except when the API could not be asked.
func (k *Kube) Authorize(ctx context.Context, caller *Caller, id spiffeid.ID) error {
	if caller == nil {
		return fmt.Errorf("%w: no caller", server.ErrPermissionDenied)
	}
	if !caller.Identity.IsZero() && id == caller.Identity {
		return nil
	}
	if !caller.MayImpersonate {
		return fmt.Errorf("%w: %s may only obtain its own identity %s, not %s", server.ErrPermissionDenied, caller.Name, caller.Identity, id)
	}
	if !id.MemberOf(k.td) {
		return fmt.Errorf("%w: %s is not in trust domain %s", server.ErrPermissionDenied, id, k.td)
	}
	ns, sa, ok := nsSA(id.Path())
	if !ok {
		return fmt.Errorf("%w: %s is not a Kubernetes service-account identity", server.ErrPermissionDenied, id)
	}
	if caller.Node == "" {
		return fmt.Errorf("%w: node agent %s runs on no known node", server.ErrPermissionDenied, caller.Name)
	}
	if k.cachedOnNode(caller.Node, ns, sa) {
		return nil
	}
	found, err := k.listOnNode(ctx, caller.Node, ns, sa)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("%w: no pod of service account %s/%s runs on node %s of %s", server.ErrPermissionDenied, ns, sa, caller.Node, caller.Name)
	}
	return nil
}

func (k *Kube) cachedOnNode(node, ns, sa string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	e, ok := k.cache[nodeNamespace{node, ns}]
	return ok && k.now().Sub(e.listed) < podCacheTTL && e.serviceAccounts[sa]
}

// listOnNode lists the pods of namespace ns on node, caches which service
// accounts they run as, and reports whether sa is one of them.
func (k *Kube) listOnNode(ctx context.Context, node, ns, sa string) (bool, error) {
	listed := k.now()
	pods, err := k.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return false, fmt.Errorf("listing pods of namespace %s on node %s: %w", ns, node, err)
	}
	sas := map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		// The selector already did this on a real apiserver; fakes ignore
		// field selectors.
		if p.Spec.NodeName != node || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		sas[podServiceAccount(p)] = true
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.cache) >= podCacheMax {
		now := k.now()
		for key, e := range k.cache {
			if now.Sub(e.listed) >= podCacheTTL {
				delete(k.cache, key)
			}
		}
	}
	if len(k.cache) < podCacheMax {
		k.cache[nodeNamespace{node, ns}] = podsEntry{serviceAccounts: sas, listed: listed}
	}
	return sas[sa], nil
}

// serviceAccount splits system:serviceaccount:<ns>:<sa>.
func serviceAccount(user string) (ns, sa string, ok bool) {
	rest, ok := strings.CutPrefix(user, saUserPrefix)
	if !ok {
		return "", "", false
	}
	ns, sa, ok = strings.Cut(rest, ":")
	if !ok || ns == "" || sa == "" || strings.Contains(sa, ":") {
		return "", "", false
	}
	return ns, sa, true
}

// nsSA splits the path /ns/<ns>/sa/<sa>.
func nsSA(path string) (ns, sa string, ok bool) {
	seg := strings.Split(path, "/")
	if len(seg) != 5 || seg[0] != "" || seg[1] != "ns" || seg[2] == "" || seg[3] != "sa" || seg[4] == "" {
		return "", "", false
	}
	return seg[2], seg[4], true
}

// podServiceAccount is the pod's service account; the ServiceAccount
// admission plugin sets "default" when the pod names none.
func podServiceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

// extra returns the single value of a TokenReview extra key, or "" when it
// is missing or ambiguous.
func extra(m map[string]authnv1.ExtraValue, key string) string {
	if v := m[key]; len(v) == 1 {
		return v[0]
	}
	return ""
}
