package controller

import (
	"context"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Lease timings: client-go's and kube-controller-manager's defaults. A
// leader that dies without releasing is replaced within leaseDuration plus
// a retry; one that stops cleanly releases the Lease and is replaced within
// a retry.
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// RunLeaderElection campaigns for the coordination.k8s.io Lease
// namespace/leaseName as identity until ctx is done, and keeps campaigning
// after losing it. While leading, onLead runs with a context cancelled
// when leadership ends; a new term waits for the previous onLead to
// return. onChange (may be nil) hears every transition, true on gaining
// and false on losing. On cancellation a held Lease is released so that
// another replica takes over at once.
func RunLeaderElection(ctx context.Context, kube kubernetes.Interface, namespace, leaseName, identity string,
	onLead func(ctx context.Context), onChange func(isLeader bool), log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "leader-election", "lease", namespace+"/"+leaseName, "identity", identity)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: leaseName},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	for ctx.Err() == nil {
		runTerm(ctx, lock, leaseName, identity, onLead, onChange, log)
	}
}

// runTerm campaigns once: until leadership is won and then lost, or ctx is
// done.
func runTerm(ctx context.Context, lock resourcelock.Interface, leaseName, identity string,
	onLead func(ctx context.Context), onChange func(isLeader bool), log *slog.Logger) {
	// LeaderElector.Run starts OnStartedLeading in a goroutine that may be
	// scheduled only after Run has returned; such a late start must not
	// announce a leadership already over: finished and led, under mu,
	// settle which happened.
	var (
		mu       sync.Mutex
		finished bool
		led      bool
		wg       sync.WaitGroup
	)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		LeaseDuration:   leaseDuration,
		RenewDeadline:   renewDeadline,
		RetryPeriod:     retryPeriod,
		ReleaseOnCancel: true,
		Name:            leaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leadCtx context.Context) {
				mu.Lock()
				if finished {
					mu.Unlock()
					return
				}
				led = true
				wg.Add(1)
				mu.Unlock()
				defer wg.Done()
				log.Info("became leader")
				if onChange != nil {
					onChange(true)
				}
				if onLead != nil {
					onLead(leadCtx)
				}
			},
			// Called whenever Run returns, led or not; the transition is
			// reported below instead.
			OnStoppedLeading: func() {},
			OnNewLeader: func(id string) {
				if id != identity {
					log.Info("leader elected", "leader", id)
				}
			},
		},
	})
	if err != nil {
		// Only an invalid config fails, and the config is constant:
		// retrying cannot help, so wait for the end.
		log.Error("leader election config", "err", err)
		<-ctx.Done()
		return
	}
	le.Run(ctx)
	mu.Lock()
	finished = true
	wasLeader := led
	mu.Unlock()
	wg.Wait()
	if wasLeader {
		log.Info("stopped leading")
		if onChange != nil {
			onChange(false)
		}
	}
}
