package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/e2e/harness"
)

// filesID is the sandbox of TestFiles.
const filesID = "files"

// filesEnv is a daemon with one booted sandbox and a file API client.
type filesEnv struct {
	d     *harness.Daemon
	files sandboxv1.SandboxFileServiceClient
}

// TestFiles copies files and directories through a real guest with
// hearth cp, and cuts uploads in the middle.
func TestFiles(t *testing.T) {
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	assets := harness.Assets(t)
	netns := harness.NewNetns(t)
	d := harness.StartDaemon(t, hearthBin, netns, assets)
	e := &filesEnv{d: d, files: sandboxv1.NewSandboxFileServiceClient(d.Dial(t))}
	ctx := testContext(t)
	if res := d.CLI(ctx, t, "create", "--id", filesID, "--network", "none", "--wait"); res.Code != 0 {
		t.Fatalf("create: exit %d, stderr %q", res.Code, res.Stderr)
	}

	t.Run("file round trip", e.testFileRoundTrip)
	t.Run("directory round trip", e.testDirectoryRoundTrip)
	t.Run("cli interrupted mid-upload", e.testCLIInterrupted)
	t.Run("api upload cancelled", e.testAPICancelled)

	if res := d.CLI(ctx, t, "rm", "-f", filesID); res.Code != 0 {
		t.Errorf("remove: exit %d, stderr %q", res.Code, res.Stderr)
	}
}

func filesRandom(t *testing.T, path string, size int) [32]byte {
	t.Helper()
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

func filesLocalSum(t *testing.T, path string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return sha256.Sum256(data)
}

// guestSum returns the guest's sha256sum of path.
func (e *filesEnv) guestSum(t *testing.T, path string) string {
	t.Helper()
	res := e.d.CLI(testContext(t), t, "exec", filesID, "--", "sha256sum", path)
	if res.Code != 0 {
		t.Fatalf("sha256sum %s in the guest: exit %d, stderr %q", path, res.Code, res.Stderr)
	}
	sum, _, _ := strings.Cut(res.Stdout, " ")
	return sum
}

func (e *filesEnv) testFileRoundTrip(t *testing.T) {
	ctx := testContext(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "blob")
	want := filesRandom(t, src, 32<<20)

	if res := e.d.CLI(ctx, t, "cp", src, filesID+":/root/blob"); res.Code != 0 {
		t.Fatalf("cp up: exit %d, stderr %q", res.Code, res.Stderr)
	}
	if got := e.guestSum(t, "/root/blob"); got != hex.EncodeToString(want[:]) {
		t.Errorf("SHA-256 in the guest: got %s, want %s", got, hex.EncodeToString(want[:]))
	}

	back := filepath.Join(dir, "back")
	if res := e.d.CLI(ctx, t, "cp", filesID+":/root/blob", back); res.Code != 0 {
		t.Fatalf("cp down: exit %d, stderr %q", res.Code, res.Stderr)
	}
	if got := filesLocalSum(t, back); got != want {
		t.Errorf("SHA-256 after the round trip: got %x, want %x", got, want)
	}
}

func (e *filesEnv) testDirectoryRoundTrip(t *testing.T) {
	ctx := testContext(t)
	src := filepath.Join(t.TempDir(), "tree")
	sums := map[string][32]byte{}
	for _, rel := range []string{"top", "a/one", "a/b/two", "a/b/c/three"} {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		sums[rel] = filesRandom(t, p, 64<<10+len(rel))
	}
	if err := os.Mkdir(filepath.Join(src, "empty"), 0o755); err != nil {
		t.Fatal(err)
	}

	if res := e.d.CLI(ctx, t, "cp", src, filesID+":/root"); res.Code != 0 {
		t.Fatalf("cp directory up: exit %d, stderr %q", res.Code, res.Stderr)
	}
	for rel, want := range sums {
		if got := e.guestSum(t, "/root/tree/"+rel); got != hex.EncodeToString(want[:]) {
			t.Errorf("guest /root/tree/%s: got SHA-256 %s, want %s", rel, got, hex.EncodeToString(want[:]))
		}
	}

	back := t.TempDir()
	if res := e.d.CLI(ctx, t, "cp", filesID+":/root/tree", back); res.Code != 0 {
		t.Fatalf("cp directory down: exit %d, stderr %q", res.Code, res.Stderr)
	}
	for rel, want := range sums {
		if got := filesLocalSum(t, filepath.Join(back, "tree", rel)); got != want {
			t.Errorf("downloaded tree/%s: got SHA-256 %x, want %x", rel, got, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(back, "tree", "empty")); err != nil || !fi.IsDir() {
		t.Errorf("downloaded empty directory: got %v, %v; want a directory", fi, err)
	}
}

// waitTempFile waits until the agent's temporary file of an upload shows
// in the guest directory dir.
func (e *filesEnv) waitTempFile(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		names := e.listNames(t, dir)
		for _, n := range names {
			if strings.HasPrefix(n, ".hearth-write-") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no temporary upload file appeared in %s: %v", dir, names)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *filesEnv) listNames(t *testing.T, dir string) []string {
	t.Helper()
	stream, err := e.files.List(testContext(t), &sandboxv1.ListFilesRequest{Id: filesID, Path: dir})
	if err != nil {
		t.Fatalf("list %s: %v", dir, err)
	}
	var names []string
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return names
		}
		if err != nil {
			t.Fatalf("list %s: %v", dir, err)
		}
		for _, fi := range resp.GetEntries() {
			names = append(names, fi.GetName())
		}
	}
}

// checkNothingLeft checks that neither the target nor a temporary file
// is in the guest directory dir; the agent removes its temporary file
// when the connection ends, so it is polled for.
func (e *filesEnv) checkNothingLeft(t *testing.T, dir, target string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var left []string
		for _, n := range e.listNames(t, dir) {
			if n == target || strings.HasPrefix(n, ".hearth-write-") {
				left = append(left, n)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the cut upload %s still holds %v, want neither the target nor a temporary file", dir, left)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *filesEnv) testCLIInterrupted(t *testing.T) {
	ctx := testContext(t)
	if res := e.d.CLI(ctx, t, "exec", filesID, "--", "mkdir", "-p", "/root/cut"); res.Code != 0 {
		t.Fatalf("mkdir: exit %d, stderr %q", res.Code, res.Stderr)
	}
	src := filepath.Join(t.TempDir(), "big")
	filesRandom(t, src, 64<<20)

	cmd := exec.CommandContext(ctx, hearthBin, "--host", e.d.Host(), "cp", src, filesID+":/root/cut/big")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	e.waitTempFile(t, "/root/cut")
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatalf("interrupt hearth cp (pid %d): %v", cmd.Process.Pid, err)
	}
	err := cmd.Wait()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 125 || !strings.Contains(stderr.String(), "/root/cut/big") {
		t.Errorf("interrupted hearth cp: got %v, stderr %q; want exit 125 with an error naming the target", err, stderr.String())
	}
	e.checkNothingLeft(t, "/root/cut", "big")
}

func (e *filesEnv) testAPICancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	stream, err := e.files.Upload(ctx)
	if err != nil {
		t.Fatal(err)
	}
	size := int64(32 << 20)
	header := &sandboxv1.UploadHeader{Id: filesID, Path: "/root/half", Size: &size}
	if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Header{Header: header}}); err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 256<<10)
	for sent := int64(0); sent < size/2; sent += int64(len(chunk)) {
		if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Chunk{Chunk: chunk}}); err != nil {
			t.Fatalf("send chunk: %v", err)
		}
	}
	e.waitTempFile(t, "/root")
	cancel()
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.Canceled {
		t.Errorf("cancelled upload: got %v, want Canceled", err)
	}
	e.checkNothingLeft(t, "/root", "half")
}
