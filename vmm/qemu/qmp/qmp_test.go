package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

const testGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, ` +
	`"package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}`

// fakeRequest is one command line the fake server received, with the
// descriptors that arrived with it.
type fakeRequest struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
	fds       []int
}

// fakeQMP is a QMP server on a Unix socket that sends the greeting, then
// passes each request to handle and writes the lines it returns.
type fakeQMP struct {
	t        *testing.T
	path     string
	greeting string
	handle   func(req fakeRequest) []string

	mu       sync.Mutex
	requests []fakeRequest
}

func startFakeQMP(t *testing.T, handle func(req fakeRequest) []string) *fakeQMP {
	t.Helper()
	f := &fakeQMP{
		t:        t,
		path:     filepath.Join(t.TempDir(), "qmp.sock"),
		greeting: testGreeting,
		handle:   handle,
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: f.path, Net: "unix"})
	if err != nil {
		t.Fatalf("listen on %s: %v", f.path, err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		conn, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer conn.Close()
		stop := context.AfterFunc(t.Context(), func() { conn.Close() })
		defer stop()
		f.serve(conn)
	}()
	return f
}

func (f *fakeQMP) serve(conn *net.UnixConn) {
	if f.greeting != "" {
		if _, err := conn.Write([]byte(f.greeting + "\r\n")); err != nil {
			return
		}
	}
	var pending []byte
	var pendingFDs []int
	buf := make([]byte, 4096)
	oob := make([]byte, syscall.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		pendingFDs = append(pendingFDs, parseRights(f.t, oob[:oobn])...)
		pending = append(pending, buf[:n]...)
		for {
			line, rest, ok := bytes.Cut(pending, []byte("\n"))
			if !ok {
				break
			}
			pending = rest
			var req fakeRequest
			if err := json.Unmarshal(line, &req); err != nil {
				f.t.Errorf("fake qmp: invalid request %q: %v", line, err)
				return
			}
			req.fds, pendingFDs = pendingFDs, nil
			f.mu.Lock()
			f.requests = append(f.requests, req)
			f.mu.Unlock()
			for _, out := range f.handle(req) {
				if _, err := conn.Write([]byte(out + "\r\n")); err != nil {
					return
				}
			}
		}
	}
}

func parseRights(t *testing.T, oob []byte) []int {
	if len(oob) == 0 {
		return nil
	}
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		t.Errorf("fake qmp: parse control message: %v", err)
		return nil
	}
	var fds []int
	for _, m := range msgs {
		rights, err := syscall.ParseUnixRights(&m)
		if err != nil {
			t.Errorf("fake qmp: parse rights: %v", err)
			continue
		}
		fds = append(fds, rights...)
	}
	return fds
}

func (f *fakeQMP) received() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.requests...)
}

// returnEmpty replies to every command with an empty return.
func returnEmpty(req fakeRequest) []string {
	return []string{`{"return": {}, "id": ` + string(req.ID) + `}`}
}

func dialFake(t *testing.T, f *fakeQMP, opts Options) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.path, opts)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestDialReadsGreetingAndNegotiates(t *testing.T) {
	f := startFakeQMP(t, returnEmpty)
	c := dialFake(t, f, Options{})

	want := Version{Major: 7, Minor: 2, Micro: 22, Package: "Debian 1:7.2+dfsg-7+deb12u18+b3"}
	if got := c.Version(); got != want {
		t.Errorf("Version() = %+v, want %+v", got, want)
	}
	if got := c.Version().String(); got != "7.2.22" {
		t.Errorf("Version().String() = %q, want %q", got, "7.2.22")
	}
	if got := c.Capabilities(); len(got) != 1 || got[0] != "oob" {
		t.Errorf("Capabilities() = %v, want [oob]", got)
	}
	reqs := f.received()
	if len(reqs) != 1 {
		t.Fatalf("server received %d requests, want 1", len(reqs))
	}
	if reqs[0].Execute != "qmp_capabilities" {
		t.Errorf("first request = %q, want qmp_capabilities", reqs[0].Execute)
	}
}

func TestVersionAtLeast(t *testing.T) {
	v := Version{Major: 7, Minor: 2, Micro: 22}
	tests := []struct {
		name         string
		major, minor int
		want         bool
	}{
		{"older major", 6, 9, true},
		{"same", 7, 2, true},
		{"newer minor", 7, 3, false},
		{"newer major", 8, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := v.AtLeast(tc.major, tc.minor); got != tc.want {
				t.Errorf("AtLeast(%d, %d) = %v, want %v", tc.major, tc.minor, got, tc.want)
			}
		})
	}
}

func TestExecuteReturnsResult(t *testing.T) {
	f := startFakeQMP(t, func(req fakeRequest) []string {
		if req.Execute == "query-status" {
			return []string{`{"return": {"status": "running", "running": true}, "id": ` + string(req.ID) + `}`}
		}
		return returnEmpty(req)
	})
	c := dialFake(t, f, Options{})

	ret, err := c.Execute(t.Context(), "query-status", nil)
	if err != nil {
		t.Fatalf("Execute(query-status): %v", err)
	}
	var status struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := json.Unmarshal(ret, &status); err != nil {
		t.Fatalf("decode return %s: %v", ret, err)
	}
	if status.Status != "running" || !status.Running {
		t.Errorf("got status %+v, want running", status)
	}
}

func TestExecuteSendsArguments(t *testing.T) {
	f := startFakeQMP(t, returnEmpty)
	c := dialFake(t, f, Options{})

	args := map[string]any{"max-bandwidth": 10000000000}
	if _, err := c.Execute(t.Context(), "migrate-set-parameters", args); err != nil {
		t.Fatalf("Execute: %v", err)
	}
	reqs := f.received()
	last := reqs[len(reqs)-1]
	if last.Execute != "migrate-set-parameters" {
		t.Fatalf("got command %q, want migrate-set-parameters", last.Execute)
	}
	if got, want := string(last.Arguments), `{"max-bandwidth":10000000000}`; got != want {
		t.Errorf("got arguments %s, want %s", got, want)
	}
}

func TestExecuteErrorClass(t *testing.T) {
	f := startFakeQMP(t, func(req fakeRequest) []string {
		if req.Execute == "no-such-command" {
			return []string{`{"error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"}, "id": ` +
				string(req.ID) + `}`}
		}
		return returnEmpty(req)
	})
	c := dialFake(t, f, Options{})

	_, err := c.Execute(t.Context(), "no-such-command", nil)
	var qerr *Error
	if !errors.As(err, &qerr) {
		t.Fatalf("got error %v (%T), want *Error", err, err)
	}
	if qerr.Class != "CommandNotFound" {
		t.Errorf("got class %q, want CommandNotFound", qerr.Class)
	}
	if qerr.Desc != "The command no-such-command has not been found" {
		t.Errorf("got desc %q", qerr.Desc)
	}
	if qerr.Command != "no-such-command" {
		t.Errorf("got command %q, want no-such-command", qerr.Command)
	}
}

func TestEventsInterleavedWithReplies(t *testing.T) {
	f := startFakeQMP(t, func(req fakeRequest) []string {
		if req.Execute != "stop" {
			return returnEmpty(req)
		}
		// QEMU may emit events before and after the reply.
		return []string{
			`{"timestamp": {"seconds": 1764840000, "microseconds": 250000}, "event": "STOP"}`,
			`{"return": {}, "id": ` + string(req.ID) + `}`,
			`{"timestamp": {"seconds": 1764840001, "microseconds": 0}, "event": "SHUTDOWN", ` +
				`"data": {"guest": false, "reason": "host-qmp-quit"}}`,
		}
	})
	events := make(chan Event, 4)
	c := dialFake(t, f, Options{OnEvent: func(ev Event) { events <- ev }})

	if _, err := c.Execute(t.Context(), "stop", nil); err != nil {
		t.Fatalf("Execute(stop): %v", err)
	}

	first := receiveEvent(t, events)
	if first.Name != "STOP" {
		t.Errorf("first event = %q, want STOP", first.Name)
	}
	if want := time.Unix(1764840000, 250000000); !first.Time.Equal(want) {
		t.Errorf("STOP time = %v, want %v", first.Time, want)
	}
	second := receiveEvent(t, events)
	if second.Name != "SHUTDOWN" {
		t.Errorf("second event = %q, want SHUTDOWN", second.Name)
	}
	var data struct {
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(second.Data, &data); err != nil || data.Reason != "host-qmp-quit" {
		t.Errorf("SHUTDOWN data = %s (%v), want reason host-qmp-quit", second.Data, err)
	}
}

func receiveEvent(t *testing.T, events <-chan Event) Event {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
		return Event{}
	}
}

func TestExecuteWithFilePassesDescriptor(t *testing.T) {
	received := make(chan int, 1)
	f := startFakeQMP(t, func(req fakeRequest) []string {
		if req.Execute == "getfd" {
			if len(req.fds) != 1 {
				return []string{`{"error": {"class": "GenericError", "desc": "No file descriptor supplied via SCM_RIGHTS"}, "id": ` +
					string(req.ID) + `}`}
			}
			received <- req.fds[0]
		}
		return returnEmpty(req)
	})
	c := dialFake(t, f, Options{})

	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	_, err = c.ExecuteWithFile(t.Context(), "getfd", map[string]string{"fdname": "migsave"}, w)
	w.Close()
	if err != nil {
		t.Fatalf("ExecuteWithFile(getfd): %v", err)
	}

	// Write through the descriptor the server received; the bytes must
	// come out of the pipe this test created.
	fd := <-received
	passed := os.NewFile(uintptr(fd), "passed")
	if _, err := passed.Write([]byte("through scm_rights")); err != nil {
		t.Fatalf("write to passed descriptor: %v", err)
	}
	passed.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "through scm_rights" {
		t.Errorf("read %q from pipe, want %q", got, "through scm_rights")
	}
}

func TestExecuteWithoutFileSendsNoDescriptor(t *testing.T) {
	f := startFakeQMP(t, returnEmpty)
	c := dialFake(t, f, Options{})

	if _, err := c.Execute(t.Context(), "cont", nil); err != nil {
		t.Fatalf("Execute(cont): %v", err)
	}
	for _, req := range f.received() {
		if len(req.fds) != 0 {
			t.Errorf("request %q carried %d descriptors, want 0", req.Execute, len(req.fds))
		}
	}
}

func TestExecuteFailsWhenServerCloses(t *testing.T) {
	f := startFakeQMP(t, func(req fakeRequest) []string {
		if req.Execute == "quit" {
			return nil // no reply; the fake then closes once the test ends
		}
		return returnEmpty(req)
	})
	c := dialFake(t, f, Options{})

	errc := make(chan error, 1)
	go func() {
		_, err := c.Execute(context.Background(), "quit", nil)
		errc <- err
	}()
	// Give the command time to reach the server, then drop the connection
	// from the client side as a dying QEMU would from its side.
	waitForRequest(t, f, "quit")
	c.conn.CloseRead()

	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("got %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Execute did not return after the connection ended")
	}
	select {
	case <-c.Done():
	default:
		t.Error("Done() not closed after the connection ended")
	}
	if _, err := c.Execute(t.Context(), "cont", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute after end: got %v, want ErrClosed", err)
	}
}

func waitForRequest(t *testing.T, f *fakeQMP, command string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, req := range f.received() {
			if req.Execute == command {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("server did not receive %q within 5s", command)
}

func TestExecuteHonoursContext(t *testing.T) {
	f := startFakeQMP(t, func(req fakeRequest) []string {
		if req.Execute == "migrate" {
			return nil
		}
		return returnEmpty(req)
	})
	c := dialFake(t, f, Options{})

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err := c.Execute(ctx, "migrate", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	// The client stays usable after an abandoned command.
	if _, err := c.Execute(t.Context(), "cont", nil); err != nil {
		t.Errorf("Execute after abandoned command: %v", err)
	}
}

func TestDialHandshakeErrors(t *testing.T) {
	tests := []struct {
		name     string
		greeting string
		handle   func(fakeRequest) []string
		wantErr  func(error) bool
	}{
		{
			name:     "no greeting",
			greeting: "",
			handle:   returnEmpty,
			wantErr:  func(err error) bool { return errors.Is(err, context.DeadlineExceeded) },
		},
		{
			name:     "not a greeting",
			greeting: `{"return": {}}`,
			handle:   returnEmpty,
			wantErr:  func(err error) bool { return err != nil },
		},
		{
			name:     "capabilities rejected",
			greeting: testGreeting,
			handle: func(req fakeRequest) []string {
				return []string{`{"error": {"class": "GenericError", "desc": "no"}, "id": ` + string(req.ID) + `}`}
			},
			wantErr: func(err error) bool {
				var qerr *Error
				return errors.As(err, &qerr) && qerr.Command == "qmp_capabilities"
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := startFakeQMP(t, tc.handle)
			f.greeting = tc.greeting
			ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
			defer cancel()
			c, err := Dial(ctx, f.path, Options{})
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded, want an error")
			}
			if !tc.wantErr(err) {
				t.Errorf("got error %v, not the expected kind", err)
			}
		})
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	f := startFakeQMP(t, returnEmpty)
	c := dialFake(t, f, Options{})

	if err := c.Close(); err != nil {
		t.Errorf("first Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := c.Execute(t.Context(), "cont", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute after Close: got %v, want ErrClosed", err)
	}
}
