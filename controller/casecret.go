package controller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"

	"github.com/warren-mesh/warren/ca"
)

// ErrCASecretIncomplete is returned for a CA Secret holding some of a CA's
// keys but neither complete layout: it is never overwritten, since the
// missing half may be on its way from an operator, and a CA cannot be
// loaded from it either.
var ErrCASecretIncomplete = errors.New("CA secret holds an incomplete CA")

// writeAttempts bounds EnsureCASecret and PublishRoot against a writer that
// keeps changing the object: a conflict is normally settled by one re-read.
const writeAttempts = 5

// RootConfigMapKey is the key of the trust bundle in the roots ConfigMap,
// the one of Istio's istio-ca-root-cert ConfigMap.
const RootConfigMapKey = "root-cert.pem"

var (
	ownLayout     = []string{ca.RootCertFile, ca.RootKeyFile}
	pluggedLayout = []string{ca.PluggedCertFile, ca.PluggedKeyFile, ca.PluggedRootFile, ca.PluggedChainFile}
)

// caPopulated reports whether data holds a complete CA in either of the
// layouts ca.New reads: Warren's root (root.pem, root-key.pem) or Istio's
// plugged-in CA (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
// Keys outside both layouts are ignored; some but not all keys of a layout
// is ErrCASecretIncomplete.
func caPopulated(data map[string][]byte) (bool, error) {
	have := func(names []string) (all bool, some []string) {
		for _, n := range names {
			if len(data[n]) > 0 {
				some = append(some, n)
			}
		}
		return len(some) == len(names), some
	}
	ownAll, ownSome := have(ownLayout)
	plugAll, plugSome := have(pluggedLayout)
	switch {
	case ownAll || plugAll:
		return true, nil
	case len(ownSome)+len(plugSome) == 0:
		return false, nil
	}
	return false, fmt.Errorf("%w: has %s; want all of %s or all of %s", ErrCASecretIncomplete,
		strings.Join(append(ownSome, plugSome...), ", "), strings.Join(ownLayout, ", "), strings.Join(pluggedLayout, ", "))
}

// EnsureCASecret makes sure the Secret namespace/name holds a CA, for the
// leader to call before any replica starts its CA. If the Secret already
// holds one (either layout) nothing is written. Otherwise generate is
// called (once) and its data added to the Secret: an Update carrying the
// resourceVersion read, so that of two writers exactly one succeeds and
// the other, on conflict, re-reads and finds the CA. A missing Secret
// (normally created empty by the Helm chart) is created. A populated or
// incomplete Secret is never overwritten. Errors wrap the API error and
// may be retried, except ErrCASecretIncomplete, which needs an operator.
func EnsureCASecret(ctx context.Context, kube kubernetes.Interface, namespace, name string, generate func() (map[string][]byte, error)) error {
	secrets := kube.CoreV1().Secrets(namespace)
	var generated map[string][]byte
	gen := func() (map[string][]byte, error) {
		if generated != nil {
			return generated, nil
		}
		data, err := generate()
		if err != nil {
			return nil, fmt.Errorf("generating CA for secret %s/%s: %w", namespace, name, err)
		}
		if ok, err := caPopulated(data); !ok || err != nil {
			return nil, fmt.Errorf("generated CA for secret %s/%s has keys %v: want a complete layout", namespace, name, slices.Sorted(maps.Keys(data)))
		}
		generated = data
		return data, nil
	}
	for range writeAttempts {
		s, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			data, err := gen()
			if err != nil {
				return err
			}
			_, err = secrets.Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
				Type:       corev1.SecretTypeOpaque,
				Data:       data,
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue // another replica won; read what it wrote
			}
			if err != nil {
				return fmt.Errorf("creating CA secret %s/%s: %w", namespace, name, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading CA secret %s/%s: %w", namespace, name, err)
		}
		populated, err := caPopulated(s.Data)
		if err != nil {
			return fmt.Errorf("CA secret %s/%s: %w", namespace, name, err)
		}
		if populated {
			return nil
		}
		data, err := gen()
		if err != nil {
			return err
		}
		upd := s.DeepCopy()
		if upd.Data == nil {
			upd.Data = make(map[string][]byte, len(data))
		}
		maps.Copy(upd.Data, data)
		_, err = secrets.Update(ctx, upd, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue // written meanwhile; re-read
		}
		if err != nil {
			return fmt.Errorf("writing CA secret %s/%s: %w", namespace, name, err)
		}
		return nil
	}
	return fmt.Errorf("writing CA secret %s/%s: still conflicting after %d attempts", namespace, name, writeAttempts)
}

// WaitCASecret waits until the Secret namespace/name holds a CA (see
// EnsureCASecret) and returns its data, for every replica before it starts
// its CA. It watches rather than polls. It returns early with an error
// when ctx is done or the Secret is found incomplete
// (ErrCASecretIncomplete).
func WaitCASecret(ctx context.Context, kube kubernetes.Interface, namespace, name string) (map[string][]byte, error) {
	secrets := kube.CoreV1().Secrets(namespace)
	byName := fields.OneTermEqualSelector("metadata.name", name).String()
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = byName
			return secrets.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = byName
			return secrets.Watch(ctx, o)
		},
	}
	var data map[string][]byte
	_, err := watchtools.UntilWithSync(ctx, lw, &corev1.Secret{}, nil, func(ev watch.Event) (bool, error) {
		s, ok := ev.Object.(*corev1.Secret)
		if !ok || ev.Type == watch.Deleted {
			return false, nil
		}
		populated, err := caPopulated(s.Data)
		if err != nil {
			return false, err
		}
		if populated {
			data = maps.Clone(s.Data)
		}
		return populated, nil
	})
	if err != nil {
		return nil, fmt.Errorf("waiting for CA secret %s/%s: %w", namespace, name, err)
	}
	return data, nil
}

// PublishRoot writes rootsPEM as the trust bundle (key root-cert.pem) of
// the ConfigMap namespace/configMapName that agents read, for the leader
// to call. Nothing is written when the ConfigMap already holds exactly
// these roots; a missing ConfigMap (normally created by the Helm chart) is
// created; other keys are kept. Conflicts are retried; other errors wrap
// the API error and may be retried.
func PublishRoot(ctx context.Context, kube kubernetes.Interface, namespace, configMapName string, rootsPEM []byte) error {
	cms := kube.CoreV1().ConfigMaps(namespace)
	want := string(rootsPEM)
	for range writeAttempts {
		cm, err := cms.Get(ctx, configMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, err = cms.Create(ctx, &corev1.ConfigMap{
				ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: configMapName},
				Data:       map[string]string{RootConfigMapKey: want},
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			if err != nil {
				return fmt.Errorf("creating roots ConfigMap %s/%s: %w", namespace, configMapName, err)
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("reading roots ConfigMap %s/%s: %w", namespace, configMapName, err)
		}
		if cur, ok := cm.Data[RootConfigMapKey]; ok && cur == want {
			return nil
		}
		upd := cm.DeepCopy()
		if upd.Data == nil {
			upd.Data = make(map[string]string, 1)
		}
		upd.Data[RootConfigMapKey] = want
		_, err = cms.Update(ctx, upd, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("writing roots ConfigMap %s/%s: %w", namespace, configMapName, err)
		}
		return nil
	}
	return fmt.Errorf("writing roots ConfigMap %s/%s: still conflicting after %d attempts", namespace, configMapName, writeAttempts)
}
