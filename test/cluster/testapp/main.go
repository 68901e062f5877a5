// Command testapp is the workload of Warren's real-cluster tests: an HTTP
// server that reports who it is and who called it, a TCP echo server, an
// HTTP endpoint that makes a connection from inside the pod on the test's
// behalf, a probe loop, and a pause mode for pod sandboxes. It is a static
// binary, so its image needs no base image.
//
//	testapp serve [-http :8080] [-echo :9000]   # pod identity from POD_NAME, POD_IP, NODE_NAME
//	testapp probe -target ip:port [-interval 1s] [-count 0]
//	testapp pause
//
// HTTP API of serve (JSON answers; the types are cluster.AppInfo and
// cluster.FetchResult):
//
//	GET /                                 who answered, and the peer address it saw
//	GET /fetch?target=ip:port[&path=/]    HTTP GET http://target/path from inside the pod
//	GET /tcp?target=ip:port&data=text     send text to a TCP echo server, read it back
//	GET /healthz                          200 ok
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testapp serve|probe|pause [flags]")
		os.Exit(2)
	}
	var err error
	switch mode, args := os.Args[1], os.Args[2:]; mode {
	case "serve":
		err = serve(args)
	case "probe":
		err = probe(args)
	case "pause":
		pause()
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "testapp:", err)
		os.Exit(1)
	}
}

// info is the answer to GET /. Field names match cluster.AppInfo.
type info struct {
	Pod   string `json:"pod"`
	PodIP string `json:"podIP"`
	Node  string `json:"node"`
	// Peer is the remote address of the request's connection, as this
	// pod's kernel saw it: the test for "source IP preserved".
	Peer string `json:"peer"`
}

// result is the answer to /fetch and /tcp. Field names match
// cluster.FetchResult.
type result struct {
	Target string `json:"target"`
	// Local is the address the pod's connection had on its side.
	Local  string `json:"local,omitempty"`
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`
	// App is Body decoded, when the target was another testapp.
	App   *info  `json:"app,omitempty"`
	Echo  string `json:"echo,omitempty"`
	Error string `json:"error,omitempty"`
}

// self is this pod's identity, from the downward API.
func self() info {
	return info{Pod: os.Getenv("POD_NAME"), PodIP: os.Getenv("POD_IP"), Node: os.Getenv("NODE_NAME")}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	httpAddr := fs.String("http", ":8080", "HTTP listen address")
	echoAddr := fs.String("echo", ":9000", "TCP echo listen address (empty: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	hl, err := net.Listen("tcp", *httpAddr)
	if err != nil {
		return err
	}
	if *echoAddr != "" {
		el, err := net.Listen("tcp", *echoAddr)
		if err != nil {
			return err
		}
		go echo(el)
	}
	log.Printf("serving http on %s, echo on %q as %+v", *httpAddr, *echoAddr, self())
	srv := &http.Server{Handler: handler(self()), ReadHeaderTimeout: 10 * time.Second}
	return srv.Serve(hl)
}

// echo copies every connection's bytes back to it.
func echo(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			log.Printf("echo accept: %v", err)
			return
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// dialTimeout bounds each connection /fetch and /tcp make; a test waiting for
// policy to take effect polls, so a refused or dropped connection must come
// back quickly.
const dialTimeout = 5 * time.Second

func handler(me info) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		answer := me
		answer.Peer = r.RemoteAddr
		writeJSON(w, http.StatusOK, answer)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /fetch", func(w http.ResponseWriter, r *http.Request) {
		res := fetch(r.Context(), r.URL.Query().Get("target"), r.URL.Query().Get("path"))
		writeResult(w, res)
	})
	mux.HandleFunc("GET /tcp", func(w http.ResponseWriter, r *http.Request) {
		res := echoOnce(r.Context(), r.URL.Query().Get("target"), r.URL.Query().Get("data"))
		writeResult(w, res)
	})
	return mux
}

// writeResult answers 200 when the pod's own connection worked and 502 when
// it did not, so a test can tell "the pod could not reach the target" from
// "the test could not reach the pod".
func writeResult(w http.ResponseWriter, res result) {
	code := http.StatusOK
	if res.Error != "" {
		code = http.StatusBadGateway
	}
	writeJSON(w, code, res)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// fetch makes one HTTP GET to target on a fresh connection and records
// which local address that connection had.
func fetch(ctx context.Context, target, path string) result {
	res := result{Target: target}
	if target == "" {
		res.Error = "missing target"
		return res
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext:       (&net.Dialer{Timeout: dialTimeout}).DialContext,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 2 * dialTimeout}
	// GotConn runs on this goroutine, inside client.Do.
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GotConn: func(ci httptrace.GotConnInfo) { res.Local = ci.Conn.LocalAddr().String() },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+path, nil)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	resp, err := client.Do(req)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		res.Error = fmt.Sprintf("reading body: %v", err)
		return res
	}
	res.Status, res.Body = resp.StatusCode, string(body)
	var app info
	if json.Unmarshal(body, &app) == nil && app.Peer != "" {
		res.App = &app
	}
	return res
}

// echoOnce sends data to a TCP echo server and reads the same number of
// bytes back.
func echoOnce(ctx context.Context, target, data string) result {
	res := result{Target: target}
	if target == "" || data == "" {
		res.Error = "missing target or data"
		return res
	}
	c, err := (&net.Dialer{Timeout: dialTimeout}).DialContext(ctx, "tcp", target)
	if err != nil {
		res.Error = err.Error()
		return res
	}
	defer c.Close()
	res.Local = c.LocalAddr().String()
	c.SetDeadline(time.Now().Add(dialTimeout))
	if _, err := io.WriteString(c, data); err != nil {
		res.Error = fmt.Sprintf("writing: %v", err)
		return res
	}
	buf := make([]byte, len(data))
	if _, err := io.ReadFull(c, buf); err != nil {
		res.Error = fmt.Sprintf("reading echo: %v", err)
		return res
	}
	res.Echo = string(buf)
	return res
}

// probe fetches http://target/ every interval and prints one JSON result
// per attempt, for tests that read pod logs.
func probe(args []string) error {
	fs := flag.NewFlagSet("probe", flag.ContinueOnError)
	target := fs.String("target", "", "ip:port of a testapp serve")
	interval := fs.Duration("interval", time.Second, "time between attempts")
	count := fs.Int("count", 0, "attempts (0: forever)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *target == "" {
		return errors.New("probe: -target is required")
	}
	enc := json.NewEncoder(os.Stdout)
	for i := 0; *count == 0 || i < *count; i++ {
		if i > 0 {
			time.Sleep(*interval)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*dialTimeout)
		enc.Encode(fetch(ctx, *target, "/"))
		cancel()
	}
	return nil
}

// pause is a pod sandbox's process: it holds the pod's namespaces, reaps
// the zombies it inherits, and exits on SIGTERM or SIGINT. As PID 1 of its
// PID namespace it gets no default signal handling, hence the explicit
// handlers.
func pause() {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range ch {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
