package agentclient

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/hearthvm/hearth/agentproto"
)

// ErrRejected wraps the message of an ERR frame: the agent understood the
// request and could not carry it out, for example because a path was not
// found.
var ErrRejected = errors.New("agent rejected the request")

// WriteOptions describes a file to upload.
type WriteOptions struct {
	// Path is the file's path in the guest.
	Path string
	// Mode holds the permission bits plus os.ModeSetuid, os.ModeSetgid
	// and os.ModeSticky; 0 means 0644.
	Mode os.FileMode
	// UID and GID set the owner; nil keeps the agent's user (root in a
	// guest).
	UID, GID *uint32
	// Size is the expected byte count, checked by the agent. 0 means
	// unknown; the DIGEST sent before DONE carries the count anyway.
	Size int64
	// Mkdirs creates missing parent directories with mode 0755.
	Mkdirs bool
	// Checksum is the algorithm of the digest the agent checks before
	// the file replaces the target. Empty means agentproto.ChecksumCRC32C,
	// which detects corruption at memory speed; agentproto.ChecksumSHA256
	// costs about a second per GiB and core on each end. The byte count
	// is checked either way.
	Checksum agentproto.Checksum
}

// ReadOptions describes a file to download.
type ReadOptions struct {
	// Path is the file's path in the guest.
	Path string
	// Checksum is the algorithm of the digest the agent sends and
	// Download checks, as in WriteOptions. Empty means
	// agentproto.ChecksumCRC32C.
	Checksum agentproto.Checksum
}

// checksumOrDefault returns c, or CRC-32C when c is empty.
func checksumOrDefault(c agentproto.Checksum) (agentproto.Checksum, error) {
	if c == "" {
		return agentproto.ChecksumCRC32C, nil
	}
	if !c.Valid() {
		return "", fmt.Errorf("unknown checksum algorithm %q; want %q or %q", c, agentproto.ChecksumCRC32C, agentproto.ChecksumSHA256)
	}
	return c, nil
}

// transferBuffer is the size of the buffer of a transfer: one frame
// header and one DATA chunk.
const transferBuffer = agentproto.HeaderSize + agentproto.DataChunk

// Upload streams r into a file in the guest over conn, an open stream to
// the agent's file port. It computes the checksum of opts.Checksum while
// sending and lets the agent check it and the byte count before the file
// replaces the target, so the target either gets all of r or stays as it
// was. Memory
// use does not depend on the size of r. It closes conn. When r fails,
// Upload closes conn before DONE, which makes the agent discard the
// transfer, and returns r's error.
func Upload(ctx context.Context, conn net.Conn, opts WriteOptions, r io.Reader) error {
	defer conn.Close()
	checksum, err := checksumOrDefault(opts.Checksum)
	if err != nil {
		return fmt.Errorf("upload %q: %w", opts.Path, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	growSocketBuffers(conn)

	req := agentproto.WriteRequest{Path: opts.Path, Mode: modeBits(opts.Mode), UID: opts.UID, GID: opts.GID,
		Mkdirs: opts.Mkdirs, Checksum: checksum}
	if opts.Size > 0 {
		req.Size = &opts.Size
	}
	payload, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("encode WRITE_REQ for %q: %w", opts.Path, err)
	}
	if err := agentproto.WriteFrame(conn, agentproto.TypeWriteReq, payload); err != nil {
		return ctxOr(ctx, sendFailure(conn, fmt.Errorf("upload %q: send WRITE_REQ: %w", opts.Path, err)))
	}

	digest, err := sendData(conn, r, opts.Path, checksum)
	if err != nil {
		return ctxOr(ctx, err)
	}
	d, err := json.Marshal(digest)
	if err != nil {
		return err
	}
	// DIGEST and DONE go out in one write.
	end := agentproto.AppendFrame(nil, agentproto.TypeDigest, d)
	end = agentproto.AppendFrame(end, agentproto.TypeDone, nil)
	if _, err := conn.Write(end); err != nil {
		return ctxOr(ctx, sendFailure(conn, fmt.Errorf("upload %q: send DIGEST and DONE: %w", opts.Path, err)))
	}
	return ctxOr(ctx, readAck(conn, fmt.Sprintf("upload %q", opts.Path)))
}

// sendData streams r as DATA frames through one reused buffer and
// returns the digest of what it sent.
func sendData(conn net.Conn, r io.Reader, path string, checksum agentproto.Checksum) (agentproto.Digest, error) {
	buf := make([]byte, transferBuffer)
	h := agentproto.NewHash(checksum)
	var total int64
	for {
		n, rerr := r.Read(buf[agentproto.HeaderSize:])
		if n > 0 {
			h.Write(buf[agentproto.HeaderSize : agentproto.HeaderSize+n])
			agentproto.PutHeader(buf, agentproto.TypeData, n)
			if _, err := conn.Write(buf[:agentproto.HeaderSize+n]); err != nil {
				return agentproto.Digest{}, sendFailure(conn, fmt.Errorf("upload %q: send DATA after %d bytes: %w", path, total, err))
			}
			total += int64(n)
		}
		if errors.Is(rerr, io.EOF) {
			return agentproto.NewDigest(total, checksum, hex.EncodeToString(h.Sum(nil))), nil
		}
		if rerr != nil {
			return agentproto.Digest{}, fmt.Errorf("upload %q: read source after %d bytes: %w", path, total, rerr)
		}
	}
}

// sendFailure returns the agent's ERR message when the agent rejected
// the request and closed the stream while the host was still sending,
// and err otherwise.
func sendFailure(conn net.Conn, err error) error {
	f, rerr := agentproto.ReadFrame(conn)
	if rerr == nil && f.Type == agentproto.TypeErr {
		return fmt.Errorf("%w: %s", ErrRejected, f.Payload)
	}
	return err
}

// readAck reads the ACK or ERR that ends a request.
func readAck(conn net.Conn, op string) error {
	f, err := agentproto.ReadFrame(conn)
	if err != nil {
		return fmt.Errorf("%s: read reply: %w", op, err)
	}
	switch f.Type {
	case agentproto.TypeAck:
		return nil
	case agentproto.TypeErr:
		return fmt.Errorf("%w: %s", ErrRejected, f.Payload)
	default:
		return fmt.Errorf("%s: unexpected %s frame; want ACK or ERR", op, f.Type)
	}
}

func ctxOr(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// Download streams the guest file at path into w over conn, an open
// stream to the agent's file port, and returns the number of bytes
// written. It requests the size and CRC-32C of what the agent sent and
// checks both, so an error means w may hold partial or wrong content.
// Memory use does not depend on the file's size. It closes conn.
func Download(ctx context.Context, conn net.Conn, path string, w io.Writer) (n int64, err error) {
	return DownloadWithOptions(ctx, conn, ReadOptions{Path: path}, w)
}

// DownloadWithOptions is Download with a choice of checksum.
func DownloadWithOptions(ctx context.Context, conn net.Conn, opts ReadOptions, w io.Writer) (n int64, err error) {
	defer conn.Close()
	path := opts.Path
	checksum, err := checksumOrDefault(opts.Checksum)
	if err != nil {
		return 0, fmt.Errorf("download %q: %w", path, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	growSocketBuffers(conn)

	payload, err := json.Marshal(agentproto.ReadRequest{Path: path, Digest: true, Checksum: checksum})
	if err != nil {
		return 0, err
	}
	if err := agentproto.WriteFrame(conn, agentproto.TypeReadReq, payload); err != nil {
		return 0, ctxOr(ctx, fmt.Errorf("download %q: send READ_REQ: %w", path, err))
	}
	n, err = receiveData(agentproto.NewFrameReader(conn), path, checksum, w)
	return n, ctxOr(ctx, err)
}

func receiveData(in *agentproto.FrameReader, path string, checksum agentproto.Checksum, w io.Writer) (int64, error) {
	buf := make([]byte, agentproto.DataChunk)
	h := agentproto.NewHash(checksum)
	dst := io.MultiWriter(w, h)
	var total int64
	for {
		t, n, err := in.ReadHeader()
		if err != nil {
			return total, fmt.Errorf("download %q: connection failed after %d bytes: %w", path, total, err)
		}
		switch t {
		case agentproto.TypeData:
			copied, err := io.CopyBuffer(dst, io.LimitReader(in, int64(n)), buf)
			total += copied
			if err != nil {
				return total, fmt.Errorf("download %q: after %d bytes: %w", path, total, err)
			}
			if copied < int64(n) {
				return total, fmt.Errorf("download %q: connection failed after %d bytes: %w", path, total, io.ErrUnexpectedEOF)
			}
		case agentproto.TypeDone:
			if _, err := io.CopyN(io.Discard, in, int64(n)); err != nil {
				return total, fmt.Errorf("download %q: read DONE: %w", path, err)
			}
			return total, checkDigest(in, path, total, checksum, hex.EncodeToString(h.Sum(nil)))
		case agentproto.TypeErr:
			msg := make([]byte, n)
			if _, err := io.ReadFull(in, msg); err != nil {
				return total, fmt.Errorf("download %q: read ERR: %w", path, err)
			}
			return total, fmt.Errorf("%w: %s", ErrRejected, msg)
		default:
			return total, fmt.Errorf("download %q: unexpected %s frame; want DATA, DONE or ERR", path, t)
		}
	}
}

// checkDigest reads the DIGEST that follows DONE and compares it with
// what arrived.
func checkDigest(in *agentproto.FrameReader, path string, size int64, checksum agentproto.Checksum, sum string) error {
	f, err := in.Next()
	if err != nil {
		return fmt.Errorf("download %q: read DIGEST: %w", path, err)
	}
	if f.Type != agentproto.TypeDigest {
		return fmt.Errorf("download %q: got %s frame after DONE, want DIGEST", path, f.Type)
	}
	d, err := agentproto.DecodeDigest(f.Payload)
	if err != nil {
		return fmt.Errorf("download %q: %w", path, err)
	}
	if d.Size != size {
		return fmt.Errorf("download %q: received %d bytes, the agent sent %d", path, size, d.Size)
	}
	got, agentSum := d.Checksum()
	if got != checksum {
		return fmt.Errorf("download %q: the agent sent a %s digest, want %s; the agent may predate checksum choice, so retry with %s",
			path, got, checksum, agentproto.ChecksumSHA256)
	}
	if agentSum != sum {
		return fmt.Errorf("download %q: received content has %s %s, the agent sent %s", path, checksum, sum, agentSum)
	}
	return nil
}

// Stat describes the guest path without following a symbolic link. It
// closes conn, an open stream to the file port.
func Stat(ctx context.Context, conn net.Conn, path string) (agentproto.FileInfo, error) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	if err := sendJSON(conn, agentproto.TypeStat, agentproto.PathRequest{Path: path}); err != nil {
		return agentproto.FileInfo{}, ctxOr(ctx, err)
	}
	f, err := agentproto.ReadFrame(conn)
	if err != nil {
		return agentproto.FileInfo{}, ctxOr(ctx, fmt.Errorf("stat %q: read reply: %w", path, err))
	}
	switch f.Type {
	case agentproto.TypeFileInfo:
		var fi agentproto.FileInfo
		if err := json.Unmarshal(f.Payload, &fi); err != nil {
			return agentproto.FileInfo{}, fmt.Errorf("stat %q: invalid FILE_INFO payload: %w", path, err)
		}
		return fi, nil
	case agentproto.TypeErr:
		return agentproto.FileInfo{}, fmt.Errorf("%w: %s", ErrRejected, f.Payload)
	default:
		return agentproto.FileInfo{}, fmt.Errorf("stat %q: unexpected %s frame; want FILE_INFO or ERR", path, f.Type)
	}
}

// List returns the entries of a guest directory, in the order the
// directory returns them. It closes conn, an open stream to the file port.
func List(ctx context.Context, conn net.Conn, path string) ([]agentproto.FileInfo, error) {
	var all []agentproto.FileInfo
	err := ListFunc(ctx, conn, path, func(batch []agentproto.FileInfo) error {
		all = append(all, batch...)
		return nil
	})
	return all, err
}

// ListFunc calls fn with each batch of entries of a guest directory as
// they arrive, so a directory of any size is listed in bounded memory.
// An error from fn ends the listing and is returned. It closes conn.
func ListFunc(ctx context.Context, conn net.Conn, path string, fn func([]agentproto.FileInfo) error) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	if err := sendJSON(conn, agentproto.TypeList, agentproto.PathRequest{Path: path}); err != nil {
		return ctxOr(ctx, err)
	}
	for {
		f, err := agentproto.ReadFrame(conn)
		if err != nil {
			return ctxOr(ctx, fmt.Errorf("list %q: read reply: %w", path, err))
		}
		switch f.Type {
		case agentproto.TypeListEntries:
			var batch []agentproto.FileInfo
			if err := json.Unmarshal(f.Payload, &batch); err != nil {
				return fmt.Errorf("list %q: invalid LIST_ENTRIES payload: %w", path, err)
			}
			if err := fn(batch); err != nil {
				return err
			}
		case agentproto.TypeDone:
			return nil
		case agentproto.TypeErr:
			return fmt.Errorf("%w: %s", ErrRejected, f.Payload)
		default:
			return fmt.Errorf("list %q: unexpected %s frame; want LIST_ENTRIES, DONE or ERR", path, f.Type)
		}
	}
}

// Mkdir creates a guest directory with mode (0 means 0755). With
// parents, missing parents are created and an existing directory is
// success, as with mkdir -p. It closes conn.
func Mkdir(ctx context.Context, conn net.Conn, path string, mode os.FileMode, parents bool) error {
	req := agentproto.MkdirRequest{Path: path, Mode: modeBits(mode), Parents: parents}
	return fileCommand(ctx, conn, agentproto.TypeMkdir, req, fmt.Sprintf("mkdir %q", path))
}

// Remove removes a guest file, symbolic link or empty directory; with
// recursive, a directory with its contents. A missing path is an error.
// It closes conn.
func Remove(ctx context.Context, conn net.Conn, path string, recursive bool) error {
	req := agentproto.RemoveRequest{Path: path, Recursive: recursive}
	return fileCommand(ctx, conn, agentproto.TypeRemove, req, fmt.Sprintf("remove %q", path))
}

// Rename renames a guest path, replacing the target as rename(2) does.
// It closes conn.
func Rename(ctx context.Context, conn net.Conn, from, to string) error {
	req := agentproto.RenameRequest{From: from, To: to}
	return fileCommand(ctx, conn, agentproto.TypeRename, req, fmt.Sprintf("rename %q to %q", from, to))
}

func fileCommand(ctx context.Context, conn net.Conn, t agentproto.FrameType, req any, op string) error {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	if err := sendJSON(conn, t, req); err != nil {
		return ctxOr(ctx, err)
	}
	return ctxOr(ctx, readAck(conn, op))
}

func sendJSON(conn net.Conn, t agentproto.FrameType, v any) error {
	payload, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t, err)
	}
	if err := agentproto.WriteFrame(conn, t, payload); err != nil {
		return fmt.Errorf("send %s: %w", t, err)
	}
	return nil
}

// modeBits converts an os.FileMode to wire mode bits (07777).
func modeBits(m os.FileMode) uint32 {
	bits := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		bits |= 0o1000
	}
	return bits
}
