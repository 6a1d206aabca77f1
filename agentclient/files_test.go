package agentclient

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agent"
	"github.com/hearthvm/hearth/agentproto"
)

// randomStream returns a deterministic pseudo-random stream of n bytes,
// generated as it is read.
func randomStream(seed byte, n int64) io.Reader {
	var key [32]byte
	key[0] = seed
	return io.LimitReader(rand.NewChaCha8(key), n)
}

// heapPeak samples the heap in use until stop is called and returns the
// largest value.
func heapPeak() (stop func() uint64) {
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestTransferLargeFile sends 1 GiB through the agent both ways over the
// hybrid vsock transport and checks content and memory use.
func TestTransferLargeFile(t *testing.T) {
	if testing.Short() {
		t.Skip("transfers 1 GiB twice; skipped in -short mode")
	}
	const size = 1 << 30
	const maxGrowth = 64 << 20
	ta := startAgentIn(t, agent.Options{}, memoryDir(t))
	ctx := testContext(t)

	want := sha256.New()
	if _, err := io.Copy(want, randomStream(1, size)); err != nil {
		t.Fatal(err)
	}
	base := heapInUse()

	stopSampling := heapPeak()
	start := time.Now()
	err := Upload(ctx, ta.dial(t, agentproto.PortFile), WriteOptions{Path: "/big", Mode: 0o600, Size: size}, randomStream(1, size))
	upload := time.Since(start)
	if err != nil {
		stopSampling()
		t.Fatalf("upload: %v", err)
	}

	got := sha256.New()
	start = time.Now()
	n, err := Download(ctx, ta.dial(t, agentproto.PortFile), "/big", got)
	download := time.Since(start)
	peak := stopSampling()
	if err != nil {
		t.Fatalf("download: %v", err)
	}

	if n != size {
		t.Errorf("downloaded %d bytes, want %d", n, size)
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Errorf("got SHA-256 %x after the round trip, want %x", got.Sum(nil), want.Sum(nil))
	}
	if peak > base && peak-base >= maxGrowth {
		t.Errorf("heap in use grew by %d MiB during the transfers, want less than %d MiB", (peak-base)>>20, maxGrowth>>20)
	}
	t.Logf("upload %.0f MB/s, download %.0f MB/s, heap growth %d KiB",
		size/upload.Seconds()/1e6, size/download.Seconds()/1e6, int64(peak-base)>>10)
}

// failingReader returns err once it has delivered limit bytes of r.
type failingReader struct {
	r     io.Reader
	limit int64
	err   error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.limit <= 0 {
		return 0, f.err
	}
	if int64(len(p)) > f.limit {
		p = p[:f.limit]
	}
	n, err := f.r.Read(p)
	f.limit -= int64(n)
	return n, err
}

// cuttingConn closes the connection once limit bytes have been written.
type cuttingConn struct {
	net.Conn
	limit int64
}

func (c *cuttingConn) Write(p []byte) (int, error) {
	if c.limit <= 0 {
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	if int64(len(p)) > c.limit {
		n, _ := c.Conn.Write(p[:c.limit])
		c.limit = 0
		c.Conn.Close()
		return n, net.ErrClosed
	}
	c.limit -= int64(len(p))
	return c.Conn.Write(p)
}

// waitNoTempFiles waits until the agent has removed its temporary files
// from dir.
func waitNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		matches, _ := filepath.Glob(filepath.Join(dir, ".hearth-write-*"))
		if len(matches) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got temporary files %v 10 s after the transfer, want none", matches)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestUploadCutAtHalf ends uploads in the middle: the target path never
// appears and the caller gets an error.
func TestUploadCutAtHalf(t *testing.T) {
	const size = 8 << 20
	errSource := errors.New("source failed")
	tests := []struct {
		name    string
		conn    func(net.Conn) net.Conn
		source  io.Reader
		wantErr func(error) bool
	}{
		{
			name:    "source fails",
			conn:    func(c net.Conn) net.Conn { return c },
			source:  &failingReader{r: randomStream(2, size), limit: size / 2, err: errSource},
			wantErr: func(err error) bool { return errors.Is(err, errSource) },
		},
		{
			name:    "connection closed",
			conn:    func(c net.Conn) net.Conn { return &cuttingConn{Conn: c, limit: size / 2} },
			source:  randomStream(2, size),
			wantErr: func(err error) bool { return err != nil },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ta := startAgent(t, agent.Options{})
			conn := tc.conn(ta.dial(t, agentproto.PortFile))
			err := Upload(testContext(t), conn, WriteOptions{Path: "/half", Size: size}, tc.source)
			if !tc.wantErr(err) {
				t.Errorf("got error %v, want the cause of the cut", err)
			}
			waitNoTempFiles(t, ta.root)
			if _, err := os.Stat(ta.path("/half")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("got %v for the target, want it absent", err)
			}
		})
	}
}

func TestUploadOptions(t *testing.T) {
	ta := startAgent(t, agent.Options{})
	ctx := testContext(t)
	opts := WriteOptions{Path: "/d/e/tool", Mode: 0o755 | os.ModeSetgid, Mkdirs: true, Size: 5}
	if os.Geteuid() == 0 {
		uid, gid := uint32(65534), uint32(65533)
		opts.UID, opts.GID = &uid, &gid
	}
	if err := Upload(ctx, ta.dial(t, agentproto.PortFile), opts, strings.NewReader("hello")); err != nil {
		t.Fatalf("upload: %v", err)
	}
	info, err := os.Stat(ta.path("/d/e/tool"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode() != 0o755|os.ModeSetgid {
		t.Errorf("got mode %v, want %v", info.Mode(), 0o755|os.ModeSetgid)
	}
	if opts.UID != nil {
		st := info.Sys().(*syscall.Stat_t)
		if st.Uid != 65534 || st.Gid != 65533 {
			t.Errorf("got owner %d:%d, want 65534:65533", st.Uid, st.Gid)
		}
	}

	err = Upload(ctx, ta.dial(t, agentproto.PortFile), WriteOptions{Path: "/d/e/tool", Size: 6}, strings.NewReader("world"))
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "received 5 bytes, want 6") {
		t.Errorf("got error %v, want ErrRejected for the size mismatch", err)
	}
	if content, _ := os.ReadFile(ta.path("/d/e/tool")); string(content) != "hello" {
		t.Errorf("got content %q after the rejected upload, want \"hello\"", content)
	}

	err = Upload(ctx, ta.dial(t, agentproto.PortFile), WriteOptions{Path: "/missing/f"}, strings.NewReader("x"))
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), `parent directory "/missing" not found`) {
		t.Errorf("got error %v, want ErrRejected naming the missing parent", err)
	}
}

func TestDownloadErrors(t *testing.T) {
	ta := startAgent(t, agent.Options{})
	ctx := testContext(t)
	var buf bytes.Buffer
	_, err := Download(ctx, ta.dial(t, agentproto.PortFile), "/missing", &buf)
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), `read "/missing": not found`) {
		t.Errorf("got error %v, want ErrRejected with not found", err)
	}
	_, err = Download(ctx, ta.dial(t, agentproto.PortFile), "/", &buf)
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("got error %v, want ErrRejected with is a directory", err)
	}
}

// TestDownloadCut closes the connection in the middle of a download.
func TestDownloadCut(t *testing.T) {
	ta := startAgent(t, agent.Options{})
	if err := os.WriteFile(ta.path("/f"), bytes.Repeat([]byte("x"), 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	conn := ta.dial(t, agentproto.PortFile)
	w := &closingWriter{conn: conn, limit: 1 << 20}
	n, err := Download(testContext(t), conn, "/f", w)
	if err == nil {
		t.Fatalf("got no error after %d bytes of a cut download, want one", n)
	}
}

// closingWriter closes conn once limit bytes were written to it.
type closingWriter struct {
	conn  net.Conn
	limit int
	n     int
}

func (w *closingWriter) Write(p []byte) (int, error) {
	w.n += len(p)
	if w.n >= w.limit {
		w.conn.Close()
	}
	return len(p), nil
}

func TestFileRequests(t *testing.T) {
	ta := startAgent(t, agent.Options{})
	ctx := testContext(t)
	file := func() net.Conn { return ta.dial(t, agentproto.PortFile) }

	if err := Mkdir(ctx, file(), "/a/b", 0o750, true); err != nil {
		t.Fatalf("mkdir: %v", err)
	}
	if err := Mkdir(ctx, file(), "/a/b", 0, false); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second mkdir: got %v, want ErrRejected with already exists", err)
	}
	for i := range 300 {
		if err := os.WriteFile(ta.path(fmt.Sprintf("/a/b/f%03d", i)), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	fi, err := Stat(ctx, file(), "/a/b")
	if err != nil {
		t.Fatalf("stat: %v", err)
	}
	if fi.Type != agentproto.FileTypeDir || fi.Mode != 0o750 {
		t.Errorf("got type %q mode %#o, want dir 0750", fi.Type, fi.Mode)
	}
	if _, err := Stat(ctx, file(), "/nope"); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), `stat "/nope": not found`) {
		t.Errorf("stat of a missing path: got %v, want ErrRejected with not found", err)
	}

	entries, err := List(ctx, file(), "/a/b")
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name)
	}
	slices.Sort(names)
	if len(names) != 300 || names[0] != "f000" || names[299] != "f299" {
		t.Errorf("got %d entries (%v ...), want f000 to f299", len(names), names[:min(2, len(names))])
	}

	if err := Rename(ctx, file(), "/a/b/f000", "/a/moved"); err != nil {
		t.Fatalf("rename: %v", err)
	}
	if _, err := os.Stat(ta.path("/a/moved")); err != nil {
		t.Errorf("got %v for the renamed file, want it present", err)
	}
	if err := Remove(ctx, file(), "/a", false); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "directory not empty") {
		t.Errorf("remove without recursive: got %v, want ErrRejected with directory not empty", err)
	}
	if err := Remove(ctx, file(), "/a", true); err != nil {
		t.Fatalf("remove recursive: %v", err)
	}
	if _, err := os.Stat(ta.path("/a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v for /a after removal, want it gone", err)
	}
}

// TestTransferChecksums sends a file each way with every checksum
// choice and checks the content on both ends.
func TestTransferChecksums(t *testing.T) {
	ta := startAgent(t, agent.Options{})
	ctx := testContext(t)
	const size = 3<<20 + 17
	want := sha256.New()
	if _, err := io.Copy(want, randomStream(2, size)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		checksum agentproto.Checksum
	}{
		{"default (CRC-32C)", ""},
		{"CRC-32C", agentproto.ChecksumCRC32C},
		{"SHA-256", agentproto.ChecksumSHA256},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := WriteOptions{Path: "/c", Size: size, Checksum: tt.checksum}
			if err := Upload(ctx, ta.dial(t, agentproto.PortFile), opts, randomStream(2, size)); err != nil {
				t.Fatalf("upload: %v", err)
			}
			got := sha256.New()
			n, err := DownloadWithOptions(ctx, ta.dial(t, agentproto.PortFile), ReadOptions{Path: "/c", Checksum: tt.checksum}, got)
			if err != nil {
				t.Fatalf("download: %v", err)
			}
			if n != size || !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
				t.Errorf("got %d bytes with SHA-256 %x, want %d bytes with %x", n, got.Sum(nil), size, want.Sum(nil))
			}
		})
	}
	if err := Upload(ctx, ta.dial(t, agentproto.PortFile), WriteOptions{Path: "/c", Checksum: "md5"}, strings.NewReader("x")); err == nil {
		t.Error("upload with checksum md5: got nil error, want an unknown algorithm error")
	}
}

// TestUploadWrongDigest sends a DIGEST that does not match the content,
// or whose algorithm differs from the one WRITE_REQ announced: the agent
// rejects the upload and leaves the target alone.
func TestUploadWrongDigest(t *testing.T) {
	ta := startAgent(t, agent.Options{})
	tests := []struct {
		name     string
		checksum agentproto.Checksum
		digest   agentproto.Digest
		wantMsg  string
	}{
		{"wrong CRC-32C", agentproto.ChecksumCRC32C, agentproto.Digest{Size: 5, CRC32C: "00000000"}, "content CRC-32C is"},
		{"wrong SHA-256", agentproto.ChecksumSHA256, agentproto.Digest{Size: 5, SHA256: strings.Repeat("0", 64)}, "content SHA-256 is"},
		{"other algorithm", agentproto.ChecksumCRC32C, agentproto.Digest{Size: 5, SHA256: strings.Repeat("0", 64)}, "DIGEST carries a sha256 checksum, but WRITE_REQ announced crc32c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := ta.dial(t, agentproto.PortFile)
			defer conn.Close()
			var b []byte
			b = agentproto.AppendFrame(b, agentproto.TypeWriteReq, mustJSON(t, agentproto.WriteRequest{Path: "/w", Checksum: tt.checksum}))
			b = agentproto.AppendFrame(b, agentproto.TypeData, []byte("hello"))
			b = agentproto.AppendFrame(b, agentproto.TypeDigest, mustJSON(t, tt.digest))
			b = agentproto.AppendFrame(b, agentproto.TypeDone, nil)
			if _, err := conn.Write(b); err != nil {
				t.Fatal(err)
			}
			err := readAck(conn, "upload")
			if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("got %v, want ErrRejected containing %q", err, tt.wantMsg)
			}
			if _, err := os.Stat(ta.path("/w")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("target after the rejected upload: got %v, want not found", err)
			}
		})
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
