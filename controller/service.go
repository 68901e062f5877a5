package controller

import (
	"fmt"
	"net/netip"
	"strings"

	"istio.io/api/annotation"
	"istio.io/istio/pkg/workloadapi"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// serviceInfo is one Kubernetes Service during a Build.
type serviceInfo struct {
	svc *corev1.Service
	// key is the resource name and the key in Workload.services:
	// "<namespace>/<hostname>".
	key string
	// shared is the PortList of every workload behind the service when no
	// target port is named: one list instead of one per pod.
	shared *workloadapi.PortList
}

// indexServices adds a Service resource per Kubernetes Service and files
// the services for the pods to find.
//
// As istiod: ExternalName services are left out (their DNS name is resolved
// by the client's resolver); headless services are kept, with no address.
func (b *builder) indexServices(services []*corev1.Service, namespaces []*corev1.Namespace) {
	nsAnnotations := make(map[string]map[string]string, len(namespaces))
	for _, ns := range namespaces {
		nsAnnotations[ns.Name] = ns.Annotations
	}
	b.servicesByName = make(map[string]*serviceInfo, len(services))
	for _, s := range services {
		if s.Spec.Type == corev1.ServiceTypeExternalName {
			continue
		}
		// Workloads read the services' selectors and ports.
		b.next.deps.add(s)
		name := types.NamespacedName{Namespace: s.Namespace, Name: s.Name}
		td := nsAnnotations[s.Namespace][annotation.NetworkingTrafficDistribution.Name]
		m, ok := b.prev.service(name)
		if !ok || m.svc != s || m.trafficDistribution != td {
			hostname := s.Name + "." + s.Namespace + ".svc." + b.cfg.DomainSuffix
			ws, err := serviceResource(s, hostname, nsAnnotations[s.Namespace])
			if err != nil {
				b.problem(refTo(kindService, s.Namespace, s.Name, s.UID), ReasonInvalidAddress, err.Error())
				continue
			}
			m = serviceMemo{svc: s, trafficDistribution: td, info: newServiceInfo(s, s.Namespace+"/"+hostname),
				resource: &workloadapi.Address{Type: &workloadapi.Address_Service{Service: ws}}}
		}
		b.next.services[name] = m
		si := m.info
		b.out.Addresses[si.key] = m.resource
		b.servicesByName[s.Namespace+"/"+s.Name] = si
		// An empty selector selects nothing: such a service's endpoints are
		// managed by someone else, in endpoint slices.
		b.servicesBySelector.add(s.Namespace, s.Spec.Selector, si)
	}
}

func newServiceInfo(s *corev1.Service, key string) *serviceInfo {
	si := &serviceInfo{svc: s, key: key}
	if !hasNamedTargetPort(s) {
		si.shared = &workloadapi.PortList{Ports: make([]*workloadapi.Port, 0, len(s.Spec.Ports))}
		for _, p := range s.Spec.Ports {
			si.shared.Ports = append(si.shared.Ports, &workloadapi.Port{ServicePort: uint32(p.Port), TargetPort: uint32(p.TargetPort.IntVal)})
		}
	}
	return si
}

func hasNamedTargetPort(s *corev1.Service) bool {
	for _, p := range s.Spec.Ports {
		if p.TargetPort.Type == intstr.String {
			return true
		}
	}
	return false
}

// serviceResource converts s. Named target ports have target 0 here, as
// in istiod: they are resolved per workload, in Workload.services.
func serviceResource(s *corev1.Service, hostname string, nsAnnotations map[string]string) (*workloadapi.Service, error) {
	ips := s.Spec.ClusterIPs
	if len(ips) == 0 && s.Spec.ClusterIP != "" {
		ips = []string{s.Spec.ClusterIP}
	}
	var addrs []*workloadapi.NetworkAddress
	for _, ip := range ips {
		if ip == "" || ip == corev1.ClusterIPNone {
			continue
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			return nil, fmt.Errorf("cluster IP %q: not an IP address", ip)
		}
		addrs = append(addrs, &workloadapi.NetworkAddress{Address: a.AsSlice()})
	}
	ports := make([]*workloadapi.Port, 0, len(s.Spec.Ports))
	for _, p := range s.Spec.Ports {
		ports = append(ports, &workloadapi.Port{
			ServicePort: uint32(p.Port),
			TargetPort:  uint32(p.TargetPort.IntVal),
			AppProtocol: appProtocol(p),
		})
	}
	return &workloadapi.Service{
		Name:          s.Name,
		Namespace:     s.Namespace,
		Hostname:      hostname,
		Addresses:     addrs,
		Ports:         ports,
		LoadBalancing: loadBalancing(s, nsAnnotations),
		IpFamilies:    ipFamilies(s.Spec.IPFamilies),
		// A Kubernetes Service owns its hostname; istiod marks them all
		// canonical so that a client prefers them over ServiceEntries.
		Canonical: true,
	}, nil
}

// loadBalancing is istiod's reading of internalTrafficPolicy,
// trafficDistribution (field, then Istio's annotation on the service, then
// on its namespace) and publishNotReadyAddresses.
func loadBalancing(s *corev1.Service, nsAnnotations map[string]string) *workloadapi.LoadBalancing {
	var lb *workloadapi.LoadBalancing
	if itp := s.Spec.InternalTrafficPolicy; itp != nil && *itp == corev1.ServiceInternalTrafficPolicyLocal {
		lb = &workloadapi.LoadBalancing{
			RoutingPreference: []workloadapi.LoadBalancing_Scope{workloadapi.LoadBalancing_NODE},
			Mode:              workloadapi.LoadBalancing_STRICT,
		}
	} else {
		switch trafficDistribution(s, nsAnnotations) {
		case corev1.ServiceTrafficDistributionPreferSameZone:
			lb = &workloadapi.LoadBalancing{
				RoutingPreference: []workloadapi.LoadBalancing_Scope{
					workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
				},
				Mode: workloadapi.LoadBalancing_FAILOVER,
			}
		case corev1.ServiceTrafficDistributionPreferSameNode:
			lb = &workloadapi.LoadBalancing{
				RoutingPreference: []workloadapi.LoadBalancing_Scope{
					workloadapi.LoadBalancing_NETWORK, workloadapi.LoadBalancing_REGION, workloadapi.LoadBalancing_ZONE,
					workloadapi.LoadBalancing_SUBZONE, workloadapi.LoadBalancing_NODE,
				},
				Mode: workloadapi.LoadBalancing_FAILOVER,
			}
		}
	}
	if s.Spec.PublishNotReadyAddresses {
		if lb == nil {
			lb = &workloadapi.LoadBalancing{}
		}
		lb.HealthPolicy = workloadapi.LoadBalancing_ALLOW_ALL
	}
	return lb
}

// trafficDistribution returns PreferSameZone, PreferSameNode or "" (any).
func trafficDistribution(s *corev1.Service, nsAnnotations map[string]string) string {
	norm := func(v string) string {
		switch strings.ToLower(v) {
		case "preferclose", "prefersamezone":
			return corev1.ServiceTrafficDistributionPreferSameZone
		case "prefersamenode":
			return corev1.ServiceTrafficDistributionPreferSameNode
		}
		return ""
	}
	if td := s.Spec.TrafficDistribution; td != nil {
		// The field is validated: exact spellings only.
		switch *td {
		case corev1.ServiceTrafficDistributionPreferClose, corev1.ServiceTrafficDistributionPreferSameZone,
			corev1.ServiceTrafficDistributionPreferSameNode:
			return norm(*td)
		}
	}
	if v := s.Annotations[annotation.NetworkingTrafficDistribution.Name]; v != "" {
		return norm(v)
	}
	return norm(nsAnnotations[annotation.NetworkingTrafficDistribution.Name])
}

func ipFamilies(fams []corev1.IPFamily) workloadapi.IPFamilies {
	switch {
	case len(fams) == 2:
		return workloadapi.IPFamilies_DUAL
	case len(fams) == 1 && fams[0] == corev1.IPv4Protocol:
		return workloadapi.IPFamilies_IPV4_ONLY
	case len(fams) == 1:
		return workloadapi.IPFamilies_IPV6_ONLY
	}
	return workloadapi.IPFamilies_AUTOMATIC
}

// wellKnownTCPPorts are taken as TCP when the port's name says nothing, as
// in istiod: SMTP, DNS, MySQL, MongoDB.
var wellKnownTCPPorts = map[int32]bool{25: true, 53: true, 3306: true, 27017: true}

// appProtocol is Istio's protocol selection: appProtocol if set, else the
// port name's prefix before '-' ("http-web" is HTTP). Only the protocols
// the workload API names survive; the rest are UNKNOWN.
func appProtocol(p corev1.ServicePort) workloadapi.AppProtocol {
	if p.Protocol == corev1.ProtocolUDP {
		return workloadapi.AppProtocol_UNKNOWN
	}
	name := p.Name
	if p.AppProtocol != nil {
		name = *p.AppProtocol
		switch name {
		case "kubernetes.io/h2c":
			return workloadapi.AppProtocol_HTTP2
		case "kubernetes.io/ws":
			return workloadapi.AppProtocol_HTTP11
		case "kubernetes.io/wss":
			return workloadapi.AppProtocol_TLS
		}
	}
	// grpc-web contains the separator; Istio knows it, the workload API
	// does not.
	if len(name) >= len("grpc-web") && strings.EqualFold(name[:len("grpc-web")], "grpc-web") {
		return workloadapi.AppProtocol_UNKNOWN
	}
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	switch strings.ToLower(name) {
	case "http":
		return workloadapi.AppProtocol_HTTP11
	case "http2":
		return workloadapi.AppProtocol_HTTP2
	case "grpc":
		return workloadapi.AppProtocol_GRPC
	case "tls", "https":
		return workloadapi.AppProtocol_TLS
	case "tcp":
		return workloadapi.AppProtocol_TCP
	case "udp", "http_proxy", "mongo", "redis", "mysql":
		return workloadapi.AppProtocol_UNKNOWN
	}
	if wellKnownTCPPorts[p.Port] {
		return workloadapi.AppProtocol_TCP
	}
	return workloadapi.AppProtocol_UNKNOWN
}

// sliceMembership is a pod named by an endpoint slice of a service.
type sliceMembership struct {
	svc   *serviceInfo
	ports []discoveryv1.EndpointPort
	// uid is the target ref's pod uid, if it names one: a pod recreated
	// under the same name (a StatefulSet's) is not the slice's pod until
	// the slice is updated.
	uid types.UID
}

// indexEndpointSlices files, per pod, the endpoint slices whose endpoints
// point at it, so that services without a selector (whose endpoints are
// written by someone other than Kubernetes' endpoint controller) still
// reach the workload's services map. Slices without the service-name label
// or of an unknown or ExternalName service are ignored, and so are slices
// of services with a selector: the selector already decides, and their
// slices only lag it. istiod adds a selector service whose slice still
// names a pod its selector no longer selects; Warren does not.
func (b *builder) indexEndpointSlices(slices []*discoveryv1.EndpointSlice) {
	b.slicesByPod = make(map[types.NamespacedName][]sliceMembership)
	for _, es := range slices {
		name, ok := es.Labels[discoveryv1.LabelServiceName]
		if !ok {
			continue
		}
		si := b.servicesByName[es.Namespace+"/"+name]
		if si == nil || len(si.svc.Spec.Selector) > 0 {
			continue
		}
		b.next.deps.add(es)
		for i := range es.Endpoints {
			ref := es.Endpoints[i].TargetRef
			if ref == nil || ref.Kind != "Pod" || ref.Name == "" {
				continue
			}
			ns := ref.Namespace
			if ns == "" {
				ns = es.Namespace
			}
			key := types.NamespacedName{Namespace: ns, Name: ref.Name}
			b.slicesByPod[key] = append(b.slicesByPod[key], sliceMembership{svc: si, ports: es.Ports, uid: ref.UID})
		}
	}
}

// portsForPod is the PortList of a service selecting p. A named target
// port is looked up in p's container ports; a service port whose name p
// does not have is left out, as in istiod (Kubernetes sends that port's
// traffic nowhere either).
func (si *serviceInfo) portsForPod(p *corev1.Pod) *workloadapi.PortList {
	if si.shared != nil {
		return si.shared
	}
	pl := &workloadapi.PortList{Ports: make([]*workloadapi.Port, 0, len(si.svc.Spec.Ports))}
	for _, sp := range si.svc.Spec.Ports {
		target, ok := resolveTargetPort(sp, p)
		if ok {
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(sp.Port), TargetPort: target})
		}
	}
	return pl
}

// portsFromSlice is the PortList of a service whose endpoint slice names p.
// The slice's port of the same name gives the target: for a service
// without selector the slice is the only truth. Here Warren differs from
// istiod, which ignores the slice's ports.
func (si *serviceInfo) portsFromSlice(p *corev1.Pod, slicePorts []discoveryv1.EndpointPort) *workloadapi.PortList {
	pl := &workloadapi.PortList{Ports: make([]*workloadapi.Port, 0, len(si.svc.Spec.Ports))}
	for _, sp := range si.svc.Spec.Ports {
		target, ok := slicePort(slicePorts, sp.Name)
		if !ok {
			target, ok = resolveTargetPort(sp, p)
		}
		if ok {
			pl.Ports = append(pl.Ports, &workloadapi.Port{ServicePort: uint32(sp.Port), TargetPort: target})
		}
	}
	return pl
}

func slicePort(ports []discoveryv1.EndpointPort, name string) (uint32, bool) {
	for _, ep := range ports {
		epName := ""
		if ep.Name != nil {
			epName = *ep.Name
		}
		if epName == name && ep.Port != nil && *ep.Port > 0 {
			return uint32(*ep.Port), true
		}
	}
	return 0, false
}

func resolveTargetPort(sp corev1.ServicePort, p *corev1.Pod) (uint32, bool) {
	if sp.TargetPort.Type != intstr.String {
		return uint32(sp.TargetPort.IntVal), true
	}
	if port, ok := namedContainerPort(p, sp.TargetPort.StrVal); ok {
		return uint32(port), true
	}
	return 0, false
}

// namedContainerPort finds a TCP container port by name, as istiod does:
// in the containers, then in native sidecars (init containers that keep
// running).
func namedContainerPort(p *corev1.Pod, name string) (int32, bool) {
	find := func(ports []corev1.ContainerPort) (int32, bool) {
		for _, cp := range ports {
			// The apiserver defaults an empty protocol to TCP.
			if cp.Name == name && (cp.Protocol == corev1.ProtocolTCP || cp.Protocol == "") {
				return cp.ContainerPort, true
			}
		}
		return 0, false
	}
	for i := range p.Spec.Containers {
		if port, ok := find(p.Spec.Containers[i].Ports); ok {
			return port, true
		}
	}
	for i := range p.Spec.InitContainers {
		c := &p.Spec.InitContainers[i]
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			continue
		}
		if port, ok := find(c.Ports); ok {
			return port, true
		}
	}
	return 0, false
}
