package agentclient

import (
	"bytes"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agent"
	"github.com/hearthvm/hearth/agentproto"
)

// lineSignaller sends sig on signals as soon as the output contains
// "ready".
type lineSignaller struct {
	buf     bytes.Buffer
	signals chan<- syscall.Signal
	sig     syscall.Signal
	sent    bool
}

func (w *lineSignaller) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if !w.sent && strings.Contains(w.buf.String(), "ready") {
		w.sent = true
		w.signals <- w.sig
	}
	return len(p), nil
}

func TestExecResult(t *testing.T) {
	tests := []struct {
		name   string
		req    agentproto.StartRequest
		signal syscall.Signal // sent once the command prints "ready"
		want   Result
	}{
		{"exit status", agentproto.StartRequest{Cmd: []string{"sh", "-c", "exit 4"}}, 0,
			Result{Code: 4, Reason: agentproto.ReasonExited}},
		{"SIGTERM from the host", agentproto.StartRequest{Cmd: []string{"sh", "-c", "echo ready; exec sleep 100"}}, syscall.SIGTERM,
			Result{Code: 143, Signal: "SIGTERM", Reason: agentproto.ReasonSignaled}},
		{"timeout", agentproto.StartRequest{Cmd: []string{"sleep", "100"}, TimeoutSeconds: 1}, 0,
			Result{Code: 124, Signal: "SIGKILL", TimedOut: true, Reason: agentproto.ReasonTimedOut}},
		{"not found", agentproto.StartRequest{Cmd: []string{"hearth-no-such-command"}}, 0,
			Result{Code: 127, Reason: agentproto.ReasonNotFound}},
	}
	ta := startAgent(t, agent.Options{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			signals := make(chan syscall.Signal, 1)
			stdout := &lineSignaller{signals: signals, sig: tc.signal}
			stdio := ExecIO{Stdout: stdout, Stderr: io.Discard, Signals: signals}
			got, err := Exec(testContext(t), ta.dial(t, agentproto.PortExec), tc.req, stdio)
			if err != nil {
				t.Fatalf("exec: %v", err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestConfigureNetworkServeOnly(t *testing.T) {
	ta := startAgent(t, agent.Options{})
	err := ConfigureNetwork(testContext(t), ta.dial(t, agentproto.PortControl),
		agentproto.NetConfigRequest{Address: "192.0.2.7/24", Gateway: "192.0.2.1"})
	if err == nil || !strings.Contains(err.Error(), "not a guest") {
		t.Errorf("got error %v, want a rejection with \"not a guest\"", err)
	}
}

func TestConfigureNetworkHook(t *testing.T) {
	got := make(chan agentproto.NetConfig, 1)
	ta := startAgent(t, agent.Options{ConfigureNetwork: func(cfg agentproto.NetConfig) error {
		got <- cfg
		return nil
	}})
	err := ConfigureNetwork(testContext(t), ta.dial(t, agentproto.PortControl),
		agentproto.NetConfigRequest{Address: "192.0.2.7/24", Gateway: "192.0.2.1"})
	if err != nil {
		t.Fatalf("configure network: %v", err)
	}
	select {
	case cfg := <-got:
		if cfg.Interface != "eth0" || cfg.Address.String() != "192.0.2.7/24" || cfg.Gateway.String() != "192.0.2.1" {
			t.Errorf("got %+v, want eth0 192.0.2.7/24 via 192.0.2.1", cfg)
		}
	case <-time.After(time.Second):
		t.Error("got no hook call, want one")
	}
}
