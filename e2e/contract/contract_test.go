// Package contract checks a real hearth daemon with a client generated
// from the independent statement of the sandbox.v1 contract (package
// sandboxpb). A field that hearth renumbered or retyped breaks this test
// even where hearth's own client and server agree with each other.
package contract

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/e2e/contract/sandboxpb"
	"github.com/hearthvm/hearth/e2e/harness"
)

var (
	hearthBin string // built once by TestMain
	buildErr  error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hearth-contract-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	hearthBin, buildErr = harness.Build(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// generatedFiles are the files of package sandboxpb that protoc writes.
var generatedFiles = []string{"sandbox_v1.pb.go", "sandbox_v1_grpc.pb.go"}

// protocArgs is the command that generated package sandboxpb, run from
// this directory; package sandboxpb's documentation repeats it.
func protocArgs(contractsDir, outDir string) []string {
	const goPackage = "Msandbox_v1.proto=github.com/hearthvm/hearth/e2e/contract/sandboxpb"
	return []string{
		"--proto_path=" + contractsDir,
		"--go_out=" + outDir, "--go_opt=paths=source_relative", "--go_opt=" + goPackage,
		"--go-grpc_out=" + outDir, "--go-grpc_opt=paths=source_relative", "--go-grpc_opt=" + goPackage,
		"sandbox_v1.proto",
	}
}

// findContracts walks up from the working directory to a directory with
// a shared/contracts/sandbox_v1.proto, and returns that contracts
// directory, or "" when there is none.
func findContracts(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		candidate := filepath.Join(dir, "shared", "contracts")
		if _, err := os.Stat(filepath.Join(candidate, "sandbox_v1.proto")); err == nil {
			return candidate
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// lookPlugin finds a protoc plugin in PATH or in the directory where
// scripts/gen-proto installs it.
func lookPlugin(name string) (string, bool) {
	if p, err := exec.LookPath(name); err == nil {
		return p, true
	}
	tools := os.Getenv("HEARTH_TOOLS")
	if tools == "" {
		cache, err := os.UserCacheDir()
		if err != nil {
			return "", false
		}
		tools = filepath.Join(cache, "hearth", "tools")
	}
	p := filepath.Join(tools, name)
	_, err := os.Stat(p)
	return p, err == nil
}

func TestGeneratedClientMatchesContract(t *testing.T) {
	contracts := findContracts(t)
	if contracts == "" {
		t.Skip("no shared/contracts/sandbox_v1.proto above this directory; the committed sandboxpb is not compared")
	}
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		t.Skip("protoc not found; install the Debian package protobuf-compiler (scripts/install-deps)")
	}
	var pluginDirs []string
	for _, name := range []string{"protoc-gen-go", "protoc-gen-go-grpc"} {
		p, ok := lookPlugin(name)
		if !ok {
			t.Skipf("%s not found in PATH or $HEARTH_TOOLS; run scripts/gen-proto once to install it", name)
		}
		pluginDirs = append(pluginDirs, filepath.Dir(p))
	}

	out := t.TempDir()
	cmd := exec.Command(protoc, protocArgs(contracts, out)...)
	cmd.Env = append(os.Environ(), "PATH="+pluginDirs[0]+":"+pluginDirs[1]+":"+os.Getenv("PATH"))
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, msg)
	}
	for _, name := range generatedFiles {
		fresh, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(filepath.Join("sandboxpb", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("sandboxpb/%s differs from the code generated from %s; regenerate it with the command in sandboxpb/generate.go",
				name, filepath.Join(contracts, "sandbox_v1.proto"))
		}
	}
}

// eventLog collects one Events stream in the background.
type eventLog struct {
	mu     sync.Mutex
	events []*sandboxpb.SandboxEvent
}

func (l *eventLog) actions() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var actions []string
	for _, ev := range l.events {
		actions = append(actions, ev.GetAction())
	}
	return actions
}

// waitFor waits until the log contains want as a subsequence.
func (l *eventLog) waitFor(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		got := l.actions()
		i := 0
		for _, a := range got {
			if i < len(want) && a == want[i] {
				i++
			}
		}
		if i == len(want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("events: got %v, want %v in order", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestContractLifecycle(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	assets := harness.Assets(t)
	netns := harness.NewNetns(t)
	d := harness.StartDaemon(t, hearthBin, netns, assets)
	conn := d.Dial(t)
	client := sandboxpb.NewSandboxServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	stream, err := client.Events(ctx, &sandboxpb.SandboxEventsRequest{Id: "contract"})
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	// The daemon sends the headers once the subscription exists.
	if _, err := stream.Header(); err != nil {
		t.Fatalf("events header: %v", err)
	}
	events := &eventLog{}
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			events.mu.Lock()
			events.events = append(events.events, ev)
			events.mu.Unlock()
		}
	}()

	created, err := client.Create(ctx, &sandboxpb.CreateSandboxRequest{Id: "contract"})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if created.GetId() != "contract" || created.GetState() != "starting" {
		t.Errorf("create response: got id %q state %q, want contract and starting", created.GetId(), created.GetState())
	}
	events.waitFor(t, "created", "ready")

	run, err := client.Run(ctx, &sandboxpb.RunRequest{Id: "contract", Cmd: []string{"echo", "hi"}})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	var stdout string
	var last *sandboxpb.RunOutput
	for {
		out, err := run.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("run recv: %v", err)
		}
		if last != nil && last.GetDone() {
			t.Errorf("run: got %v after the message marked done", out)
		}
		if out.GetStream() == "stdout" {
			stdout += string(out.GetData())
		}
		last = out
	}
	if stdout != "hi\n" {
		t.Errorf("run stdout: got %q, want %q", stdout, "hi\n")
	}
	if last == nil || !last.GetDone() || last.GetExitCode() != 0 {
		t.Errorf("run last message: got %v, want done with exit code 0", last)
	}

	info, err := client.Inspect(ctx, &sandboxpb.InspectSandboxRequest{Id: "contract"})
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	if info.GetLastExitCode() != 0 || info.GetLastExitedAt() == 0 {
		t.Errorf("inspect: got last_exit_code %d last_exited_at %d, want 0 at a set time", info.GetLastExitCode(), info.GetLastExitedAt())
	}
	if now := time.Now().Unix(); info.GetCreatedAt() > now || info.GetCreatedAt() < now-600 {
		t.Errorf("inspect created_at: got %d, want Unix seconds near %d", info.GetCreatedAt(), now)
	}
	if info.GetNetwork().GetIpAddress() == "" || info.GetNetwork().GetTapName() == "" {
		t.Errorf("inspect network: got %v, want an address and a TAP", info.GetNetwork())
	}

	snaps, err := sandboxpb.NewSandboxSnapshotServiceClient(conn).ListSnapshots(ctx, &sandboxpb.ListSnapshotsRequest{})
	if err != nil || len(snaps.GetSnapshots()) != 0 {
		t.Errorf("list snapshots: got %v, %v; want none", snaps.GetSnapshots(), err)
	}

	if _, err := client.Stop(ctx, &sandboxpb.StopSandboxRequest{Id: "contract"}); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := client.Remove(ctx, &sandboxpb.RemoveSandboxRequest{Id: "contract"}); err != nil {
		t.Fatalf("remove: %v", err)
	}
	if _, err := client.Inspect(ctx, &sandboxpb.InspectSandboxRequest{Id: "contract"}); status.Code(err) != codes.NotFound {
		t.Errorf("inspect after remove: got %v, want NotFound", err)
	}
	events.waitFor(t, "created", "ready", "running", "idle", "stopping", "stopped", "removed")

	events.mu.Lock()
	defer events.mu.Unlock()
	for _, ev := range events.events {
		if ev.GetSandboxId() != "contract" {
			t.Errorf("event %s: got sandbox %q, want contract", ev.GetAction(), ev.GetSandboxId())
		}
		if ts := time.Unix(0, ev.GetTimestamp()); time.Since(ts) > 10*time.Minute || time.Since(ts) < 0 {
			t.Errorf("event %s: timestamp %d is not Unix nanoseconds of the last minutes", ev.GetAction(), ev.GetTimestamp())
		}
		if ev.GetAction() == "idle" && ev.GetAttributes()["exit_code"] != "0" {
			t.Errorf("idle event: got attributes %v, want exit_code 0", ev.GetAttributes())
		}
	}
}
