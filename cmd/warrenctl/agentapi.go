package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/warren-mesh/warren/admin"
	"github.com/warren-mesh/warren/netns"
)

// agentAPI is where warrenctl reads an agent: its admin address, reached
// from the current network namespace or another one, or a saved dump.
type agentAPI struct {
	addr    string
	file    string
	netns   string
	timeout time.Duration
}

func (a *agentAPI) register(fs *flag.FlagSet, withFile bool) {
	fs.StringVar(&a.addr, "admin", "127.0.0.1:15000", "the agent's admin address")
	fs.StringVar(&a.netns, "netns", "", "network namespace to reach the agent from (path, e.g. /run/netns/node1)")
	fs.DurationVar(&a.timeout, "timeout", 10*time.Second, "how long to wait for the agent")
	if withFile {
		fs.StringVar(&a.file, "file", "", "read a saved /config_dump instead of asking an agent")
	}
}

// do sends one request to the agent and returns the body of a 200 answer.
func (a *agentAPI) do(method, path string, query url.Values) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	tr := &http.Transport{DisableKeepAlives: true}
	if a.netns != "" {
		ns, err := netns.Open(a.netns)
		if err != nil {
			return nil, fmt.Errorf("opening netns %s: %w", a.netns, err)
		}
		defer ns.Close()
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, &net.Dialer{}, network, addr)
		}
	}
	u := url.URL{Scheme: "http", Host: a.addr, Path: path, RawQuery: query.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("building request for %s: %w", u.String(), err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the agent at %s (is it running? --admin, --netns): %w", a.addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s %s: %w", method, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(firstLine(string(body))))
	}
	return body, nil
}

// dump reads the config dump from the file or the agent.
func (a *agentAPI) dump() (*admin.Dump, error) {
	var raw []byte
	var err error
	from := a.file
	if a.file != "" {
		raw, err = os.ReadFile(a.file)
	} else {
		from = "http://" + a.addr + "/config_dump"
		raw, err = a.do(http.MethodGet, "/config_dump", nil)
	}
	if err != nil {
		return nil, err
	}
	var d admin.Dump
	if err := json.Unmarshal(raw, &d); err != nil {
		return nil, fmt.Errorf("decoding config dump from %s: %w", from, err)
	}
	return &d, nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// runInspect prints one kind of table from the agent's config dump.
func runInspect(kind string, args []string, out io.Writer) error {
	fs := flag.NewFlagSet(kind, flag.ContinueOnError)
	var api agentAPI
	api.register(fs, true)
	ns := fs.String("n", "", "only this namespace")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := atMost(kind, pos, 0); err != nil {
		return err
	}
	d, err := api.dump()
	if err != nil {
		return err
	}
	return printTables(out, kind, d, filter{namespace: *ns})
}

// runLogLevel shows the agent's log levels, or changes them with SPEC.
func runLogLevel(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("log-level", flag.ContinueOnError)
	var api agentAPI
	api.register(fs, false)
	reset := fs.Bool("reset", false, "go back to the levels the agent started with (before applying SPEC, if any)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if err := atMost("log-level", pos, 1); err != nil {
		return err
	}
	q := url.Values{}
	if len(pos) == 1 {
		q.Set("level", pos[0])
	}
	if *reset {
		q.Set("reset", "")
	}
	body, err := api.do(http.MethodPost, "/logging", q)
	if err != nil {
		return err
	}
	_, err = out.Write(body)
	return err
}
