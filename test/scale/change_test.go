package scale

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warren-mesh/warren/state"
)

// change is one write to the cluster and what every agent must hold once
// it has arrived.
type change struct {
	what  string
	apply func(ctx context.Context) error
	want  func(*state.Snapshot) bool
}

// toggleCanary flips the canary label of the next pod in turn, which adds
// its namespace's canary policy to the pod's workload or takes it away.
// The pod is read now, so that apply is the write alone.
func (p *plane) toggleCanary(ctx context.Context) (change, error) {
	// A stride coprime with the pod count visits every pod, spread over
	// apps and namespaces, before one comes round again.
	const stride = 7919
	i := p.next * stride % len(p.cluster.pods)
	p.next++
	ref := p.cluster.pods[i]
	pods := p.kube.CoreV1().Pods(ref.Namespace)
	cur, err := pods.Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return change{}, fmt.Errorf("reading pod %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	next := cur.DeepCopy()
	on := next.Labels[canaryLabel] != canaryValue
	if on {
		next.Labels[canaryLabel] = canaryValue
	} else {
		delete(next.Labels, canaryLabel)
	}
	uid, key := p.uid(ref.Namespace, ref.Name), ref.Namespace+"/"+canaryPolicy
	return change{
		what: fmt.Sprintf("canary label of pod %s/%s set to %v", ref.Namespace, ref.Name, on),
		apply: func(ctx context.Context) error {
			_, err := pods.Update(ctx, next, metav1.UpdateOptions{})
			return err
		},
		want: func(s *state.Snapshot) bool {
			w, ok := s.Workload(uid)
			return ok && slices.Contains(w.AuthorizationPolicies, key) == on
		},
	}, nil
}

// deletePod deletes pod i: its workload, and its place among its
// service's endpoints, must go.
func (p *plane) deletePod(i int) change {
	ref := p.cluster.pods[i]
	uid, svc := p.uid(ref.Namespace, ref.Name), p.serviceKey(i%len(p.cluster.services))
	return change{
		what: fmt.Sprintf("deletion of pod %s/%s", ref.Namespace, ref.Name),
		apply: func(ctx context.Context) error {
			return p.kube.CoreV1().Pods(ref.Namespace).Delete(ctx, ref.Name, metav1.DeleteOptions{})
		},
		want: func(s *state.Snapshot) bool {
			_, present := s.Workload(uid)
			return !present && !isEndpoint(s, svc, uid)
		},
	}
}

// addPod creates pod i, one past those generated: it must appear, ready,
// behind its app's service.
func (p *plane) addPod(i int) (change, *corev1.Pod) {
	pod := p.cluster.pod(i)
	uid, svc := p.uid(pod.Namespace, pod.Name), p.serviceKey(i%len(p.cluster.services))
	return change{
		what: fmt.Sprintf("creation of pod %s/%s", pod.Namespace, pod.Name),
		apply: func(ctx context.Context) error {
			_, err := p.kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
			return err
		},
		want: func(s *state.Snapshot) bool {
			_, present := s.Workload(uid)
			return present && isEndpoint(s, svc, uid) == ready(i)
		},
	}, pod
}

func isEndpoint(s *state.Snapshot, svc, uid string) bool {
	sv, ok := s.Service(svc)
	if !ok {
		return false
	}
	return slices.ContainsFunc(sv.Endpoints, func(e state.Endpoint) bool { return e.WorkloadUID == uid })
}

// delays are one change's timings, from the write.
type delays struct {
	// agents is until the last agent's swap, first until the first's.
	agents, first time.Duration
	// cache is until the controller's update of the xDS cache returned:
	// debounce, build, and the cache's Replace.
	cache time.Duration
	// replace is the Replace alone: comparing every resource with the
	// cache's, and computing each stream's delta.
	replace time.Duration
}

// propagate makes ch and waits for every agent to hold it.
func propagate(ctx context.Context, p *plane, f *fleet, ch change, timeout time.Duration) (delays, error) {
	if n := f.expect(ch.want); n > 0 {
		return delays{}, fmt.Errorf("%s: %d agents hold it before it was made", ch.what, n)
	}
	start := time.Now()
	if err := ch.apply(ctx); err != nil {
		return delays{}, fmt.Errorf("%s: %w", ch.what, err)
	}
	first, last, err := f.wait(timeout)
	if err != nil {
		return delays{}, fmt.Errorf("%s: %w", ch.what, err)
	}
	// The fake clientset records every call; forget them, or they pile up
	// over thousands of iterations.
	p.kube.ClearActions()
	cached, replace := p.sink.lastChange()
	return delays{agents: last.Sub(start), first: first.Sub(start), cache: cached.Sub(start), replace: replace}, nil
}
