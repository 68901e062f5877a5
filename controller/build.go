package controller

import (
	"cmp"
	"net/netip"
	"slices"

	"google.golang.org/protobuf/proto"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Inputs is everything Build reads: the cluster's objects as the informers
// hold them. Build never modifies them, so they may be the informers' own
// cached objects. As with informers, a changed object must be a new
// object: the controller's incremental builds take an unchanged pointer
// for an unchanged object.
type Inputs struct {
	Config                Config
	Namespaces            []*corev1.Namespace
	Pods                  []*corev1.Pod
	Services              []*corev1.Service
	EndpointSlices        []*discoveryv1.EndpointSlice
	AuthorizationPolicies []*securityv1.AuthorizationPolicy
	PeerAuthentications   []*securityv1.PeerAuthentication
	// Waypoints are the Gateways of class Config.WaypointClass. Build does
	// not bind workloads or services to them yet.
	Waypoints []Waypoint
}

// Waypoint is a Gateway API Gateway of the waypoint class, reduced to what
// binding needs.
type Waypoint struct {
	Name, Namespace string
	// Addresses are the Gateway's status addresses of type IPAddress.
	Addresses []netip.Addr
	// Hostnames are its status addresses of type Hostname.
	Hostnames []string
}

// Output is what Build makes of Inputs.
type Output struct {
	// Addresses are *workloadapi.Address resources by resource name: a
	// workload's uid or a service's "<namespace>/<hostname>".
	Addresses map[string]proto.Message
	// Authorizations are *security.Authorization resources by
	// "<namespace>/<name>".
	Authorizations map[string]proto.Message
	// Problems are the objects Build left out or changed, and why, sorted by
	// object. Each is worth telling the object's owner about.
	Problems []Problem
}

// ObjectRef names a Kubernetes object a Problem is about.
type ObjectRef struct {
	Kind, APIVersion, Namespace, Name string
	UID                               types.UID
}

// Problem is one reason to warn about an object: it was left out of the
// resources, or only part of it could be used.
type Problem struct {
	Object ObjectRef
	// Reason is a short CamelCase word, as in a Kubernetes Event.
	Reason  string
	Message string
}

// Problem reasons.
const (
	// ReasonInvalidPolicy: the policy cannot be converted and is left out.
	ReasonInvalidPolicy = "InvalidPolicy"
	// ReasonPolicyNotEnforced: the policy is valid but does nothing at L4
	// (AUDIT or CUSTOM action, an unknown action value).
	ReasonPolicyNotEnforced = "PolicyNotEnforced"
	// ReasonPolicyNarrowed: parts of the policy cannot be checked at L4 and
	// were dropped or made stricter.
	ReasonPolicyNarrowed = "PolicyNarrowed"
	// ReasonUnknownDataplaneMode: istio.io/dataplane-mode has a value other
	// than ambient or none.
	ReasonUnknownDataplaneMode = "UnknownDataplaneMode"
	// ReasonInvalidAddress: an IP address in the object does not parse, so
	// the object is left out.
	ReasonInvalidAddress = "InvalidAddress"
)

var (
	kindNamespace = ObjectRef{Kind: "Namespace", APIVersion: "v1"}
	kindPod       = ObjectRef{Kind: "Pod", APIVersion: "v1"}
	kindService   = ObjectRef{Kind: "Service", APIVersion: "v1"}
	kindAuthz     = ObjectRef{Kind: "AuthorizationPolicy", APIVersion: "security.istio.io/v1"}
	kindPeerAuthn = ObjectRef{Kind: "PeerAuthentication", APIVersion: "security.istio.io/v1"}
)

// refTo is kind filled in with one object's identity.
func refTo(kind ObjectRef, namespace, name string, uid types.UID) ObjectRef {
	kind.Namespace, kind.Name, kind.UID = namespace, name, uid
	return kind
}

// Build turns the cluster's objects into workload-API resources, following
// istiod's ambient index (pilot/pkg/serviceregistry/ambient) except where
// the comments of the helpers say otherwise. It is pure: no I/O, inputs
// untouched, equal inputs give equal outputs. The resources may share
// sub-messages with each other (one PortList for every workload behind a
// service), so they must be treated as read-only.
func Build(in Inputs) Output {
	out, _ := buildWith(in, nil)
	return out
}

// buildWith builds, reusing from prev (may be nil) the resources of
// objects that did not change, and returns what to reuse next time.
func buildWith(in Inputs, prev *memo) (Output, *memo) {
	b := &builder{
		cfg: in.Config,
		out: Output{
			Addresses:      make(map[string]proto.Message, len(in.Pods)+len(in.Services)),
			Authorizations: make(map[string]proto.Message, len(in.AuthorizationPolicies)+len(in.PeerAuthentications)+1),
		},
		prev: prev,
		next: newMemo(in),
	}
	if b.prev != nil && b.prev.cfg != b.cfg {
		b.prev = nil
	}
	b.checkNamespaces(in.Namespaces)
	b.indexServices(in.Services, in.Namespaces)
	b.indexEndpointSlices(in.EndpointSlices)
	b.convertAuthorizationPolicies(in.AuthorizationPolicies)
	b.convertPeerAuthentications(in.PeerAuthentications)
	b.reuseWorkloads = b.prev != nil && b.next.deps.equal(&b.prev.deps)
	for _, p := range in.Pods {
		b.addPod(p)
	}
	slices.SortFunc(b.out.Problems, func(a, c Problem) int {
		return cmp.Or(
			cmp.Compare(a.Object.Kind, c.Object.Kind),
			cmp.Compare(a.Object.Namespace, c.Object.Namespace),
			cmp.Compare(a.Object.Name, c.Object.Name),
			cmp.Compare(a.Reason, c.Reason),
			cmp.Compare(a.Message, c.Message),
		)
	})
	return b.out, b.next
}

// builder holds one Build's indexes.
type builder struct {
	cfg Config
	out Output

	// services by "<namespace>/<name>", for endpoint slices.
	servicesByName map[string]*serviceInfo
	// servicesBySelector indexes services with a selector.
	servicesBySelector selectorIndex[*serviceInfo]
	// slicesByPod lists the endpoint slices naming each pod.
	slicesByPod map[types.NamespacedName][]sliceMembership

	// authzBySelector indexes workload-selector AuthorizationPolicies by
	// their resource name.
	authzBySelector selectorIndex[string]
	peerAuthn       peerAuthnIndex
	paScratch       []*workloadPeerAuthn

	// prev holds the previous build's reusable results (nil: none), next
	// collects this build's.
	prev, next *memo
	// reuseWorkloads is set when everything but the pods is as in prev,
	// so that an unchanged pod's workload is unchanged too.
	reuseWorkloads bool
}

func (b *builder) problem(obj ObjectRef, reason, msg string) {
	b.out.Problems = append(b.out.Problems, Problem{Object: obj, Reason: reason, Message: msg})
}
