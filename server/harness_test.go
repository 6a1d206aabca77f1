package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/sandbox"
	"github.com/hearthvm/hearth/server"
	"github.com/hearthvm/hearth/server/servertest"
	"github.com/hearthvm/hearth/vmm"
)

// harness is an in-process API server over a bufconn listener.
type harness struct {
	mgr     *sandbox.Manager
	conn    *grpc.ClientConn
	client  sandboxv1.SandboxServiceClient
	snaps   sandboxv1.SandboxSnapshotServiceClient
	control sandboxv1.SandboxControlServiceClient
}

type harnessOptions struct {
	server server.Options
	// driver boots the sandboxes; nil means a servertest.FakeDriver.
	driver       vmm.Driver
	interceptors []grpc.StreamServerInterceptor
}

func newHarness(t *testing.T, opts harnessOptions) *harness {
	t.Helper()
	mgr := servertest.NewManager(t, opts.driver)

	sopts := opts.server
	sopts.Manager = mgr
	sopts.Logger = servertest.QuietLogger
	srv, err := server.New(sopts)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	unaryLog, streamLog := server.LogErrors(servertest.QuietLogger)
	g := grpc.NewServer(grpc.ChainUnaryInterceptor(unaryLog),
		grpc.ChainStreamInterceptor(append([]grpc.StreamServerInterceptor{streamLog}, opts.interceptors...)...))
	srv.Register(g)
	lis := bufconn.Listen(1 << 20)
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)

	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return &harness{
		mgr:     mgr,
		conn:    conn,
		client:  sandboxv1.NewSandboxServiceClient(conn),
		snaps:   sandboxv1.NewSandboxSnapshotServiceClient(conn),
		control: sandboxv1.NewSandboxControlServiceClient(conn),
	}
}

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), servertest.Deadline)
	t.Cleanup(cancel)
	return ctx
}

// create creates a sandbox with network mode none and waits until it is
// ready.
func (h *harness) create(t *testing.T, req *sandboxv1.CreateSandboxRequest) string {
	t.Helper()
	if req.Network == nil {
		req.Network = &sandboxv1.NetworkSpec{Mode: "none"}
	}
	resp, err := h.client.Create(testContext(t), req)
	if err != nil {
		t.Fatalf("create %q: %v", req.GetId(), err)
	}
	h.waitState(t, resp.GetId(), "ready")
	return resp.GetId()
}

// waitState polls Inspect until the sandbox is in state want.
func (h *harness) waitState(t *testing.T, id, want string) *sandboxv1.SandboxInfo {
	t.Helper()
	deadline := time.Now().Add(servertest.Deadline)
	for {
		info, err := h.client.Inspect(testContext(t), &sandboxv1.InspectSandboxRequest{Id: id})
		if err != nil {
			t.Fatalf("inspect %s: %v", id, err)
		}
		if info.GetState() == want {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s: state %q after %s, want %q", id, info.GetState(), servertest.Deadline, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// runResult is the collected output of one Run.
type runResult struct {
	stdout, stderr string
	exitCode       int32
	done           bool
	messages       int
}

func (h *harness) run(ctx context.Context, req *sandboxv1.RunRequest) (runResult, error) {
	stream, err := h.client.Run(ctx, req)
	if err != nil {
		return runResult{}, err
	}
	var res runResult
	for {
		out, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return res, nil
		}
		if err != nil {
			return res, err
		}
		res.messages++
		switch out.GetStream() {
		case "stdout":
			res.stdout += string(out.GetData())
		case "stderr":
			res.stderr += string(out.GetData())
		}
		if out.GetDone() {
			res.done, res.exitCode = true, out.GetExitCode()
		}
	}
}
