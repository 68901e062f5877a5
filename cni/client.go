package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
)

// ErrAgentUnavailable means nothing listens on the agent socket: the file is
// missing or refuses connections, so the agent is not running on this node.
var ErrAgentUnavailable = errors.New("warren agent is not running")

// AgentError is an answer from the agent other than success.
type AgentError struct {
	Status  int
	Message string
}

func (e *AgentError) Error() string {
	return fmt.Sprintf("warren agent refused the pod (HTTP %d): %s", e.Status, e.Message)
}

// client speaks the agent protocol. Each call dials afresh: the plugin makes
// one or two calls per process.
type client struct {
	socket string
	http   *http.Client
}

func newClient(socket string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}
	return &client{socket: socket, http: &http.Client{Transport: tr}}
}

// add sends req; ctx bounds the whole exchange, capture included.
func (c *client) add(ctx context.Context, req AddRequest) (captured bool, err error) {
	var rep addReply
	if err := c.post(ctx, pathAdd, req, &rep); err != nil {
		return false, err
	}
	return rep.Captured, nil
}

func (c *client) del(ctx context.Context, req DelRequest) error {
	return c.post(ctx, pathDel, req, nil)
}

// post sends one request. Errors: ErrAgentUnavailable when the socket is
// missing or refuses, *AgentError when the agent answered with an error,
// anything else (timeouts, broken replies) wrapped with the socket's path.
func (c *client) post(ctx context.Context, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encoding %s request: %w", path, err)
	}
	// The host is ignored: the transport always dials the socket.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://warren-agent"+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building %s request: %w", path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" && (errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED)) {
			return fmt.Errorf("%w: %s: %v", ErrAgentUnavailable, c.socket, op.Err)
		}
		return fmt.Errorf("calling warren agent at %s%s: %w", c.socket, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("reading warren agent's answer to %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorReply
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = string(bytes.TrimSpace(data))
		}
		return &AgentError{Status: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decoding warren agent's answer to %s: %w", path, err)
	}
	return nil
}
