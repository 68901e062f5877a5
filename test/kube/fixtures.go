package kube

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Namespace creates a namespace with a random name for one test. It is not
// deleted: without the namespace controller a deleted namespace stays
// Terminating forever, and the cluster is thrown away anyway.
func (c *Cluster) Namespace(t testing.TB) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "t-" + hex.EncodeToString(b)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.client.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
	return name
}

// Pod creates a pod running as service account sa (created if missing)
// with spec.nodeName set to node, as if scheduled there; with no kubelet it
// stays Pending.
func (c *Cluster) Pod(t testing.TB, ns, sa, node string) *corev1.Pod {
	t.Helper()
	ctx := t.Context()
	_, err := c.client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("creating service account %s/%s: %v", ns, sa, err)
	}
	p, err := c.client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: sa + "-"},
		Spec: corev1.PodSpec{
			ServiceAccountName: sa,
			NodeName:           node,
			// Never pulled: there is no kubelet.
			Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating pod in %s: %v", ns, err)
	}
	return p
}

// DeletePod deletes p at once. A pod bound to a node is otherwise only
// marked for deletion and waits for a kubelet that never comes.
func (c *Cluster) DeletePod(t testing.TB, p *corev1.Pod) {
	t.Helper()
	zero := int64(0)
	if err := c.client.CoreV1().Pods(p.Namespace).Delete(t.Context(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatalf("deleting pod %s/%s: %v", p.Namespace, p.Name, err)
	}
}

// PodToken requests a service-account token for p's service account, bound
// to p, for audience, with the shortest lifetime TokenRequest allows
// (10 min). The apiserver puts pod name and uid and the node name in it.
func (c *Cluster) PodToken(t testing.TB, p *corev1.Pod, audience string) string {
	t.Helper()
	exp := int64(600)
	tr, err := c.client.CoreV1().ServiceAccounts(p.Namespace).CreateToken(t.Context(), p.Spec.ServiceAccountName, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			Audiences:         []string{audience},
			ExpirationSeconds: &exp,
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("requesting token for pod %s/%s: %v", p.Namespace, p.Name, err)
	}
	return tr.Status.Token
}
