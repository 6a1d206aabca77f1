package agent

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

func TestControlPing(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortControl)
	for i := range 2 {
		writeRawFrame(t, conn, wirePing, nil)
		f, err := readRawFrame(conn)
		if err != nil {
			t.Fatalf("ping %d: %v", i, err)
		}
		if f.typ != wireAck || len(f.payload) != 0 {
			t.Errorf("ping %d: got frame 0x%02x with %d payload bytes, want an empty ACK (0x30)", i, f.typ, len(f.payload))
		}
	}
}

func TestControlRejectsBadRequests(t *testing.T) {
	tests := []struct {
		name    string
		typ     byte
		payload []byte
		wantErr string
	}{
		{"unknown type", 0x7f, nil, "unknown control frame type 0x7f"},
		{"exec frame", wireStart, []byte(`{"cmd":["true"]}`), "unknown control frame type START"},
		{"garbage SHUTDOWN JSON", wireShutdown, []byte("{bad"), "invalid SHUTDOWN payload"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var hookCalls atomic.Int32
			srv := newTestServer(t, Options{Shutdown: func() { hookCalls.Add(1) }})
			conn := dial(t, srv, agentproto.PortControl)
			writeRawFrame(t, conn, tc.typ, tc.payload)

			f, err := readRawFrame(conn)
			if err != nil {
				t.Fatal(err)
			}
			if f.typ != wireErr {
				t.Errorf("got frame 0x%02x, want ERR (0x31)", f.typ)
			}
			if !strings.Contains(string(f.payload), tc.wantErr) {
				t.Errorf("got error %q, want it to contain %q", f.payload, tc.wantErr)
			}
			if n := hookCalls.Load(); n != 0 {
				t.Errorf("got %d shutdown hook calls, want 0", n)
			}
		})
	}
}

// TestControlShutdown checks that SHUTDOWN terminates running commands,
// kills those that ignore SIGTERM after the grace period, replies ACK,
// calls the hook once, and rejects commands from then on.
func TestControlShutdown(t *testing.T) {
	hookCalled := make(chan struct{}, 2)
	srv := newTestServer(t, Options{Shutdown: func() { hookCalled <- struct{}{} }})

	polite := dial(t, srv, agentproto.PortExec)
	writeStart(t, polite, agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo ready; exec sleep 100"}})
	stubborn := dial(t, srv, agentproto.PortExec)
	writeStart(t, stubborn, agentproto.StartRequest{Cmd: []string{"sh", "-c", `trap "" TERM; echo ready; sleep 100`}})
	for _, conn := range []interface{ Read([]byte) (int, error) }{polite, stubborn} {
		f, err := readRawFrame(conn)
		if err != nil || f.typ != wireStdout || string(f.payload) != "ready\n" {
			t.Fatalf("got frame 0x%02x %q (error %v), want STDOUT \"ready\\n\"", f.typ, f.payload, err)
		}
	}

	control := dial(t, srv, agentproto.PortControl)
	writeRawFrame(t, control, wireShutdown, []byte(`{"grace_ms":300}`))

	if res := collect(t, polite); res.code != 128+15 {
		t.Errorf("command that obeys SIGTERM: got exit code %d, want %d", res.code, 128+15)
	}
	if res := collect(t, stubborn); res.code != 128+9 {
		t.Errorf("command that ignores SIGTERM: got exit code %d, want %d", res.code, 128+9)
	}

	f, err := readRawFrame(control)
	if err != nil {
		t.Fatalf("read SHUTDOWN answer: %v", err)
	}
	if f.typ != wireAck {
		t.Errorf("got frame 0x%02x %q, want ACK (0x30)", f.typ, f.payload)
	}
	select {
	case <-hookCalled:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown hook not called 10 s after ACK")
	}

	res := runCommand(t, srv, agentproto.StartRequest{Cmd: []string{"true"}})
	if res.code != ExitCannotExecute {
		t.Errorf("command after SHUTDOWN: got exit code %d, want %d", res.code, ExitCannotExecute)
	}
	if !strings.Contains(string(res.stderr), "shutting down") {
		t.Errorf("command after SHUTDOWN: got stderr %q, want it to say the agent is shutting down", res.stderr)
	}

	// A second SHUTDOWN is acknowledged, but the hook runs only once.
	again := dial(t, srv, agentproto.PortControl)
	writeRawFrame(t, again, wireShutdown, nil)
	if f, err := readRawFrame(again); err != nil || f.typ != wireAck {
		t.Errorf("second SHUTDOWN: got frame 0x%02x (error %v), want ACK", f.typ, err)
	}
	select {
	case <-hookCalled:
		t.Error("shutdown hook called twice, want once")
	case <-time.After(100 * time.Millisecond):
	}
}

func TestFileChannelNotImplemented(t *testing.T) {
	tests := []struct {
		name   string
		frames []rawFrame
	}{
		{"read", []rawFrame{{wireReadReq, []byte(`{"path":"/etc/hostname"}`)}}},
		{"write", []rawFrame{
			{0x20, []byte(`{"path":"/tmp/x","mode":420}`)}, // WRITE_REQ
			{0x21, []byte("data")},                         // DATA
			{0x22, nil},                                    // DONE
		}},
	}
	srv := newTestServer(t, Options{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			conn := dial(t, srv, agentproto.PortFile)
			for _, f := range tc.frames {
				writeRawFrame(t, conn, f.typ, f.payload)
			}

			f, err := readRawFrame(conn)
			if err != nil {
				t.Fatal(err)
			}
			if f.typ != wireErr {
				t.Errorf("got frame 0x%02x, want ERR (0x31)", f.typ)
			}
			if got, want := string(f.payload), "file channel not implemented yet"; got != want {
				t.Errorf("got error %q, want %q", got, want)
			}
		})
	}
}
