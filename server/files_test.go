package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/server/servertest"
)

// The servertest agent serves the host's filesystem, so the "guest" paths
// of these tests are paths under t.TempDir().

func (h *harness) files(t *testing.T) sandboxv1.SandboxFileServiceClient {
	t.Helper()
	return sandboxv1.NewSandboxFileServiceClient(h.conn)
}

// upload sends data in chunks of chunkSize with a header and a digest.
func upload(ctx context.Context, files sandboxv1.SandboxFileServiceClient, id, path string, mode uint32,
	data []byte, chunkSize int) (*sandboxv1.UploadResponse, error) {
	stream, err := files.Upload(ctx)
	if err != nil {
		return nil, err
	}
	size := int64(len(data))
	if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Header{
		Header: &sandboxv1.UploadHeader{Id: id, Path: path, Mode: mode, Size: &size},
	}}); err != nil {
		return stream.CloseAndRecv()
	}
	for off := 0; off < len(data); off += chunkSize {
		end := min(off+chunkSize, len(data))
		if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Chunk{Chunk: data[off:end]}}); err != nil {
			return stream.CloseAndRecv()
		}
	}
	sum := sha256.Sum256(data)
	if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Digest{
		Digest: &sandboxv1.FileDigest{Size: size, Sha256: hex.EncodeToString(sum[:])},
	}}); err != nil {
		return stream.CloseAndRecv()
	}
	return stream.CloseAndRecv()
}

// download collects a Download stream: its chunks, how many there were,
// and the final digest.
func download(ctx context.Context, files sandboxv1.SandboxFileServiceClient, id, path string) ([]byte, int, *sandboxv1.FileDigest, error) {
	stream, err := files.Download(ctx, &sandboxv1.DownloadRequest{Id: id, Path: path})
	if err != nil {
		return nil, 0, nil, err
	}
	var data []byte
	var chunks int
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return data, chunks, nil, errors.New("stream ended without a digest")
		}
		if err != nil {
			return data, chunks, nil, err
		}
		if d := msg.GetDigest(); d != nil {
			return data, chunks, d, nil
		}
		data = append(data, msg.GetChunk()...)
		chunks++
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	return data
}

func TestFileUploadDownloadRoundTrip(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "files"})
	files := h.files(t)
	ctx := testContext(t)
	dir := t.TempDir()
	target := filepath.Join(dir, "blob")
	data := randomBytes(t, 3<<20+17)
	sum := sha256.Sum256(data)

	resp, err := upload(ctx, files, id, target, 0o640, data, 100<<10)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	if resp.GetSize() != int64(len(data)) || resp.GetSha256() != hex.EncodeToString(sum[:]) {
		t.Errorf("upload response: got size %d sha256 %s, want %d and %x", resp.GetSize(), resp.GetSha256(), len(data), sum)
	}
	onDisk, err := os.ReadFile(target)
	if err != nil {
		t.Fatalf("read uploaded file: %v", err)
	}
	if !bytes.Equal(onDisk, data) {
		t.Errorf("uploaded file: got %d bytes, want the %d sent", len(onDisk), len(data))
	}
	if fi, err := os.Stat(target); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("uploaded file mode: got %v (%v), want 0640", fi.Mode(), err)
	}

	got, chunks, digest, err := download(ctx, files, id, target)
	if err != nil {
		t.Fatalf("download: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Errorf("download: got %d bytes, want the %d uploaded", len(got), len(data))
	}
	if chunks < 2 {
		t.Errorf("download: got %d chunks, want the content split into several", chunks)
	}
	if digest.GetSize() != int64(len(data)) || digest.GetSha256() != hex.EncodeToString(sum[:]) {
		t.Errorf("download digest: got %v, want size %d sha256 %x", digest, len(data), sum)
	}
}

func TestFileUploadCutLeavesNoFile(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "cut"})
	dir := t.TempDir()
	target := filepath.Join(dir, "half")

	ctx, cancel := context.WithCancel(testContext(t))
	stream, err := h.files(t).Upload(ctx)
	if err != nil {
		t.Fatalf("upload: %v", err)
	}
	size := int64(4 << 20)
	if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Header{
		Header: &sandboxv1.UploadHeader{Id: id, Path: target, Size: &size},
	}}); err != nil {
		t.Fatalf("send header: %v", err)
	}
	half := randomBytes(t, int(size/2))
	if err := stream.Send(&sandboxv1.UploadRequest{Payload: &sandboxv1.UploadRequest_Chunk{Chunk: half}}); err != nil {
		t.Fatalf("send half: %v", err)
	}
	// Wait until the agent has created its temporary file, so the cut
	// happens in the middle of the transfer.
	waitFor(t, "a temporary file in "+dir, func() bool {
		entries, _ := os.ReadDir(dir)
		return len(entries) > 0
	})
	cancel()
	if _, err := stream.CloseAndRecv(); status.Code(err) != codes.Canceled {
		t.Errorf("cut upload: got %v, want Canceled", err)
	}

	waitFor(t, "the temporary file to be removed", func() bool {
		entries, _ := os.ReadDir(dir)
		return len(entries) == 0
	})
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target after a cut upload: got %v, want not exist", err)
	}
}

func TestFileUploadRejected(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "bad"})
	files := h.files(t)
	dir := t.TempDir()
	existing := filepath.Join(dir, "keep")
	if err := os.WriteFile(existing, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("digest mismatch", func(t *testing.T) {
		ctx := testContext(t)
		stream, err := files.Upload(ctx)
		if err != nil {
			t.Fatal(err)
		}
		msgs := []*sandboxv1.UploadRequest{
			{Payload: &sandboxv1.UploadRequest_Header{Header: &sandboxv1.UploadHeader{Id: id, Path: existing}}},
			{Payload: &sandboxv1.UploadRequest_Chunk{Chunk: []byte("new")}},
			{Payload: &sandboxv1.UploadRequest_Digest{Digest: &sandboxv1.FileDigest{Size: 3, Sha256: strings.Repeat("0", 64)}}},
		}
		for _, m := range msgs {
			if err := stream.Send(m); err != nil {
				t.Fatalf("send: %v", err)
			}
		}
		if _, err := stream.CloseAndRecv(); status.Code(err) != codes.DataLoss {
			t.Errorf("upload with a wrong digest: got %v, want DataLoss", err)
		}
		if data, _ := os.ReadFile(existing); string(data) != "old" {
			t.Errorf("target after a rejected upload: got %q, want %q", data, "old")
		}
	})

	for _, tc := range []struct {
		name string
		path string
		want codes.Code
	}{
		{"relative path", "tmp/x", codes.InvalidArgument},
		{"empty path", "", codes.InvalidArgument},
		{"directory as target", dir, codes.FailedPrecondition},
		{"missing parent", filepath.Join(dir, "no", "such"), codes.NotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := upload(testContext(t), files, id, tc.path, 0, []byte("x"), 1)
			if status.Code(err) != tc.want {
				t.Errorf("upload to %q: got %v, want %s", tc.path, err, tc.want)
			}
		})
	}

	t.Run("unknown sandbox", func(t *testing.T) {
		_, err := upload(testContext(t), files, "nobody", filepath.Join(dir, "x"), 0, []byte("x"), 1)
		if status.Code(err) != codes.NotFound {
			t.Errorf("upload to an unknown sandbox: got %v, want NotFound", err)
		}
	})
}

func TestFileDownloadErrors(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "dl"})
	files := h.files(t)
	dir := t.TempDir()

	for _, tc := range []struct {
		name string
		path string
		want codes.Code
	}{
		{"missing file", filepath.Join(dir, "missing"), codes.NotFound},
		{"directory", dir, codes.FailedPrecondition},
		{"relative path", "etc/hostname", codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := download(testContext(t), files, id, tc.path)
			if status.Code(err) != tc.want {
				t.Errorf("download %q: got %v, want %s", tc.path, err, tc.want)
			}
		})
	}
}

func TestFileOperations(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	id := h.create(t, &sandboxv1.CreateSandboxRequest{Id: "ops"})
	files := h.files(t)
	ctx := testContext(t)
	dir := t.TempDir()
	sub := filepath.Join(dir, "a", "b")

	if _, err := files.Mkdir(ctx, &sandboxv1.MkdirRequest{Id: id, Path: sub, Mode: 0o750, Parents: true}); err != nil {
		t.Fatalf("mkdir -p: %v", err)
	}
	if _, err := files.Mkdir(ctx, &sandboxv1.MkdirRequest{Id: id, Path: sub}); status.Code(err) != codes.AlreadyExists {
		t.Errorf("mkdir of an existing directory: got %v, want AlreadyExists", err)
	}
	fi, err := files.Stat(ctx, &sandboxv1.StatRequest{Id: id, Path: sub})
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	if fi.GetType() != "dir" || fi.GetMode() != 0o750 {
		t.Errorf("stat %s: got type %q mode %#o, want dir 0750", sub, fi.GetType(), fi.GetMode())
	}

	const entries = 300
	for i := range entries {
		name := filepath.Join(sub, "f"+strconv.Itoa(i))
		if _, err := upload(ctx, files, id, name, 0, []byte("x"), 1); err != nil {
			t.Fatalf("upload %s: %v", name, err)
		}
	}
	stream, err := files.List(ctx, &sandboxv1.ListFilesRequest{Id: id, Path: sub})
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var listed, batches int
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		batches++
		listed += len(resp.GetEntries())
	}
	if listed != entries || batches < 2 {
		t.Errorf("list: got %d entries in %d batches, want %d in at least 2", listed, batches, entries)
	}

	from, to := filepath.Join(dir, "a"), filepath.Join(dir, "c")
	if _, err := files.Rename(ctx, &sandboxv1.RenameFileRequest{Id: id, From: from, To: to}); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if _, err := os.Stat(filepath.Join(to, "b")); err != nil {
		t.Errorf("after rename: %v", err)
	}
	if _, err := files.Remove(ctx, &sandboxv1.RemoveFileRequest{Id: id, Path: to}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("remove of a full directory without recursive: got %v, want FailedPrecondition", err)
	}
	if _, err := files.Remove(ctx, &sandboxv1.RemoveFileRequest{Id: id, Path: to, Recursive: true}); err != nil {
		t.Fatalf("remove recursive: %v", err)
	}
	if _, err := files.Stat(ctx, &sandboxv1.StatRequest{Id: id, Path: to}); status.Code(err) != codes.NotFound {
		t.Errorf("stat after remove: got %v, want NotFound", err)
	}
}

// waitFor polls cond until it holds or the test deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(servertest.Deadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", servertest.Deadline, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
