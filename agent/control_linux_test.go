package agent

import (
	"errors"
	"net/netip"
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

func TestControlNetConfigServeOnly(t *testing.T) {
	srv := newTestServer(t, Options{})
	conn := dial(t, srv, agentproto.PortControl)
	writeRawFrame(t, conn, wireNetConfig, []byte(`{"address":"192.0.2.7/24","gateway":"192.0.2.1"}`))

	f, err := readRawFrame(conn)
	if err != nil {
		t.Fatal(err)
	}
	if f.typ != wireErr {
		t.Fatalf("got frame 0x%02x, want ERR (0x31)", f.typ)
	}
	if !strings.HasPrefix(string(f.payload), "not a guest") {
		t.Errorf("got error %q, want it to start with \"not a guest\"", f.payload)
	}
}

func TestControlNetConfig(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		hookErr error
		want    *agentproto.NetConfig // nil: the hook must not run
		wantErr string
	}{
		{
			name:    "address and gateway",
			payload: `{"address":"192.0.2.7/24","gateway":"192.0.2.1"}`,
			want: &agentproto.NetConfig{Interface: "eth0",
				Address: netip.MustParsePrefix("192.0.2.7/24"), Gateway: netip.MustParseAddr("192.0.2.1")},
		},
		{
			name:    "named interface without gateway",
			payload: `{"address":"198.51.100.9/30","interface":"eth1"}`,
			want:    &agentproto.NetConfig{Interface: "eth1", Address: netip.MustParsePrefix("198.51.100.9/30")},
		},
		{name: "address without prefix", payload: `{"address":"192.0.2.7"}`, wantErr: "not an IPv4 address with a prefix length"},
		{name: "IPv6 address", payload: `{"address":"2001:db8::7/64"}`, wantErr: "not an IPv4 address with a prefix length"},
		{name: "gateway outside subnet", payload: `{"address":"192.0.2.7/24","gateway":"198.51.100.1"}`, wantErr: "outside the subnet 192.0.2.0/24"},
		{name: "interface name too long", payload: `{"address":"192.0.2.7/24","interface":"abcdefghijklmnop"}`, wantErr: "not a valid Linux interface name"},
		{name: "garbage JSON", payload: `{`, wantErr: "invalid NETCONFIG payload"},
		{
			name:    "hook fails",
			payload: `{"address":"192.0.2.7/24"}`,
			hookErr: errors.New("find interface eth0: link not found"),
			want:    &agentproto.NetConfig{Interface: "eth0", Address: netip.MustParsePrefix("192.0.2.7/24")},
			wantErr: "configure eth0 with 192.0.2.7/24: find interface eth0: link not found",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []agentproto.NetConfig
			srv := newTestServer(t, Options{ConfigureNetwork: func(cfg agentproto.NetConfig) error {
				got = append(got, cfg)
				return tc.hookErr
			}})
			conn := dial(t, srv, agentproto.PortControl)
			writeRawFrame(t, conn, wireNetConfig, []byte(tc.payload))

			f, err := readRawFrame(conn)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantErr == "" && (f.typ != wireAck || len(f.payload) != 0) {
				t.Errorf("got frame 0x%02x %q, want an empty ACK", f.typ, f.payload)
			}
			if tc.wantErr != "" && (f.typ != wireErr || !strings.Contains(string(f.payload), tc.wantErr)) {
				t.Errorf("got frame 0x%02x %q, want ERR containing %q", f.typ, f.payload, tc.wantErr)
			}
			switch {
			case tc.want == nil && len(got) != 0:
				t.Errorf("got hook calls %+v, want none", got)
			case tc.want != nil && (len(got) != 1 || got[0] != *tc.want):
				t.Errorf("got hook calls %+v, want one with %+v", got, *tc.want)
			}
		})
	}
}
