package agent

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hearthvm/hearth/agentproto"
)

// fileIdleTimeout bounds the wait for each frame of a file request, so a
// host that stops in the middle of a transfer does not leave a temporary
// file and a goroutine behind forever.
const fileIdleTimeout = 2 * time.Minute

// listBatch is the number of entries per LIST_ENTRIES frame. With names
// of at most 255 bytes and link targets of at most 4096, a frame stays
// far below MaxPayload.
const listBatch = 256

// transferBuffers holds the buffers of file transfers: a frame header
// followed by one DATA chunk.
var transferBuffers = sync.Pool{
	New: func() any {
		b := make([]byte, agentproto.HeaderSize+agentproto.DataChunk)
		return &b
	},
}

// transferSocketBuffer is the send and receive buffer size a transfer
// requests on a socket. On a Unix stream socket (the Firecracker double's
// transport) the sender's buffer bounds the bytes in flight, and the
// default of about 208 KiB makes the two ends wait for each other
// several times per DATA chunk. The kernel caps it at net.core.wmem_max
// and net.core.rmem_max.
const transferSocketBuffer = 4 << 20

// growSocketBuffers requests transferSocketBuffer on conn when it is a
// socket. Failure is harmless: the transfer runs with the default
// buffers.
func growSocketBuffers(conn net.Conn) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, transferSocketBuffer)
		_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, transferSocketBuffer)
	})
}

// fileRequest is one request on the file channel.
type fileRequest struct {
	srv  *Server
	conn net.Conn
	// in reads every frame of conn after the request's first.
	in   *agentproto.FrameReader
	fsys fileSystem
}

// serveFile serves one file-channel request: WRITE_REQ and READ_REQ of
// the reference protocol, and the hearth requests STAT, LIST, MKDIR,
// REMOVE and RENAME.
func (s *Server) serveFile(conn net.Conn) {
	req := &fileRequest{srv: s, conn: conn, in: agentproto.NewFrameReader(conn)}
	req.touchDeadline()
	f, err := req.in.Next()
	if errors.Is(err, io.EOF) {
		return
	}
	if err != nil {
		req.reject(fmt.Sprintf("read file request: %v", err))
		return
	}

	fsys, err := s.fileSystem()
	if err != nil {
		req.reject(fmt.Sprintf("open file root %q: %v", s.fileRoot, plainError(err)))
		return
	}
	defer fsys.Close()
	req.fsys = fsys

	switch f.Type {
	case agentproto.TypeWriteReq:
		growSocketBuffers(conn)
		req.write(f.Payload)
	case agentproto.TypeReadReq:
		growSocketBuffers(conn)
		req.read(f.Payload)
	case agentproto.TypeStat:
		req.stat(f.Payload)
	case agentproto.TypeList:
		req.list(f.Payload)
	case agentproto.TypeMkdir:
		req.mkdir(f.Payload)
	case agentproto.TypeRemove:
		req.remove(f.Payload)
	case agentproto.TypeRename:
		req.rename(f.Payload)
	default:
		req.reject(fmt.Sprintf("unknown file request type %s; want WRITE_REQ, READ_REQ, STAT, LIST, MKDIR, REMOVE or RENAME", f.Type))
	}
}

// fileSystem returns the filesystem the file channel serves.
func (s *Server) fileSystem() (fileSystem, error) {
	if s.fileRoot == "" {
		return hostFS{}, nil
	}
	return openRootFS(s.fileRoot)
}

// touchDeadline extends the read deadline by fileIdleTimeout. Transports
// without deadlines leave only the host to end a request.
func (r *fileRequest) touchDeadline() {
	_ = r.conn.SetReadDeadline(time.Now().Add(fileIdleTimeout))
}

// reject answers the request with ERR.
func (r *fileRequest) reject(msg string) {
	r.srv.log.Debug("file request failed", "reason", msg)
	if err := agentproto.WriteFrame(r.conn, agentproto.TypeErr, []byte(msg)); err != nil {
		r.srv.log.Debug("write ERR on file channel", "err", err)
	}
}

func (r *fileRequest) ack() {
	if err := agentproto.WriteFrame(r.conn, agentproto.TypeAck, nil); err != nil {
		r.srv.log.Debug("write ACK on file channel", "err", err)
	}
}

// describe words a failed operation on path for the host: the operation,
// the path and the reason in plain words.
func describe(op, path string, err error) string {
	return fmt.Sprintf("%s %q: %s", op, path, plainError(err))
}

// plainError returns the reason of a filesystem error without the
// operation and path that the Go error repeats.
func plainError(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "not found"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	case errors.Is(err, fs.ErrExist):
		return "already exists"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err.Error()
	}
	return err.Error()
}

// upload is a WRITE_REQ in progress: the content goes to a temporary file
// in the target's directory, which replaces the target only once every
// byte has arrived and matches the expected size and checksums.
type upload struct {
	req     agentproto.WriteRequest
	fsys    fileSystem
	dir     string // parent directory of the target, as a guest path
	tmpName string
	tmp     *os.File
	// hash computes the checksum that WRITE_REQ announces for DIGEST,
	// and sha the SHA-256 for the sha256 field of WRITE_REQ when the
	// DIGEST uses another algorithm. sha is nil when not needed.
	hash    hash.Hash
	sha     hash.Hash
	written int64
	// failed is the first failure of the upload. The rest of the data
	// is then read and discarded, so the host reads ERR after DONE.
	failed string
	digest *agentproto.Digest
	// replaced holds the inode of the target that the rename replaced,
	// so the kernel frees its content when discard closes it, after the
	// ACK, rather than inside rename(2). Freeing 1 GiB on tmpfs took
	// about 165 ms on a 2-core development host.
	replaced *os.File
}

func (r *fileRequest) write(payload []byte) {
	req, err := agentproto.DecodeWriteRequest(payload)
	if err != nil {
		r.drainThenReject(err.Error())
		return
	}

	up := newUpload(req, r.fsys)
	if msg := up.begin(); msg != "" {
		r.drainThenReject(msg)
		return
	}
	// The temporary file goes on every path but the one that renames it.
	defer up.discard()

	bufp := transferBuffers.Get().(*[]byte)
	defer transferBuffers.Put(bufp)

	for {
		r.touchDeadline()
		t, n, err := r.in.ReadHeader()
		if err != nil {
			r.srv.log.Info("file write cut short; the target was left unchanged", "path", req.Path, "bytes", up.written, "err", err)
			r.reject(fmt.Sprintf("write %q: transfer cut short after %d bytes: %v", req.Path, up.written, err))
			return
		}
		switch t {
		case agentproto.TypeData:
			if err := up.receive(r.in, n, (*bufp)[agentproto.HeaderSize:]); err != nil {
				r.srv.log.Info("file write cut short; the target was left unchanged", "path", req.Path, "bytes", up.written, "err", err)
				r.reject(fmt.Sprintf("write %q: transfer cut short after %d bytes: %v", req.Path, up.written, err))
				return
			}
		case agentproto.TypeDigest:
			d, err := readDigest(r.in, n)
			if err != nil {
				r.reject(err.Error())
				return
			}
			up.digest = &d
		case agentproto.TypeDone:
			if _, err := io.CopyN(io.Discard, r.in, int64(n)); err != nil {
				return
			}
			if msg := up.commit(); msg != "" {
				r.reject(msg)
				return
			}
			r.srv.log.Debug("file written", "path", req.Path, "bytes", up.written)
			r.ack()
			return
		default:
			r.reject(fmt.Sprintf("write %q: unexpected %s frame; want DATA, DIGEST or DONE", req.Path, t))
			return
		}
	}
}

func readDigest(conn io.Reader, n int) (agentproto.Digest, error) {
	payload := make([]byte, n)
	if _, err := io.ReadFull(conn, payload); err != nil {
		return agentproto.Digest{}, fmt.Errorf("read DIGEST: %w", err)
	}
	return agentproto.DecodeDigest(payload)
}

func newUpload(req agentproto.WriteRequest, fsys fileSystem) *upload {
	up := &upload{req: req, fsys: fsys, dir: path.Dir(path.Clean("/" + req.Path)),
		hash: agentproto.NewHash(req.Checksum)}
	if req.SHA256 != "" && req.Checksum.OrDefault() != agentproto.ChecksumSHA256 {
		up.sha = sha256.New()
	}
	return up
}

// begin creates the parent directories when asked and the temporary
// file. It returns the message for the host on failure.
func (up *upload) begin() string {
	target := up.req.Path
	if up.req.Mkdirs {
		if err := up.fsys.MkdirAll(up.dir, agentproto.DefaultDirMode); err != nil {
			return describe("write", target, fmt.Errorf("create parent directory %q: %w", up.dir, err))
		}
	}
	if info, err := up.fsys.Lstat(target); err == nil && info.IsDir() {
		return fmt.Sprintf("write %q: is a directory", target)
	}

	var suffix [8]byte
	_, _ = rand.Read(suffix[:])
	up.tmpName = path.Join(up.dir, ".hearth-write-"+hex.EncodeToString(suffix[:]))
	tmp, err := up.fsys.OpenFile(up.tmpName, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_CLOEXEC, 0o600)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Sprintf("write %q: parent directory %q not found; set mkdirs to create it", target, up.dir)
	case errors.Is(err, syscall.ENOTDIR):
		return fmt.Sprintf("write %q: parent %q is not a directory", target, up.dir)
	case err != nil:
		return describe("write", target, err)
	}
	up.tmp = tmp
	return ""
}

// receive copies one DATA payload of n bytes from conn to the temporary
// file. After a write failure it keeps reading, to stay in step with the
// frames. It returns an error only when the connection fails.
func (up *upload) receive(conn io.Reader, n int, buf []byte) error {
	for n > 0 {
		chunk := buf[:min(n, len(buf))]
		if _, err := io.ReadFull(conn, chunk); err != nil {
			return err
		}
		n -= len(chunk)
		if up.failed != "" {
			continue
		}
		up.hash.Write(chunk)
		if up.sha != nil {
			up.sha.Write(chunk)
		}
		if _, err := up.tmp.Write(chunk); err != nil {
			up.failed = describe("write", up.req.Path, err)
			continue
		}
		up.written += int64(len(chunk))
	}
	return nil
}

// commit checks the content against the expected size and checksums,
// then makes it durable and renames it over the target.
func (up *upload) commit() string {
	if up.failed != "" {
		return up.failed
	}
	if msg := up.check(); msg != "" {
		return msg
	}

	target := up.req.Path

	if err := up.finishTemp(); err != nil {
		return describe("write", target, err)
	}
	// O_PATH opens no device and reads nothing; O_NOFOLLOW holds a
	// symbolic link itself. A target that cannot be held is simply
	// freed by the rename.
	if old, err := up.fsys.OpenFile(target, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
		up.replaced = old
	}
	if err := up.fsys.Rename(up.tmpName, target); err != nil {
		return describe("write", target, err)
	}
	up.tmpName = ""
	if err := syncDir(up.fsys, up.dir); err != nil {
		return describe("write", target, fmt.Errorf("sync directory %q: %w", up.dir, err))
	}
	return ""
}

// check compares what arrived with the size and SHA-256 of WRITE_REQ
// and with the DIGEST, and returns the message for the host on a
// mismatch.
func (up *upload) check() string {
	target := up.req.Path
	if up.req.Size != nil && *up.req.Size != up.written {
		return fmt.Sprintf("write %q: received %d bytes, want %d (the size in WRITE_REQ); the target was left unchanged", target, up.written, *up.req.Size)
	}

	algorithm := up.req.Checksum.OrDefault()
	sum := hex.EncodeToString(up.hash.Sum(nil))
	if up.req.SHA256 != "" {
		shaSum := sum
		if up.sha != nil {
			shaSum = hex.EncodeToString(up.sha.Sum(nil))
		}
		if up.req.SHA256 != shaSum {
			return fmt.Sprintf("write %q: content SHA-256 is %s, want %s (the sha256 in WRITE_REQ); the target was left unchanged", target, shaSum, up.req.SHA256)
		}
	}

	d := up.digest
	if d == nil {
		return ""
	}
	if d.Size != up.written {
		return fmt.Sprintf("write %q: received %d bytes, want %d (the size in DIGEST); the target was left unchanged", target, up.written, d.Size)
	}
	got, want := d.Checksum()
	if got != algorithm {
		return fmt.Sprintf("write %q: DIGEST carries a %s checksum, but WRITE_REQ announced %s; the target was left unchanged", target, got, algorithm)
	}
	if want != sum {
		return fmt.Sprintf("write %q: content %s is %s, want %s (the %s in DIGEST); the target was left unchanged", target, checksumName(algorithm), sum, want, algorithm)
	}
	return ""
}

// checksumName is the name of a checksum algorithm in messages.
func checksumName(c agentproto.Checksum) string {
	if c == agentproto.ChecksumCRC32C {
		return "CRC-32C"
	}
	return "SHA-256"
}

// finishTemp sets the owner and mode of the temporary file, flushes it to
// disk and closes it. The owner goes first because chown clears the
// setuid and setgid bits.
func (up *upload) finishTemp() error {
	if up.req.UID != nil || up.req.GID != nil {
		uid, gid := -1, -1
		if up.req.UID != nil {
			uid = int(*up.req.UID)
		}
		if up.req.GID != nil {
			gid = int(*up.req.GID)
		}
		if err := up.tmp.Chown(uid, gid); err != nil {
			return fmt.Errorf("set owner %d:%d: %w", uid, gid, err)
		}
	}
	mode := up.req.Mode
	if mode == 0 {
		mode = agentproto.DefaultFileMode
	}
	if err := up.tmp.Chmod(fileMode(mode)); err != nil {
		return fmt.Errorf("set mode %#o: %w", mode, err)
	}
	if err := up.tmp.Sync(); err != nil {
		return err
	}
	err := up.tmp.Close()
	up.tmp = nil
	return err
}

// discard closes and removes the temporary file unless commit renamed
// it, and releases the replaced target.
func (up *upload) discard() {
	if up.tmp != nil {
		up.tmp.Close()
	}
	if up.replaced != nil {
		up.replaced.Close()
	}
	if up.tmpName != "" {
		_ = up.fsys.Remove(up.tmpName)
	}
}

func syncDir(fsys fileSystem, dir string) error {
	d, err := fsys.OpenFile(dir, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// drainThenReject reads the frames of a write up to DONE, discarding
// them, and then sends ERR, so that the host reads the ERR where the
// protocol puts the reply rather than failing on a closed connection.
func (r *fileRequest) drainThenReject(msg string) {
	for {
		r.touchDeadline()
		t, n, err := r.in.ReadHeader()
		if err != nil {
			break
		}
		if _, err := io.CopyN(io.Discard, r.in, int64(n)); err != nil {
			break
		}
		if t != agentproto.TypeData && t != agentproto.TypeDigest {
			break
		}
	}
	r.reject(msg)
}

func (r *fileRequest) read(payload []byte) {
	req, err := agentproto.DecodeReadRequest(payload)
	if err != nil {
		r.reject(err.Error())
		return
	}
	// O_NONBLOCK keeps the open of a FIFO from blocking; it has no effect
	// on regular files, which are the only ones read.
	f, err := r.fsys.OpenFile(req.Path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		r.reject(describe("read", req.Path, err))
		return
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		r.reject(describe("read", req.Path, err))
		return
	}
	if info.IsDir() {
		r.reject(fmt.Sprintf("read %q: is a directory", req.Path))
		return
	}
	if !info.Mode().IsRegular() {
		r.reject(fmt.Sprintf("read %q: not a regular file (%s)", req.Path, fileType(info.Mode())))
		return
	}

	var h hash.Hash
	if req.Digest {
		h = agentproto.NewHash(req.Checksum)
	}
	n, err := r.sendData(f, h)
	if err != nil {
		// The host may have read some DATA already; ERR in place of DONE
		// tells it the content is incomplete.
		r.reject(describe("read", req.Path, err))
		return
	}
	// DONE and DIGEST go out in one write.
	end := agentproto.AppendFrame(nil, agentproto.TypeDone, nil)
	if req.Digest {
		sum := hex.EncodeToString(h.Sum(nil))
		d, err := json.Marshal(agentproto.NewDigest(n, req.Checksum.OrDefault(), sum))
		if err == nil {
			end = agentproto.AppendFrame(end, agentproto.TypeDigest, d)
		}
	}
	if _, err := r.conn.Write(end); err != nil {
		return
	}
	r.srv.log.Debug("file read", "path", req.Path, "bytes", n)
}

// sendData streams f as DATA frames, feeding h unless it is nil, and
// returns the length sent.
func (r *fileRequest) sendData(f *os.File, h hash.Hash) (int64, error) {
	bufp := transferBuffers.Get().(*[]byte)
	defer transferBuffers.Put(bufp)
	buf := *bufp
	var total int64
	for {
		n, err := f.Read(buf[agentproto.HeaderSize:])
		if n > 0 {
			if h != nil {
				h.Write(buf[agentproto.HeaderSize : agentproto.HeaderSize+n])
			}
			agentproto.PutHeader(buf, agentproto.TypeData, n)
			if _, werr := r.conn.Write(buf[:agentproto.HeaderSize+n]); werr != nil {
				return total, fmt.Errorf("send DATA: %w", werr)
			}
			total += int64(n)
		}
		if errors.Is(err, io.EOF) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
