package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Default per-call timeouts.
const (
	// DefaultTimeout bounds an ordinary API call.
	DefaultTimeout = 10 * time.Second
	// DefaultSnapshotTimeout bounds snapshot create and load, which copy
	// or map all guest memory while every other call waits.
	DefaultSnapshotTimeout = 5 * time.Minute
)

// maxErrorBody bounds how much of an error response the client reads.
const maxErrorBody = 64 << 10

// Error is a non-2xx answer from Firecracker.
type Error struct {
	Method     string
	Path       string
	StatusCode int
	// Message is Firecracker's fault_message (API errors) or error (HTTP
	// errors such as an oversized body), or the raw body when neither.
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("firecracker %s %s: status %d: %s", e.Method, e.Path, e.StatusCode, e.Message)
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout sets the timeout of ordinary calls (default 10 s).
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithSnapshotTimeout sets the timeout of snapshot create and load
// (default 5 min).
func WithSnapshotTimeout(d time.Duration) Option {
	return func(c *Client) { c.snapshotTimeout = d }
}

// WithTransport replaces the Unix-socket transport, for tests that record
// requests.
func WithTransport(rt http.RoundTripper) Option { return func(c *Client) { c.transport = rt } }

// WithVersion sets the binary's version so the client does not ask for it.
func WithVersion(v Version) Option { return func(c *Client) { c.version = v } }

// Client talks to one Firecracker process. It is safe for concurrent use;
// Firecracker itself serialises the calls.
type Client struct {
	socketPath      string
	timeout         time.Duration
	snapshotTimeout time.Duration
	transport       http.RoundTripper
	http            *http.Client

	mu      sync.Mutex
	version Version
}

// New returns a client for the API socket at socketPath. It does not
// connect until the first call.
func New(socketPath string, opts ...Option) *Client {
	c := &Client{socketPath: socketPath, timeout: DefaultTimeout, snapshotTimeout: DefaultSnapshotTimeout}
	for _, o := range opts {
		o(c)
	}
	if c.transport == nil {
		c.transport = &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", c.socketPath)
			},
			DisableCompression: true,
			// micro_http serves at most 10 connections; one idle
			// connection is enough because calls are serialised anyway.
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     30 * time.Second,
		}
	}
	c.http = &http.Client{Transport: c.transport}
	return c
}

// Close releases idle connections.
func (c *Client) Close() {
	c.http.CloseIdleConnections()
}

// resourceID is what Firecracker accepts in /drives/{id} and
// /network-interfaces/{id}.
var resourceID = regexp.MustCompile(`^[A-Za-z0-9_]+$`)

func checkResourceID(kind, id string) error {
	if !resourceID.MatchString(id) {
		return fmt.Errorf("invalid %s id %q: firecracker accepts only letters, digits and '_'", kind, id)
	}
	return nil
}

// do sends one request. A nil body sends no body; out, when not nil,
// receives the JSON response.
func (c *Client) do(ctx context.Context, timeout time.Duration, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var payload []byte
	if body != nil {
		var err error
		if payload, err = json.Marshal(body); err != nil {
			return fmt.Errorf("encode firecracker %s %s body: %w", method, path, err)
		}
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("build firecracker %s %s: %w", method, path, err)
	}
	// A bytes.Reader gives a known length; setting it explicitly keeps
	// net/http from falling back to chunked encoding, which Firecracker
	// does not read.
	req.ContentLength = int64(len(payload))
	if payload == nil {
		req.Body = http.NoBody
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")

	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(method, path, resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode firecracker %s %s response: %w", method, path, err)
	}
	return nil
}

func decodeError(method, path string, resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var shape struct {
		FaultMessage *string `json:"fault_message"`
		Error        *string `json:"error"`
	}
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &shape) == nil {
		switch {
		case shape.FaultMessage != nil:
			msg = *shape.FaultMessage
		case shape.Error != nil:
			msg = *shape.Error
		}
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return &Error{Method: method, Path: path, StatusCode: resp.StatusCode, Message: msg}
}

// IsStatus reports whether err is a Firecracker answer with that status.
func IsStatus(err error, status int) bool {
	var e *Error
	return errors.As(err, &e) && e.StatusCode == status
}
