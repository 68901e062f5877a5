package scale

import (
	"fmt"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// shape is the size of a generated cluster.
type shape struct {
	Namespaces, Nodes, Pods, Services, Policies int
}

// large is the Kubernetes issue's target: 10,000 pods and 2,000 services,
// with a few hundred policies.
var large = shape{Namespaces: 50, Nodes: 100, Pods: 10000, Services: 2000, Policies: 300}

// small runs in seconds, for the correctness test.
var small = shape{Namespaces: 10, Nodes: 10, Pods: 500, Services: 100, Policies: 30}

// The label a policy per namespace selects: the benchmarks toggle it on a
// pod, which changes the policies its workload lists and so must reach
// every agent.
const (
	canaryLabel  = "tier"
	canaryValue  = "canary"
	canaryPolicy = "canary-deny"
)

// cluster is the objects of a generated cluster. Pods are apps' replicas:
// pod i belongs to app i%Services, whose Service selects it.
type cluster struct {
	shape      shape
	namespaces []*corev1.Namespace
	pods       []*corev1.Pod
	services   []*corev1.Service
	policies   []*securityv1.AuthorizationPolicy
}

// generate builds a cluster of s. Every fifth policy after the canary ones
// is namespace-wide, the others select one app; one pod in ten is not
// captured (no redirection annotation) and one in twenty is not ready, so
// that workloads differ the way a real cluster's do.
func generate(s shape) (*cluster, error) {
	c := &cluster{shape: s}
	for n := range s.Namespaces {
		c.namespaces = append(c.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name:   fmt.Sprintf("ns-%d", n),
			UID:    types.UID(fmt.Sprintf("uid-ns-%d", n)),
			Labels: map[string]string{"istio.io/dataplane-mode": "ambient"},
		}})
	}
	for a := range s.Services {
		c.services = append(c.services, c.service(a))
	}
	for i := range s.Pods {
		c.pods = append(c.pods, c.pod(i))
	}
	for n := range s.Namespaces {
		ap, err := policy(fmt.Sprintf(`{metadata: {name: %s, namespace: %s}, spec: {selector: {matchLabels: {%s: %s}}, action: DENY, rules: [{to: [{operation: {ports: ["9090"]}}]}]}}`,
			canaryPolicy, c.namespaces[n].Name, canaryLabel, canaryValue))
		if err != nil {
			return nil, err
		}
		c.policies = append(c.policies, ap)
	}
	for j := range s.Policies - s.Namespaces {
		app := j % s.Services
		ns := c.appNamespace(app)
		var y string
		if j%5 == 0 {
			y = fmt.Sprintf(`{metadata: {name: deny-ssh-%d, namespace: %s}, spec: {action: DENY, rules: [{from: [{source: {notNamespaces: [%s]}}], to: [{operation: {ports: ["22"]}}]}]}}`,
				j, ns, ns)
		} else {
			from := (app + 1) % s.Services
			y = fmt.Sprintf(`{metadata: {name: allow-%d, namespace: %s}, spec: {selector: {matchLabels: {app: app-%d}}, action: ALLOW, rules: [{from: [{source: {principals: ["cluster.local/ns/%s/sa/app-%d"]}}], to: [{operation: {ports: ["8080", "9090"]}}]}]}}`,
				j, ns, app, c.appNamespace(from), from)
		}
		ap, err := policy(y)
		if err != nil {
			return nil, err
		}
		c.policies = append(c.policies, ap)
	}
	return c, nil
}

func policy(y string) (*securityv1.AuthorizationPolicy, error) {
	ap := &securityv1.AuthorizationPolicy{}
	if err := yaml.Unmarshal([]byte(y), ap); err != nil {
		return nil, fmt.Errorf("decoding generated policy %s: %w", y, err)
	}
	ap.UID = types.UID("uid-ap-" + ap.Namespace + "-" + ap.Name)
	return ap, nil
}

func (c *cluster) appNamespace(app int) string {
	return fmt.Sprintf("ns-%d", app%c.shape.Namespaces)
}

// service is app's Service, with a VIP in 10.96.0.0/16.
func (c *cluster) service(app int) *corev1.Service {
	v := app + 1 // 10.96.0.0 is the network's address
	vip := fmt.Sprintf("10.96.%d.%d", v>>8&255, v&255)
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("app-%d", app),
			Namespace: c.appNamespace(app),
			UID:       types.UID(fmt.Sprintf("uid-svc-%d", app)),
		},
		Spec: corev1.ServiceSpec{
			Type:       corev1.ServiceTypeClusterIP,
			ClusterIP:  vip,
			ClusterIPs: []string{vip},
			Selector:   map[string]string{"app": fmt.Sprintf("app-%d", app)},
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
				{Name: "grpc", Port: 9090, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP},
			},
		},
	}
}

// pod is the i-th pod, with an IP in 10.1.0.0/16 and up (i may exceed the
// shape, for pods added later).
func (c *cluster) pod(i int) *corev1.Pod {
	app := i % c.shape.Services
	appName := fmt.Sprintf("app-%d", app)
	ip := fmt.Sprintf("10.%d.%d.%d", 1+i>>16, i>>8&255, i&255)
	yes := true
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:         fmt.Sprintf("%s-%d", appName, i),
			GenerateName: appName + "-5f7c9-",
			Namespace:    c.appNamespace(app),
			UID:          types.UID(fmt.Sprintf("uid-pod-%d", i)),
			Labels:       map[string]string{"app": appName, "version": "v1", "pod-template-hash": "5f7c9"},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: appName + "-5f7c9", UID: types.UID("uid-rs-" + appName), Controller: &yes,
			}},
		},
		Spec: corev1.PodSpec{
			NodeName:           fmt.Sprintf("node-%d", i%c.shape.Nodes),
			ServiceAccountName: appName,
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.example/app:v1",
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
					{Name: "grpc", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
				},
			}},
		},
		Status: corev1.PodStatus{
			Phase:  corev1.PodRunning,
			PodIP:  ip,
			PodIPs: []corev1.PodIP{{IP: ip}},
		},
	}
	if i%10 != 9 {
		// What the node agent writes once it redirects the pod.
		p.Annotations = map[string]string{"ambient.istio.io/redirection": "enabled"}
	}
	ready := corev1.ConditionTrue
	if i%20 == 19 {
		ready = corev1.ConditionFalse
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: ready}}
	return p
}

// captured and ready say how generate made pod i.
func captured(i int) bool { return i%10 != 9 }
func ready(i int) bool    { return i%20 != 19 }

// kubeObjects are the objects the Kubernetes clientset starts with.
func (c *cluster) kubeObjects() []runtime.Object {
	out := make([]runtime.Object, 0, len(c.namespaces)+len(c.services)+len(c.pods))
	for _, o := range c.namespaces {
		out = append(out, o)
	}
	for _, o := range c.services {
		out = append(out, o)
	}
	for _, o := range c.pods {
		out = append(out, o)
	}
	return out
}

// istioObjects are the objects the Istio clientset starts with.
func (c *cluster) istioObjects() []runtime.Object {
	out := make([]runtime.Object, 0, len(c.policies))
	for _, o := range c.policies {
		out = append(out, o)
	}
	return out
}
