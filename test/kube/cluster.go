package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	// Issuer is the service-account token issuer of a test cluster, the
	// in-cluster default of real clusters.
	Issuer = "https://kubernetes.default.svc.cluster.local"
	// startTimeout bounds etcd + apiserver start; they are ready in 2.5-4 s
	// on two cores, the margin is for loaded CI runners.
	startTimeout = 2 * time.Minute
	// startAttempts: ports are picked by binding :0 and closing, so another
	// process may take one before etcd or the apiserver binds it; such a
	// start is retried with fresh ports.
	startAttempts = 3
)

// Cluster is a running etcd + kube-apiserver pair. There is no controller
// manager, scheduler or kubelet: namespaces never finish deleting, no
// "default" ServiceAccount is created, and pods stay Pending unless a test
// writes their status.
type Cluster struct {
	// ServiceAccountKey is the key the apiserver signs service-account
	// tokens with (ES256); tests use it to forge tokens the apiserver
	// accepts, e.g. expired ones (TokenRequest refuses lifetimes under
	// 10 minutes). See SignToken.
	ServiceAccountKey *ecdsa.PrivateKey

	log       *slog.Logger
	dir       string
	restCfg   *rest.Config
	client    kubernetes.Interface
	etcd      *process
	apiserver *process
	stopOnce  sync.Once
	stopErr   error
}

// Start starts etcd and kube-apiserver from bins and waits until the
// apiserver is ready. Side effects, in order: creates a temp dir with PKI
// (CA, serving certificate for 127.0.0.1, admin client certificate,
// service-account signing key) and etcd's data, picks free loopback ports,
// starts etcd and kube-apiserver in their own process groups (killed also
// when the calling process dies, on Linux), polls /readyz. On error nothing
// is left running or on disk; Start may be retried. Call Stop when done.
func Start(ctx context.Context, bins Binaries, log *slog.Logger) (*Cluster, error) {
	log = log.With("component", "kube-cluster")
	dir, err := os.MkdirTemp("", "warren-kube-")
	if err != nil {
		return nil, fmt.Errorf("creating cluster dir: %w", err)
	}
	c := &Cluster{log: log, dir: dir}
	p, err := newPKI(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	c.ServiceAccountKey = p.saKey

	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	begin := time.Now()
	for attempt := 1; ; attempt++ {
		err = c.start(ctx, bins, p)
		if err == nil {
			break
		}
		c.kill()
		if !errors.Is(err, errPortTaken) || attempt == startAttempts {
			os.RemoveAll(dir)
			return nil, err
		}
		log.Info("port taken, retrying with others", "attempt", attempt, "err", err)
	}
	log.Info("kube-apiserver ready", "host", c.restCfg.Host, "duration", time.Since(begin).Round(time.Millisecond), "dir", dir)
	return c, nil
}

// errPortTaken marks a start that failed because a picked port was bound by
// someone else in the meantime.
var errPortTaken = errors.New("address already in use")

func (c *Cluster) start(ctx context.Context, bins Binaries, p *pki) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	dataDir := filepath.Join(c.dir, "etcd")
	if err := os.RemoveAll(dataDir); err != nil {
		return fmt.Errorf("clearing etcd data: %w", err)
	}
	c.etcd, err = startProcess(bins.Etcd, filepath.Join(c.dir, "etcd.log"),
		"--name=warren-test", "--data-dir="+dataDir,
		"--listen-client-urls="+clientURL, "--advertise-client-urls="+clientURL,
		// The peer port must be set too: etcd's default 2380 would collide
		// between parallel test packages.
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=warren-test="+peerURL,
		// Throw-away data: durability buys nothing and fsync costs
		// seconds on slow disks.
		"--unsafe-no-fsync", "--log-level=warn")
	if err != nil {
		return err
	}
	if err := waitFor(ctx, c.etcd, "etcd", func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, clientURL+"/health", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}); err != nil {
		return err
	}

	host := "https://127.0.0.1:" + strconv.Itoa(ports[2])
	c.apiserver, err = startProcess(bins.APIServer, filepath.Join(c.dir, "kube-apiserver.log"),
		"--etcd-servers="+clientURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[2]),
		// A loopback advertise address is refused by the default endpoint
		// reconciler; nothing here needs the kubernetes Service endpoints.
		"--endpoint-reconciler-type=none",
		"--cert-dir="+c.dir,
		"--tls-cert-file="+p.servingCert, "--tls-private-key-file="+p.servingKey,
		"--client-ca-file="+p.caFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer="+Issuer,
		// Tokens with other audiences (istio-ca) are requested and
		// reviewed with explicit audiences; this is the default for
		// requests that name none.
		"--api-audiences="+Issuer,
		"--service-account-key-file="+p.saPubFile,
		"--service-account-signing-key-file="+p.saKeyFile,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--profiling=false")
	if err != nil {
		return err
	}
	c.restCfg = &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   p.caPEM,
			CertData: p.adminCert,
			KeyData:  p.adminKey,
		},
		// client-go's default 5 QPS would throttle setup-heavy tests.
		QPS:   200,
		Burst: 400,
	}
	c.client, err = kubernetes.NewForConfig(c.restCfg)
	if err != nil {
		return fmt.Errorf("creating admin client: %w", err)
	}
	return waitFor(ctx, c.apiserver, "kube-apiserver", func(ctx context.Context) error {
		_, err := c.client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	})
}

// Client returns a clientset authenticated as cluster admin.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// RESTConfig returns a copy of the admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.restCfg) }

// Stop kills both processes (their whole process groups) and removes the
// cluster's dir. Killing rather than a graceful SIGTERM saves the ~4.5 s the
// apiserver takes to shut down; the data is thrown away anyway. Stop is
// idempotent.
func (c *Cluster) Stop() error {
	c.stopOnce.Do(func() {
		c.kill()
		if err := os.RemoveAll(c.dir); err != nil {
			c.stopErr = fmt.Errorf("removing cluster dir: %w", err)
		}
	})
	return c.stopErr
}

func (c *Cluster) kill() {
	for _, p := range []*process{c.apiserver, c.etcd} {
		if p != nil {
			p.kill()
		}
	}
}

// SignToken signs claims as a service-account token the apiserver accepts:
// ES256 with the cluster's key and the key id the apiserver would use.
// Callers supply all claims (iss, aud, sub, exp, ... ); copying them from a
// real token and changing one is the easy way to get a valid token that is
// wrong in exactly one respect.
func (c *Cluster) SignToken(claims map[string]any) (string, error) {
	kid, err := keyID(c.ServiceAccountKey.Public())
	if err != nil {
		return "", fmt.Errorf("computing key id: %w", err)
	}
	header, err := json.Marshal(map[string]string{"alg": "ES256", "kid": kid})
	if err != nil {
		return "", err
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("encoding claims: %w", err)
	}
	input := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(payload)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, c.ServiceAccountKey, sum[:])
	if err != nil {
		return "", fmt.Errorf("signing token: %w", err)
	}
	// JWS ES256 signatures are r || s, each left-padded to 32 bytes
	// (RFC 7518 section 3.4), not ASN.1.
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// ResignToken decodes the claims of token (which must come from this
// cluster or SignToken; its signature is not checked), lets change edit
// them, and signs the result with SignToken.
func (c *Cluster) ResignToken(token string, change func(claims map[string]any)) (string, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return "", fmt.Errorf("token has %d parts, want 3", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", fmt.Errorf("decoding token claims: %w", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", fmt.Errorf("decoding token claims: %w", err)
	}
	change(claims)
	return c.SignToken(claims)
}

// freePorts returns n distinct loopback ports that were free a moment ago;
// all n are held open together so they differ.
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("picking a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitFor polls check every 100 ms until it succeeds, the process exits or
// ctx is done.
func waitFor(ctx context.Context, p *process, name string, check func(context.Context) error) error {
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			logs := p.logTail()
			err := fmt.Errorf("%s exited (%v): %s", name, p.err, logs)
			if strings.Contains(logs, "address already in use") {
				err = fmt.Errorf("%w: %w", errPortTaken, err)
			}
			return err
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (last check: %v): %s", name, ctx.Err(), last, p.logTail())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// process is a child process in its own process group.
type process struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // valid after done
}

// startProcess starts bin with args, output to logPath. The child runs in
// its own process group (so kill reaches anything it forks); on Linux it
// also gets SIGKILL when the thread that started it exits, and that thread
// is held by a goroutine for the child's lifetime, so a test binary that
// dies without Stop leaves no apiserver behind.
func startProcess(bin, logPath string, args ...string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("creating log %s: %w", logPath, err)
	}
	p := &process{logPath: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = sysProcAttr()
	started := make(chan error, 1)
	go func() {
		defer close(p.done)
		defer f.Close()
		unlock := lockThread()
		// Never unlocked while the child lives: on Linux the child's
		// parent-death signal follows this OS thread.
		err := p.cmd.Start()
		started <- err
		if err != nil {
			unlock()
			return
		}
		p.err = p.cmd.Wait()
		unlock()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	return p, nil
}

// kill SIGKILLs the process group and waits for the process to be reaped.
func (p *process) kill() {
	if p.cmd.Process != nil {
		killGroup(p.cmd.Process.Pid)
	}
	<-p.done
}

func (p *process) logTail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return tail(b)
}
