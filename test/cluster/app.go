package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/warren-mesh/warren/deploy/image"
)

// The test app (test/cluster/testapp) and how to reach it.
const (
	// AppRef is the reference TestAppImage tags the test app with.
	AppRef = "warren.test/testapp:1"
	// AppHTTPPort is the test app's HTTP port (GET /, /fetch, /tcp).
	AppHTTPPort = 8080
	// AppEchoPort is the test app's TCP echo port.
	AppEchoPort = 9000
	// appPackage is built by go build, from this package's directory.
	appPackage = "github.com/warren-mesh/warren/test/cluster/testapp"
)

// AppInfo is the test app's answer to GET /.
type AppInfo struct {
	Pod   string `json:"pod"`
	PodIP string `json:"podIP"`
	Node  string `json:"node"`
	// Peer is the remote address of the request as the app's pod saw it.
	Peer string `json:"peer"`
}

// FetchResult is the test app's answer to /fetch and /tcp: what happened
// when the pod connected to Target.
type FetchResult struct {
	Target string `json:"target"`
	// Local is the pod's side of the connection it made.
	Local string `json:"local"`
	// Status and Body are the upstream HTTP answer (/fetch), App the body
	// decoded when the upstream was a test app.
	Status int      `json:"status"`
	Body   string   `json:"body"`
	App    *AppInfo `json:"app"`
	// Echo is what came back from an echo server (/tcp).
	Echo string `json:"echo"`
	// Error is why the pod's connection failed; empty on success.
	Error string `json:"error"`
}

// TestAppImage builds the test app (a static binary) and writes its image,
// tagged AppRef with entrypoint "/testapp serve", to dir/testapp.tar.
// Load it with ImportImage; AppDeployment uses it.
func TestAppImage(ctx context.Context, dir string) (tarPath, ref string, err error) {
	bin := filepath.Join(dir, "testapp")
	if err := buildTestApp(ctx, bin); err != nil {
		return "", "", err
	}
	tarPath = filepath.Join(dir, "testapp.tar")
	if err := writeAppImage(tarPath, AppRef, bin, "serve"); err != nil {
		return "", "", err
	}
	return tarPath, AppRef, nil
}

// buildTestApp builds the test app to out: static (CGO off), so the image
// needs no libc.
func buildTestApp(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, appPackage)
	// Any directory inside the module resolves the package; this file's
	// directory is one, unless the test binary was built with -trimpath.
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		cmd.Dir = filepath.Dir(file)
	}
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building the test app: %w: %s", err, tail(string(b)))
	}
	return nil
}

// writeAppImage writes an image holding only the test app as /testapp,
// running "/testapp mode".
func writeAppImage(tarPath, ref, bin, mode string) error {
	return image.Write(tarPath, image.Spec{
		Ref:        ref,
		Files:      []image.File{{Path: "/testapp", Source: bin}},
		Entrypoint: []string{"/testapp", mode},
		User:       "0",
	})
}

// AppDeployment is a Deployment of the test app in namespace ns with pods
// labelled app=name, spread over the nodes one by one (a replica that
// cannot be placed without doubling up stays Pending). The pods know their
// name, IP and node, are Ready once serving, and stop within a second.
func AppDeployment(ns, name, ref string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	grace := int64(1)
	field := func(path string) *corev1.EnvVarSource {
		return &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: path}}
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew:           1,
						TopologyKey:       corev1.LabelHostname,
						WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name:            "app",
						Image:           ref,
						ImagePullPolicy: corev1.PullNever,
						Env: []corev1.EnvVar{
							{Name: "POD_NAME", ValueFrom: field("metadata.name")},
							{Name: "POD_IP", ValueFrom: field("status.podIP")},
							{Name: "NODE_NAME", ValueFrom: field("spec.nodeName")},
						},
						Ports: []corev1.ContainerPort{
							{Name: "http", ContainerPort: AppHTTPPort},
							{Name: "echo", ContainerPort: AppEchoPort},
						},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
								Path: "/healthz", Port: intstr.FromInt32(AppHTTPPort),
							}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
}

// Fetch asks the test app at podIP to GET http://target/ from inside its
// pod. The error is for failing to reach the app; the pod's own failure to
// reach target is FetchResult.Error.
func (c *Cluster) Fetch(ctx context.Context, podIP, target string) (FetchResult, error) {
	return c.askApp(ctx, podIP, "/fetch?target="+url.QueryEscape(target))
}

// Echo asks the test app at podIP to send data to the TCP echo server at
// target and read it back (FetchResult.Echo).
func (c *Cluster) Echo(ctx context.Context, podIP, target, data string) (FetchResult, error) {
	return c.askApp(ctx, podIP, "/tcp?target="+url.QueryEscape(target)+"&data="+url.QueryEscape(data))
}

func (c *Cluster) askApp(ctx context.Context, podIP, pathQuery string) (FetchResult, error) {
	u := "http://" + podIP + ":" + strconv.Itoa(AppHTTPPort) + pathQuery
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return FetchResult{}, err
	}
	resp, err := c.HTTPClient(0).Do(req)
	if err != nil {
		return FetchResult{}, fmt.Errorf("asking the test app: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return FetchResult{}, fmt.Errorf("asking the test app: %w", err)
	}
	var res FetchResult
	if err := json.Unmarshal(body, &res); err != nil {
		return FetchResult{}, fmt.Errorf("asking the test app: %s %s: %w", resp.Status, body, err)
	}
	return res, nil
}
