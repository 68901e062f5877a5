package discovery

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/warren-mesh/warren/authz"
	"github.com/warren-mesh/warren/state"
)

// FieldError is one problem in a config file, located by the path of the
// field that holds it, e.g. "workloads[2].workloadIps[0]". Parse returns
// every FieldError it finds, joined, in file order.
type FieldError struct {
	// Path is empty when the problem concerns the whole document.
	Path string
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// The file's schema. Field names follow Istio's workload API in camelCase
// (as in ztunnel's /config_dump), so a dump and a config file read alike.
type fileConfig struct {
	TrustDomain string `json:"trustDomain"`
	// RootNamespace is Istio's meshConfig.rootNamespace, for the scope of
	// authorizationPolicies and peerAuthentications.
	RootNamespace string         `json:"rootNamespace"`
	Workloads     []fileWorkload `json:"workloads"`
	Services      []fileService  `json:"services"`
	// Policies are in the form istiod sends ztunnel (Authorization).
	Policies []filePolicy `json:"policies"`
	// AuthorizationPolicies and PeerAuthentications are Istio's Kubernetes
	// objects, pasted as they are.
	AuthorizationPolicies []fileObject `json:"authorizationPolicies"`
	PeerAuthentications   []fileObject `json:"peerAuthentications"`
}

type fileWorkload struct {
	UID               string   `json:"uid"`
	Name              string   `json:"name"`
	Namespace         string   `json:"namespace"`
	ServiceAccount    string   `json:"serviceAccount"`
	TrustDomain       string   `json:"trustDomain"`
	WorkloadIPs       []string `json:"workloadIps"`
	Node              string   `json:"node"`
	Protocol          string   `json:"protocol"`
	NetNS             string   `json:"netns"`
	WorkloadName      string   `json:"workloadName"`
	WorkloadType      string   `json:"workloadType"`
	CanonicalName     string   `json:"canonicalName"`
	CanonicalRevision string   `json:"canonicalRevision"`
	ClusterID         string   `json:"clusterId"`
	// Labels are the pod's labels, matched by the selectors of
	// authorizationPolicies and peerAuthentications.
	Labels map[string]string `json:"labels"`
	// AuthorizationPolicies name ("<namespace>/<name>") the workload-selector
	// policies of `policies` that apply to the workload.
	AuthorizationPolicies []string `json:"authorizationPolicies"`
}

type fileService struct {
	Name            string                 `json:"name"`
	Namespace       string                 `json:"namespace"`
	Hostname        string                 `json:"hostname"`
	VIPs            []string               `json:"vips"`
	Ports           map[string]json.Number `json:"ports"`
	SubjectAltNames []string               `json:"subjectAltNames"`
	Endpoints       []fileEndpoint         `json:"endpoints"`
}

type fileEndpoint struct {
	WorkloadUID string                 `json:"workloadUid"`
	Ports       map[string]json.Number `json:"ports"`
}

// Parse converts the bytes of a config file into a Snapshot whose Version is
// a short hash of the bytes. It has no side effects. On failure it returns
// every problem found, each a *FieldError naming its field, joined with
// errors.Join in file order (YAML syntax errors excepted: they stop parsing;
// references between sections are checked last).
func Parse(data []byte) (*state.Snapshot, error) {
	snap, _, err := ParseWithWarnings(data)
	return snap, err
}

// ParseWithWarnings is Parse that also returns warnings about accepted
// content that is not enforced as written: Istio policy parts that L4 cannot
// check, dropped or narrowed as authz.FromAuthorizationPolicy explains. Each
// warning starts with the path of the policy it concerns.
func ParseWithWarnings(data []byte) (*state.Snapshot, []string, error) {
	snap, warnings, err := parse(data)
	if err != nil {
		return nil, nil, err
	}
	return snap, warnings, nil
}

func parse(data []byte) (*state.Snapshot, []string, error) {
	// Strict conversion rejects duplicate keys, which plain YAML would
	// silently resolve to the last one.
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing YAML: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return nil, nil, fmt.Errorf("decoding YAML: %w", err)
	}
	switch doc.(type) {
	case nil:
		// Most likely a file caught while being truncated and rewritten;
		// a deliberately empty mesh is written "workloads: []".
		return nil, nil, &FieldError{Msg: "config is empty"}
	case map[string]any:
	default:
		return nil, nil, &FieldError{Msg: "expected a map at the top level, got " + describe(doc)}
	}
	// Check the shape first, ourselves, because encoding/json names neither
	// the list index of an unknown field nor stops at the first one.
	var shape []error
	checkShape("", doc, reflect.TypeFor[fileConfig](), &shape)
	if len(shape) > 0 {
		return nil, nil, errors.Join(shape...)
	}
	var cfg fileConfig
	dec = json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		// Unreachable once the shape check passed; kept as a guard.
		return nil, nil, fmt.Errorf("decoding config: %w", err)
	}
	return build(Version(data), &cfg)
}

// Version is the short sha256 of a file's bytes, which names the snapshot
// it becomes (Snapshot.Version): 48 bits tell apart the few
// versions one file goes through, and stay readable in logs.
func Version(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:6])
}

// checkShape compares a decoded JSON value with the Go type it will be
// decoded into, appending a FieldError for each unknown field and each value
// of the wrong kind. null is accepted anywhere and means "unset".
func checkShape(path string, v any, t reflect.Type, errs *[]error) {
	if v == nil {
		return
	}
	mismatch := func(want string) {
		*errs = append(*errs, &FieldError{Path: path, Msg: "expected " + want + ", got " + describe(v)})
	}
	switch t {
	case reflect.TypeFor[json.RawMessage]():
		return
	case reflect.TypeFor[json.Number]():
		if _, ok := v.(json.Number); !ok {
			mismatch("a number")
		}
		return
	}
	switch t.Kind() {
	case reflect.String:
		if _, ok := v.(string); !ok {
			mismatch("a string")
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			mismatch("a boolean")
		}
	case reflect.Pointer:
		checkShape(path, v, t.Elem(), errs)
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			mismatch("a list")
			return
		}
		for i, e := range list {
			checkShape(fmt.Sprintf("%s[%d]", path, i), e, t.Elem(), errs)
		}
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			mismatch("a map")
			return
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			checkShape(fmt.Sprintf("%s[%q]", path, k), m[k], t.Elem(), errs)
		}
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			mismatch("a map")
			return
		}
		// Unknown fields first (JSON lost the file's key order anyway): a
		// misspelt key is the likeliest cause of anything else wrong here.
		known := make(map[string]reflect.Type, t.NumField())
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			known[name] = t.Field(i).Type
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if known[k] == nil {
				*errs = append(*errs, &FieldError{Path: join(path, k), Msg: "unknown field"})
			}
		}
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
			if fv, present := m[name]; present {
				checkShape(join(path, name), fv, known[name], errs)
			}
		}
	default:
		panic("discovery: checkShape has no rule for " + t.String())
	}
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	case []any:
		return "a list"
	case map[string]any:
		return "a map"
	}
	return fmt.Sprintf("%T", v)
}

// builder converts the file's types into Warren's, collecting FieldErrors
// in the order they are found. Its indexes remember which entry (by position
// in the file) claimed a UID, address or service key first.
type builder struct {
	errs     []error
	warnings []string

	workloads []fileWorkload
	byUID     map[string]int
	byIP      map[netip.Addr]int

	services []*state.Service
	byKey    map[string]int
	byVIP    map[netip.Addr]int

	policies []*state.Policy
	// byPolicy names the entry that defined each policy key, e.g.
	// "policies[2]", for duplicate errors.
	byPolicy map[string]string
}

func (b *builder) add(path, format string, args ...any) {
	b.errs = append(b.errs, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// build validates cfg and converts it into Warren's types. Every rule that
// NewSnapshot enforces (unique UIDs, addresses, keys; valid identities) is
// checked here first, so that the error names the field.
func build(version string, cfg *fileConfig) (*state.Snapshot, []string, error) {
	b := &builder{
		workloads: cfg.Workloads,
		byUID:     make(map[string]int, len(cfg.Workloads)),
		byIP:      make(map[netip.Addr]int, len(cfg.Workloads)),
		byKey:     make(map[string]int, len(cfg.Services)),
		byVIP:     make(map[netip.Addr]int, len(cfg.Services)),
		byPolicy:  make(map[string]string),
	}
	defaultTD := state.DefaultTrustDomain
	if cfg.TrustDomain != "" {
		if b.trustDomain("trustDomain", cfg.TrustDomain) {
			defaultTD = cfg.TrustDomain
		}
	}

	workloads := make([]*state.Workload, 0, len(cfg.Workloads))
	for i, fw := range cfg.Workloads {
		workloads = append(workloads, b.workload(i, fw, defaultTD))
	}
	for i, fs := range cfg.Services {
		b.services = append(b.services, b.service(i, fs))
	}

	root := authz.DefaultRootNamespace
	if cfg.RootNamespace != "" {
		root = cfg.RootNamespace
		b.namespace("rootNamespace", root)
	}
	for i, fp := range cfg.Policies {
		b.addPolicy(fmt.Sprintf("policies[%d]", i), b.policy(i, fp))
	}
	for i, obj := range cfg.AuthorizationPolicies {
		b.authorizationPolicy(fmt.Sprintf("authorizationPolicies[%d]", i), obj, root, workloads)
	}
	for i, obj := range cfg.PeerAuthentications {
		b.peerAuthentication(fmt.Sprintf("peerAuthentications[%d]", i), obj, root, workloads)
	}
	b.policyRefs(cfg.Workloads)

	if len(b.errs) > 0 {
		return nil, nil, errors.Join(b.errs...)
	}
	snap, err := state.NewSnapshot(version, workloads, b.services, b.policies)
	if err != nil {
		return nil, nil, fmt.Errorf("indexing config: %w", err)
	}
	return snap, b.warnings, nil
}

func (b *builder) workload(i int, fw fileWorkload, defaultTD string) *state.Workload {
	p := fmt.Sprintf("workloads[%d]", i)
	start := len(b.errs)
	w := &state.Workload{
		UID:               fw.UID,
		Name:              fw.Name,
		Namespace:         fw.Namespace,
		ServiceAccount:    fw.ServiceAccount,
		TrustDomain:       fw.TrustDomain,
		Node:              fw.Node,
		Protocol:          state.Protocol(fw.Protocol),
		NetNS:             fw.NetNS,
		WorkloadName:      fw.WorkloadName,
		WorkloadType:      fw.WorkloadType,
		CanonicalName:     fw.CanonicalName,
		CanonicalRevision: fw.CanonicalRevision,
		ClusterID:         fw.ClusterID,
		// Copied: selector policies append to it.
		AuthorizationPolicies: slices.Clone(fw.AuthorizationPolicies),
	}
	switch j, dup := b.byUID[fw.UID]; {
	case fw.UID == "":
		b.add(p+".uid", "required")
	case dup:
		b.add(p+".uid", "duplicate %q, also workloads[%d]", fw.UID, j)
	default:
		b.byUID[fw.UID] = i
	}
	switch {
	case fw.Name == "":
		b.add(p+".name", "required")
	case !isDNSSubdomain(fw.Name):
		b.add(p+".name", "%q is not a DNS subdomain name (lowercase letters, digits, '-' and '.')", fw.Name)
	}
	b.namespace(p+".namespace", fw.Namespace)
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	if err := spiffeid.ValidatePathSegment(w.ServiceAccount); err != nil {
		b.add(p+".serviceAccount", "%q cannot be part of a SPIFFE ID: %v", w.ServiceAccount, err)
	}
	if w.TrustDomain == "" {
		w.TrustDomain = defaultTD
	} else {
		b.trustDomain(p+".trustDomain", w.TrustDomain)
	}

	if len(fw.WorkloadIPs) == 0 {
		b.add(p+".workloadIps", "at least one address is required")
	}
	for k, s := range fw.WorkloadIPs {
		ip, ok := b.addr(fmt.Sprintf("%s.workloadIps[%d]", p, k), s)
		if !ok {
			continue
		}
		if j, dup := b.byIP[ip]; dup {
			b.add(fmt.Sprintf("%s.workloadIps[%d]", p, k), "%s is already an address of workloads[%d] (%q)", ip, j, b.workloads[j].UID)
			continue
		}
		b.byIP[ip] = i
		w.IPs = append(w.IPs, ip)
	}

	switch w.Protocol {
	case "":
		w.Protocol = state.ProtocolTCP
	case state.ProtocolHBONE, state.ProtocolTCP:
	default:
		b.add(p+".protocol", "%q is not one of HBONE, TCP", fw.Protocol)
	}
	if w.NetNS != "" {
		switch {
		case !strings.HasPrefix(w.NetNS, "/"):
			b.add(p+".netns", "%q is not an absolute path", w.NetNS)
		case w.Protocol == state.ProtocolTCP:
			// Only HBONE workloads are captured; a netns on a TCP workload
			// is almost surely a forgotten "protocol: HBONE".
			b.add(p+".netns", "set, but protocol is %s: only HBONE workloads are captured", w.Protocol)
		}
	}

	if len(b.errs) == start {
		// Guard: the checks above should make this unreachable; without it
		// NewSnapshot would reject the workload with no field path.
		td, err := spiffeid.TrustDomainFromString(w.TrustDomain)
		if err == nil {
			_, err = spiffeid.FromSegments(td, "ns", w.Namespace, "sa", w.ServiceAccount)
		}
		if err != nil {
			b.add(p, "cannot form a SPIFFE ID: %v", err)
		}
	}
	return w
}

func (b *builder) service(i int, fs fileService) *state.Service {
	p := fmt.Sprintf("services[%d]", i)
	svc := &state.Service{
		Name:      fs.Name,
		Namespace: fs.Namespace,
		Hostname:  fs.Hostname,
	}
	switch {
	case fs.Name == "":
		b.add(p+".name", "required")
	case !isDNSLabel(fs.Name):
		b.add(p+".name", "%q is not a DNS label (lowercase letters, digits and '-', at most 63)", fs.Name)
	}
	b.namespace(p+".namespace", fs.Namespace)
	if svc.Hostname == "" && fs.Name != "" && fs.Namespace != "" {
		// Kubernetes' default cluster domain, which is DNS and unrelated to
		// the SPIFFE trust domain even though both default to cluster.local.
		svc.Hostname = fs.Name + "." + fs.Namespace + ".svc.cluster.local"
	}
	if svc.Hostname != "" && !isDNSSubdomain(svc.Hostname) {
		b.add(p+".hostname", "%q is not a DNS name (lowercase letters, digits, '-' and '.')", svc.Hostname)
	}
	if svc.Hostname != "" && fs.Namespace != "" {
		if j, dup := b.byKey[svc.Key()]; dup {
			b.add(p+".hostname", "service %q is already defined by services[%d]", svc.Key(), j)
		} else {
			b.byKey[svc.Key()] = i
		}
	}

	for k, s := range fs.VIPs {
		vp := fmt.Sprintf("%s.vips[%d]", p, k)
		// Istio writes VIPs as "<network>/<ip>", with an empty network in a
		// single-network mesh; Warren has one network and ignores the prefix.
		_, addr, hasNet := strings.Cut(s, "/")
		if !hasNet {
			addr = s
		}
		ip, ok := b.addr(vp, addr)
		if !ok {
			continue
		}
		if j, dup := b.byVIP[ip]; dup {
			b.add(vp, "%s is already a VIP of services[%d] (%q)", ip, j, b.services[j].Key())
			continue
		}
		if j, dup := b.byIP[ip]; dup {
			b.add(vp, "%s is the address of workloads[%d] (%q)", ip, j, b.workloads[j].UID)
			continue
		}
		b.byVIP[ip] = i
		svc.VIPs = append(svc.VIPs, ip)
	}

	svc.Ports = b.ports(p+".ports", fs.Ports, false, nil)

	for k, s := range fs.SubjectAltNames {
		id, err := spiffeid.FromString(s)
		if err != nil {
			b.add(fmt.Sprintf("%s.subjectAltNames[%d]", p, k), "%q is not a SPIFFE ID: %v", s, err)
			continue
		}
		svc.SubjectAltNames = append(svc.SubjectAltNames, id)
	}

	seen := make(map[string]int, len(fs.Endpoints))
	for k, fe := range fs.Endpoints {
		ep := fmt.Sprintf("%s.endpoints[%d]", p, k)
		_, known := b.byUID[fe.WorkloadUID]
		j, dup := seen[fe.WorkloadUID]
		switch {
		case fe.WorkloadUID == "":
			b.add(ep+".workloadUid", "required")
		case !known:
			b.add(ep+".workloadUid", "no workload %q", fe.WorkloadUID)
		case dup:
			b.add(ep+".workloadUid", "%q is already endpoints[%d] of this service", fe.WorkloadUID, j)
		default:
			seen[fe.WorkloadUID] = k
		}
		svc.Endpoints = append(svc.Endpoints, state.Endpoint{
			WorkloadUID: fe.WorkloadUID,
			Ports:       b.ports(ep+".ports", fe.Ports, true, svc.Ports),
		})
	}
	return svc
}

// ports converts a "service port -> target port" map. For an endpoint's
// override (override set), each key must be one of the service's ports in
// svcPorts: an override of a port the service lacks would never apply.
func (b *builder) ports(p string, m map[string]json.Number, override bool, svcPorts map[uint16]uint16) map[uint16]uint16 {
	if len(m) == 0 {
		return nil
	}
	out := make(map[uint16]uint16, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		kp := fmt.Sprintf("%s[%q]", p, k)
		port, err := strconv.ParseUint(k, 10, 16)
		if err != nil || port == 0 {
			b.add(kp, "service port %q is not a number in 1-65535", k)
			continue
		}
		if override {
			if _, ok := svcPorts[uint16(port)]; !ok {
				b.add(kp, "%d is not a port of the service", port)
				continue
			}
		}
		// 0 means "the same as the service port" (Istio's convention).
		target, err := strconv.ParseUint(string(m[k]), 10, 16)
		if err != nil {
			b.add(kp, "target port %s is not a number in 0-65535", m[k])
			continue
		}
		out[uint16(port)] = uint16(target)
	}
	return out
}

// addr parses one workload IP or VIP. Addresses are stored unmapped because
// Snapshot lookups unmap the address they are asked about.
func (b *builder) addr(p, s string) (netip.Addr, bool) {
	ip, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		b.add(p, "%q is not an IP address", s)
	case ip.Zone() != "":
		b.add(p, "%q has a zone; mesh addresses cannot be link-local scoped", s)
	case ip.IsUnspecified() || ip.IsMulticast():
		b.add(p, "%s is not a unicast address", ip)
	default:
		return ip.Unmap(), true
	}
	return netip.Addr{}, false
}

// namespace checks a required Kubernetes namespace name, which is also a
// segment of SPIFFE IDs.
func (b *builder) namespace(p, ns string) {
	switch {
	case ns == "":
		b.add(p, "required")
	case !isDNSLabel(ns):
		b.add(p, "%q is not a DNS label (lowercase letters, digits and '-', at most 63)", ns)
	}
}

// trustDomain checks a SPIFFE trust domain name, reporting whether it is good.
func (b *builder) trustDomain(p, td string) bool {
	parsed, err := spiffeid.TrustDomainFromString(td)
	switch {
	case err != nil:
		b.add(p, "%q is not a SPIFFE trust domain: %v", td, err)
	case parsed.Name() != td:
		// TrustDomainFromString also accepts "spiffe://td/...": keep the
		// field a bare name, as in Istio's meshConfig.trustDomain.
		b.add(p, "%q is not a bare trust domain name (want e.g. %q)", td, parsed.Name())
	default:
		return true
	}
	return false
}

// isDNSLabel reports whether s is an RFC 1123 label as Kubernetes uses them
// for namespaces and service names.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		ch := s[i]
		alnum := ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9'
		if !alnum && (ch != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// isDNSSubdomain reports whether s is a Kubernetes DNS subdomain name (pod
// names, service hostnames): dot-separated labels, at most 253 characters.
// Like Kubernetes it does not cap each label at 63, since pod names need not.
func isDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" {
			return false
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			alnum := ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9'
			if !alnum && (ch != '-' || i == 0 || i == len(label)-1) {
				return false
			}
		}
	}
	return true
}
