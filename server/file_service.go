package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearthvm/hearth/agentclient"
	"github.com/hearthvm/hearth/agentproto"
	"github.com/hearthvm/hearth/api/sandboxv1"
	"github.com/hearthvm/hearth/sandbox"
)

// fileService implements sandboxv1.SandboxFileServiceServer. Transfers
// stream chunk by chunk between the gRPC stream and the agent's file
// channel, so memory use does not depend on a file's size.
type fileService struct {
	sandboxv1.UnimplementedSandboxFileServiceServer
	s *Server
}

// checkPath rejects an empty or relative guest path.
func checkPath(field, p string) error {
	if p == "" {
		return invalidArgument(field, "the path is empty")
	}
	if !path.IsAbs(p) {
		return invalidArgument(field, fmt.Sprintf("path %q is relative; give an absolute guest path such as /root/file", p))
	}
	return nil
}

// fileSandbox returns the sandbox of a file request, waiting while it is
// still starting.
func (h *fileService) fileSandbox(ctx context.Context, id string, paths map[string]string) (*sandbox.Sandbox, error) {
	if err := checkID(id); err != nil {
		return nil, toStatus(err)
	}
	for field, p := range paths {
		if err := checkPath(field, p); err != nil {
			return nil, err
		}
	}
	sb, err := h.s.readySandbox(ctx, id)
	if err != nil {
		return nil, toStatus(err)
	}
	return sb, nil
}

// Upload receives a header, chunks and an optional digest, and streams the
// chunks into the guest file through a pipe. The target is replaced only
// after the last chunk has arrived and size and digest match. A stream
// that fails or ends early leaves it unchanged.
func (h *fileService) Upload(stream grpc.ClientStreamingServer[sandboxv1.UploadRequest, sandboxv1.UploadResponse]) error {
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return invalidArgument("header", "the stream ended before its first message, which must carry header")
	}
	if err != nil {
		return err
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return invalidArgument("header", "the first UploadRequest must carry header; send chunks only after it")
	}
	opts, err := writeOptions(hdr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	sb, err := h.fileSandbox(ctx, hdr.GetId(), map[string]string{"header.path": hdr.GetPath()})
	if err != nil {
		return err
	}

	pr, pw := io.Pipe()
	result := make(chan error, 1)
	go func() {
		err := sb.Upload(ctx, opts, pr)
		// Unblocks a pending write of the receive loop when the agent
		// rejected the upload early.
		pr.CloseWithError(errUploadEnded)
		result <- err
	}()

	digest, recvErr := receiveChunks(stream, pw)
	if recvErr != nil {
		// The connection to the agent ends before DONE, so the agent
		// discards the temporary file.
		pw.CloseWithError(recvErr)
		cancel()
	} else {
		pw.Close()
	}
	upErr := <-result
	switch {
	case recvErr != nil && !errors.Is(recvErr, errUploadEnded):
		return toStatus(recvErr)
	case upErr != nil:
		return toStatus(upErr)
	}
	return stream.SendAndClose(&sandboxv1.UploadResponse{Path: hdr.GetPath(), Size: digest.Size, Sha256: digest.SHA256})
}

// errUploadEnded ends the receive loop when the upload to the agent
// ended before the client's stream did.
var errUploadEnded = errors.New("the upload to the agent ended")

func writeOptions(hdr *sandboxv1.UploadHeader) (agentclient.WriteOptions, error) {
	if hdr.GetMode()&^0o7777 != 0 {
		return agentclient.WriteOptions{}, invalidArgument("header.mode", fmt.Sprintf("mode %#o has bits outside 07777", hdr.GetMode()))
	}
	if hdr.Size != nil && hdr.GetSize() < 0 {
		return agentclient.WriteOptions{}, invalidArgument("header.size", "the size is negative")
	}
	return agentclient.WriteOptions{
		Path: hdr.GetPath(), Mode: fileMode(hdr.GetMode()), UID: hdr.Uid, GID: hdr.Gid,
		Size: hdr.GetSize(), Mkdirs: hdr.GetMkdirs(),
	}, nil
}

// fileMode converts wire mode bits (07777) to an os.FileMode.
func fileMode(bits uint32) os.FileMode {
	m := os.FileMode(bits & 0o777)
	if bits&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if bits&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if bits&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// receiveChunks writes the chunks of an upload stream to w until the
// client closes its side, and checks the client's digest message against
// what arrived. It returns the size and SHA-256 of the content.
func receiveChunks(stream grpc.ClientStreamingServer[sandboxv1.UploadRequest, sandboxv1.UploadResponse],
	w io.Writer) (agentproto.Digest, error) {
	sum := sha256.New()
	var size int64
	var claimed *sandboxv1.FileDigest
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return agentproto.Digest{}, err
		}
		switch p := msg.GetPayload().(type) {
		case *sandboxv1.UploadRequest_Chunk:
			if claimed != nil {
				return agentproto.Digest{}, invalidArgument("chunk", "a chunk arrived after the digest, which must be the last message")
			}
			if _, err := w.Write(p.Chunk); err != nil {
				return agentproto.Digest{}, err
			}
			sum.Write(p.Chunk)
			size += int64(len(p.Chunk))
		case *sandboxv1.UploadRequest_Digest:
			if claimed != nil {
				return agentproto.Digest{}, invalidArgument("digest", "the digest may be sent only once")
			}
			claimed = p.Digest
		case *sandboxv1.UploadRequest_Header:
			return agentproto.Digest{}, invalidArgument("header", "header may be sent only once, in the first message")
		default:
			return agentproto.Digest{}, invalidArgument("payload", "the message carries no header, chunk or digest")
		}
	}
	got := agentproto.Digest{Size: size, SHA256: hexSum(sum)}
	if claimed != nil && (claimed.GetSize() != got.Size || claimed.GetSha256() != got.SHA256) {
		return agentproto.Digest{}, status.Errorf(codes.DataLoss,
			"upload: received %d bytes with SHA-256 %s, but the client's digest says %d bytes with SHA-256 %s; the target was left unchanged",
			got.Size, got.SHA256, claimed.GetSize(), claimed.GetSha256())
	}
	return got, nil
}

func hexSum(h hash.Hash) string { return hex.EncodeToString(h.Sum(nil)) }

// Download streams a guest file in chunks and ends with its size and
// SHA-256. The agent's own digest is checked first, so the last message
// is sent only for content that arrived intact.
func (h *fileService) Download(req *sandboxv1.DownloadRequest, stream grpc.ServerStreamingServer[sandboxv1.DownloadResponse]) error {
	ctx := stream.Context()
	sb, err := h.fileSandbox(ctx, req.GetId(), map[string]string{"path": req.GetPath()})
	if err != nil {
		return err
	}
	sum := sha256.New()
	chunks := writerFunc(func(p []byte) (int, error) {
		// Send encodes the message before it returns, so the agent
		// client may reuse p afterwards.
		if err := stream.Send(&sandboxv1.DownloadResponse{Payload: &sandboxv1.DownloadResponse_Chunk{Chunk: p}}); err != nil {
			return 0, err
		}
		sum.Write(p)
		return len(p), nil
	})
	n, err := sb.Download(ctx, req.GetPath(), chunks)
	if err != nil {
		return toStatus(err)
	}
	return stream.Send(&sandboxv1.DownloadResponse{Payload: &sandboxv1.DownloadResponse_Digest{
		Digest: &sandboxv1.FileDigest{Size: n, Sha256: hexSum(sum)},
	}})
}

// Stat describes a guest path without following a symbolic link.
func (h *fileService) Stat(ctx context.Context, req *sandboxv1.StatRequest) (*sandboxv1.FileInfo, error) {
	sb, err := h.fileSandbox(ctx, req.GetId(), map[string]string{"path": req.GetPath()})
	if err != nil {
		return nil, err
	}
	fi, err := sb.Stat(ctx, req.GetPath())
	if err != nil {
		return nil, toStatus(err)
	}
	return fileInfo(fi), nil
}

// List streams the entries of a guest directory in the batches the agent
// sends.
func (h *fileService) List(req *sandboxv1.ListFilesRequest, stream grpc.ServerStreamingServer[sandboxv1.ListFilesResponse]) error {
	ctx := stream.Context()
	sb, err := h.fileSandbox(ctx, req.GetId(), map[string]string{"path": req.GetPath()})
	if err != nil {
		return err
	}
	err = sb.ListFiles(ctx, req.GetPath(), func(batch []agentproto.FileInfo) error {
		resp := &sandboxv1.ListFilesResponse{Entries: make([]*sandboxv1.FileInfo, 0, len(batch))}
		for _, fi := range batch {
			resp.Entries = append(resp.Entries, fileInfo(fi))
		}
		return stream.Send(resp)
	})
	return toStatus(err)
}

// Mkdir creates a guest directory.
func (h *fileService) Mkdir(ctx context.Context, req *sandboxv1.MkdirRequest) (*sandboxv1.Empty, error) {
	if req.GetMode()&^0o7777 != 0 {
		return nil, invalidArgument("mode", fmt.Sprintf("mode %#o has bits outside 07777", req.GetMode()))
	}
	sb, err := h.fileSandbox(ctx, req.GetId(), map[string]string{"path": req.GetPath()})
	if err != nil {
		return nil, err
	}
	if err := sb.Mkdir(ctx, req.GetPath(), fileMode(req.GetMode()), req.GetParents()); err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.Empty{}, nil
}

// Remove removes a guest path.
func (h *fileService) Remove(ctx context.Context, req *sandboxv1.RemoveFileRequest) (*sandboxv1.Empty, error) {
	sb, err := h.fileSandbox(ctx, req.GetId(), map[string]string{"path": req.GetPath()})
	if err != nil {
		return nil, err
	}
	if err := sb.RemoveFile(ctx, req.GetPath(), req.GetRecursive()); err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.Empty{}, nil
}

// Rename renames a guest path.
func (h *fileService) Rename(ctx context.Context, req *sandboxv1.RenameFileRequest) (*sandboxv1.Empty, error) {
	sb, err := h.fileSandbox(ctx, req.GetId(), map[string]string{"from": req.GetFrom(), "to": req.GetTo()})
	if err != nil {
		return nil, err
	}
	if err := sb.RenameFile(ctx, req.GetFrom(), req.GetTo()); err != nil {
		return nil, toStatus(err)
	}
	return &sandboxv1.Empty{}, nil
}

func fileInfo(fi agentproto.FileInfo) *sandboxv1.FileInfo {
	return &sandboxv1.FileInfo{
		Name: fi.Name, Type: fi.Type, Mode: fi.Mode, Size: fi.Size, MtimeNs: fi.MtimeNanos,
		Uid: fi.UID, Gid: fi.GID, Target: fi.Target,
	}
}
