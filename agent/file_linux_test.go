package agent

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearthvm/hearth/agentproto"
)

// fileTest is a server confined to a fresh directory.
type fileTest struct {
	srv  *Server
	root string
}

func newFileTest(t *testing.T) *fileTest {
	t.Helper()
	root := t.TempDir()
	return &fileTest{srv: newTestServer(t, Options{FileRoot: root}), root: root}
}

// hostPath returns where a guest path of the test lands.
func (ft *fileTest) hostPath(guest string) string {
	return filepath.Join(ft.root, filepath.FromSlash(guest))
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// request sends frames on a new file connection and returns the agent's
// frames up to the end of the stream.
func (ft *fileTest) request(t *testing.T, frames ...rawFrame) []rawFrame {
	t.Helper()
	conn := dial(t, ft.srv, agentproto.PortFile)
	go func() {
		for _, f := range frames {
			if _, err := conn.Write(frameBytes(f.typ, f.payload)); err != nil {
				return
			}
		}
	}()
	var got []rawFrame
	for {
		f, err := readRawFrame(conn)
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatalf("read file reply after %d frames: %v", len(got), err)
		}
		got = append(got, f)
	}
}

func (ft *fileTest) write(t *testing.T, req agentproto.WriteRequest, data []byte, extra ...rawFrame) []rawFrame {
	t.Helper()
	frames := []rawFrame{{wireWriteReq, mustMarshal(t, req)}}
	for chunk := range slices.Chunk(data, 1000) {
		frames = append(frames, rawFrame{wireData, chunk})
	}
	frames = append(frames, extra...)
	frames = append(frames, rawFrame{wireDone, nil})
	return ft.request(t, frames...)
}

// wantReply checks that the reply is one frame of type typ whose payload
// contains want.
func wantReply(t *testing.T, got []rawFrame, typ byte, want string) {
	t.Helper()
	if len(got) != 1 || got[0].typ != typ || !strings.Contains(string(got[0].payload), want) {
		t.Fatalf("got reply %s, want one frame 0x%02x containing %q", describeFrames(got), typ, want)
	}
}

func describeFrames(frames []rawFrame) string {
	var parts []string
	for _, f := range frames {
		parts = append(parts, fmt.Sprintf("0x%02x %q", f.typ, truncate(f.payload)))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// noTempFiles fails when a temporary file of the agent stays in dir. It
// waits, because the agent removes it after the host has gone.
func noTempFiles(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		matches, err := filepath.Glob(filepath.Join(dir, ".hearth-write-*"))
		if err != nil {
			t.Fatal(err)
		}
		if len(matches) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("got temporary files %v 10 s after the transfer, want none", matches)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func u32(v uint32) *uint32 { return &v }
func i64(v int64) *int64   { return &v }

func TestFileWriteRead(t *testing.T) {
	ft := newFileTest(t)
	data := bytes.Repeat([]byte("hearth "), 1000)

	got := ft.write(t, agentproto.WriteRequest{Path: "/a.txt", Mode: 0o640}, data)
	wantReply(t, got, wireAck, "")
	content, err := os.ReadFile(ft.hostPath("/a.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(content, data) {
		t.Errorf("got %d bytes in the file, want %d", len(content), len(data))
	}
	info, err := os.Stat(ft.hostPath("/a.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode() != 0o640 {
		t.Errorf("got mode %v, want -rw-r-----", info.Mode())
	}
	noTempFiles(t, ft.root)

	// A reference READ_REQ: DATA..., DONE and nothing after.
	got = ft.request(t, rawFrame{wireReadReq, []byte(`{"path":"/a.txt"}`)})
	if len(got) < 2 || got[len(got)-1].typ != wireDone {
		t.Fatalf("got %s, want DATA frames then DONE", describeFrames(got))
	}
	var read []byte
	for _, f := range got[:len(got)-1] {
		if f.typ != wireData {
			t.Fatalf("got frame 0x%02x before DONE, want DATA", f.typ)
		}
		read = append(read, f.payload...)
	}
	if !bytes.Equal(read, data) {
		t.Errorf("read %d bytes, want %d", len(read), len(data))
	}

	// With digest set, DIGEST follows DONE.
	got = ft.request(t, rawFrame{wireReadReq, []byte(`{"path":"/a.txt","digest":true}`)})
	if n := len(got); n < 2 || got[n-2].typ != wireDone || got[n-1].typ != wireDigest {
		t.Fatalf("got %s, want DATA frames, DONE, DIGEST", describeFrames(got))
	}
	var d agentproto.Digest
	if err := json.Unmarshal(got[len(got)-1].payload, &d); err != nil {
		t.Fatal(err)
	}
	if want := (agentproto.Digest{Size: int64(len(data)), SHA256: hexSHA256(data)}); d != want {
		t.Errorf("got DIGEST %+v, want %+v", d, want)
	}
}

func TestFileWriteEmptyAndDefaultMode(t *testing.T) {
	ft := newFileTest(t)
	wantReply(t, ft.write(t, agentproto.WriteRequest{Path: "/empty"}, nil), wireAck, "")
	info, err := os.Stat(ft.hostPath("/empty"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Size() != 0 || info.Mode() != 0o644 {
		t.Errorf("got size %d and mode %v, want 0 and -rw-r--r--", info.Size(), info.Mode())
	}
}

func TestFileWriteOwnerAndSpecialBits(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing a file's owner needs root; run the test as root")
	}
	ft := newFileTest(t)
	req := agentproto.WriteRequest{Path: "/tool", Mode: 0o4755, UID: u32(65534), GID: u32(65533)}
	wantReply(t, ft.write(t, req, []byte("#!/bin/sh\n")), wireAck, "")

	info, err := os.Stat(ft.hostPath("/tool"))
	if err != nil {
		t.Fatal(err)
	}
	st := info.Sys().(*syscall.Stat_t)
	if st.Uid != 65534 || st.Gid != 65533 {
		t.Errorf("got owner %d:%d, want 65534:65533", st.Uid, st.Gid)
	}
	// chown clears setuid, so this checks that the mode is set after it.
	if got := st.Mode & 0o7777; got != 0o4755 {
		t.Errorf("got mode %#o, want 04755", got)
	}
}

// TestFileWriteRejected checks each way a write fails: the target keeps
// its old content and no temporary file stays behind.
func TestFileWriteRejected(t *testing.T) {
	data := []byte("hello")
	tests := []struct {
		name    string
		req     agentproto.WriteRequest
		extra   []rawFrame
		wantErr string
	}{
		{"size too large", agentproto.WriteRequest{Path: "/f", Size: i64(6)}, nil,
			`write "/f": received 5 bytes, want 6 (the size in WRITE_REQ); the target was left unchanged`},
		{"sha256 mismatch", agentproto.WriteRequest{Path: "/f", SHA256: hexSHA256([]byte("other"))}, nil,
			"content SHA-256 is " + hexSHA256(data)},
		{"digest size mismatch", agentproto.WriteRequest{Path: "/f"},
			[]rawFrame{{wireDigest, []byte(`{"size":4,"sha256":"` + hexSHA256(data) + `"}`)}},
			"received 5 bytes, want 4 (the size in DIGEST)"},
		{"digest sha256 mismatch", agentproto.WriteRequest{Path: "/f"},
			[]rawFrame{{wireDigest, []byte(`{"size":5,"sha256":"` + hexSHA256([]byte("hellp")) + `"}`)}},
			"(the sha256 in DIGEST)"},
		{"missing parent", agentproto.WriteRequest{Path: "/no/such/f"}, nil,
			`write "/no/such/f": parent directory "/no/such" not found; set mkdirs to create it`},
		{"target is a directory", agentproto.WriteRequest{Path: "/dir"}, nil, `write "/dir": is a directory`},
		{"parent is a file", agentproto.WriteRequest{Path: "/f/x"}, nil, `write "/f/x": parent "/f" is not a directory`},
		{"mode out of range", agentproto.WriteRequest{Path: "/f", Mode: 0o10000}, nil, "mode 010000 has bits outside 07777"},
		{"empty path", agentproto.WriteRequest{}, nil, "path is empty"},
		{"unexpected frame", agentproto.WriteRequest{Path: "/f"}, []rawFrame{{wireReadReq, nil}},
			`write "/f": unexpected READ_REQ frame; want DATA, DIGEST or DONE`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ft := newFileTest(t)
			if err := os.WriteFile(ft.hostPath("/f"), []byte("old"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(ft.hostPath("/dir"), 0o755); err != nil {
				t.Fatal(err)
			}
			got := ft.write(t, tc.req, data, tc.extra...)
			wantReply(t, got, wireErr, tc.wantErr)

			if content, err := os.ReadFile(ft.hostPath("/f")); err != nil || string(content) != "old" {
				t.Errorf("got target content %q (error %v), want the old content", content, err)
			}
			noTempFiles(t, ft.root)
		})
	}
}

func TestFileWriteMkdirs(t *testing.T) {
	ft := newFileTest(t)
	wantReply(t, ft.write(t, agentproto.WriteRequest{Path: "/x/y/z.txt", Mkdirs: true}, []byte("z")), wireAck, "")
	if content, err := os.ReadFile(ft.hostPath("/x/y/z.txt")); err != nil || string(content) != "z" {
		t.Errorf("got %q (error %v), want \"z\"", content, err)
	}
}

// TestFileWriteCut closes the connection in the middle of a write, as a
// host that dies would: the old content stays and the temporary file
// goes.
func TestFileWriteCut(t *testing.T) {
	ft := newFileTest(t)
	if err := os.WriteFile(ft.hostPath("/f"), []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	conn := dial(t, ft.srv, agentproto.PortFile)
	writeRawFrame(t, conn, wireWriteReq, []byte(`{"path":"/f","mode":420}`))
	writeRawFrame(t, conn, wireData, bytes.Repeat([]byte("x"), 4096))
	// Half a frame: the header promises more than arrives.
	if _, err := conn.Write([]byte{wireData, 0x00, 0x10, 0x00, 0x00, 'y'}); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	noTempFiles(t, ft.root)
	if content, err := os.ReadFile(ft.hostPath("/f")); err != nil || string(content) != "old" {
		t.Errorf("got target content %q (error %v), want the old content", content, err)
	}
}

func TestFileReadErrors(t *testing.T) {
	ft := newFileTest(t)
	if err := os.Mkdir(ft.hostPath("/dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(ft.hostPath("/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		payload string
		wantErr string
	}{
		{"missing file", `{"path":"/missing"}`, `read "/missing": not found`},
		{"directory", `{"path":"/dir"}`, `read "/dir": is a directory`},
		{"fifo", `{"path":"/fifo"}`, `read "/fifo": not a regular file (fifo)`},
		{"garbage JSON", `{`, "invalid READ_REQ payload"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantReply(t, ft.request(t, rawFrame{wireReadReq, []byte(tc.payload)}), wireErr, tc.wantErr)
		})
	}
}

// TestFileRootConfinement checks that neither ".." nor a symbolic link
// leads out of Options.FileRoot.
func TestFileRootConfinement(t *testing.T) {
	ft := newFileTest(t)
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("s"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, ft.hostPath("/escape")); err != nil {
		t.Fatal(err)
	}

	rel, err := filepath.Rel(ft.root, filepath.Join(outside, "secret"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/" + rel, "/escape/secret"} {
		got := ft.request(t, rawFrame{wireReadReq, mustMarshal(t, agentproto.ReadRequest{Path: p})})
		if len(got) != 1 || got[0].typ != wireErr {
			t.Errorf("read %q: got %s, want ERR", p, describeFrames(got))
		}
	}
	got := ft.write(t, agentproto.WriteRequest{Path: "/escape/new"}, []byte("x"))
	if len(got) != 1 || got[0].typ != wireErr {
		t.Errorf("write through the link: got %s, want ERR", describeFrames(got))
	}
	if _, err := os.Stat(filepath.Join(outside, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v for the file written through the link, want it absent", err)
	}
}

// TestFileHostFS serves the whole filesystem, as in a guest.
func TestFileHostFS(t *testing.T) {
	dir := t.TempDir()
	ft := &fileTest{srv: newTestServer(t, Options{}), root: "/"}
	target := filepath.Join(dir, "f")
	wantReply(t, ft.write(t, agentproto.WriteRequest{Path: target, Mode: 0o600}, []byte("abc")), wireAck, "")
	if content, err := os.ReadFile(target); err != nil || string(content) != "abc" {
		t.Errorf("got %q (error %v), want \"abc\"", content, err)
	}
}

func stat(t *testing.T, ft *fileTest, path string) agentproto.FileInfo {
	t.Helper()
	got := ft.request(t, rawFrame{wireStat, mustMarshal(t, agentproto.PathRequest{Path: path})})
	if len(got) != 1 || got[0].typ != wireFileInfo {
		t.Fatalf("stat %q: got %s, want one FILE_INFO", path, describeFrames(got))
	}
	var fi agentproto.FileInfo
	if err := json.Unmarshal(got[0].payload, &fi); err != nil {
		t.Fatal(err)
	}
	return fi
}

func TestFileStat(t *testing.T) {
	ft := newFileTest(t)
	if err := os.WriteFile(ft.hostPath("/f"), []byte("12345"), 0o640); err != nil {
		t.Fatal(err)
	}
	mtime := time.Date(2030, 1, 2, 3, 4, 5, 6000, time.UTC)
	if err := os.Chtimes(ft.hostPath("/f"), mtime, mtime); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(ft.hostPath("/d"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ft.hostPath("/d"), os.ModeSticky|0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("f", ft.hostPath("/link")); err != nil {
		t.Fatal(err)
	}
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())

	tests := []struct {
		path string
		want agentproto.FileInfo
	}{
		{"/f", agentproto.FileInfo{Name: "/f", Type: "file", Mode: 0o640, Size: 5, MtimeNanos: mtime.UnixNano(), UID: uid, GID: gid}},
		{"/d", agentproto.FileInfo{Name: "/d", Type: "dir", Mode: 0o1750, UID: uid, GID: gid}},
		{"/link", agentproto.FileInfo{Name: "/link", Type: "symlink", Mode: 0o777, Size: 1, UID: uid, GID: gid, Target: "f"}},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			got := stat(t, ft, tc.path)
			if tc.want.Type != "file" {
				// Directory sizes and link times depend on the filesystem.
				tc.want.Size, tc.want.MtimeNanos = got.Size, got.MtimeNanos
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}

	wantReply(t, ft.request(t, rawFrame{wireStat, []byte(`{"path":"/missing"}`)}), wireErr, `stat "/missing": not found`)
}

func TestFileList(t *testing.T) {
	ft := newFileTest(t)
	const files = 600 // more than two LIST_ENTRIES frames
	var want []string
	for i := range files {
		name := fmt.Sprintf("file%03d", i)
		want = append(want, name)
		if err := os.WriteFile(ft.hostPath("/"+name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(ft.hostPath("/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	want = append(want, "sub")

	got := ft.request(t, rawFrame{wireList, []byte(`{"path":"/"}`)})
	if len(got) < 4 || got[len(got)-1].typ != wireDone {
		t.Fatalf("got %d frames ending in 0x%02x, want at least 3 LIST_ENTRIES and DONE", len(got), got[len(got)-1].typ)
	}
	var names []string
	types := map[string]string{}
	for _, f := range got[:len(got)-1] {
		if f.typ != wireListEntries {
			t.Fatalf("got frame 0x%02x before DONE, want LIST_ENTRIES", f.typ)
		}
		var batch []agentproto.FileInfo
		if err := json.Unmarshal(f.payload, &batch); err != nil {
			t.Fatal(err)
		}
		if len(batch) > 256 {
			t.Errorf("got %d entries in one frame, want at most 256", len(batch))
		}
		for _, e := range batch {
			names = append(names, e.Name)
			types[e.Name] = e.Type
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, want) {
		t.Errorf("got %d names, want %d (%v...)", len(names), len(want), names[:min(3, len(names))])
	}
	if types["sub"] != "dir" || types["file000"] != "file" {
		t.Errorf("got types %q and %q, want dir and file", types["sub"], types["file000"])
	}

	wantReply(t, ft.request(t, rawFrame{wireList, []byte(`{"path":"/file000"}`)}), wireErr, `list "/file000": not a directory`)
	wantReply(t, ft.request(t, rawFrame{wireList, []byte(`{"path":"/missing"}`)}), wireErr, `list "/missing": not found`)
}

func TestFileMkdir(t *testing.T) {
	tests := []struct {
		name     string
		req      agentproto.MkdirRequest
		wantErr  string
		wantMode os.FileMode // of req.Path, when no error
	}{
		{"default mode", agentproto.MkdirRequest{Path: "/new"}, "", os.ModeDir | 0o755},
		{"setgid mode", agentproto.MkdirRequest{Path: "/new", Mode: 0o2770}, "", os.ModeDir | os.ModeSetgid | 0o770},
		{"parents", agentproto.MkdirRequest{Path: "/a/b/c", Parents: true, Mode: 0o700}, "", os.ModeDir | 0o700},
		{"existing with parents", agentproto.MkdirRequest{Path: "/existing", Parents: true}, "", os.ModeDir | 0o711},
		{"existing", agentproto.MkdirRequest{Path: "/existing"}, `mkdir "/existing": already exists`, 0},
		{"file with parents", agentproto.MkdirRequest{Path: "/file", Parents: true}, `mkdir "/file": already exists and is not a directory`, 0},
		{"missing parent", agentproto.MkdirRequest{Path: "/a/b"}, `mkdir "/a/b": not found`, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ft := newFileTest(t)
			if err := os.Mkdir(ft.hostPath("/existing"), 0o711); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(ft.hostPath("/file"), nil, 0o600); err != nil {
				t.Fatal(err)
			}
			got := ft.request(t, rawFrame{wireMkdir, mustMarshal(t, tc.req)})
			if tc.wantErr != "" {
				wantReply(t, got, wireErr, tc.wantErr)
				return
			}
			wantReply(t, got, wireAck, "")
			info, err := os.Stat(ft.hostPath(tc.req.Path))
			if err != nil {
				t.Fatal(err)
			}
			if info.Mode() != tc.wantMode {
				t.Errorf("got mode %v, want %v", info.Mode(), tc.wantMode)
			}
		})
	}
}

func TestFileRemove(t *testing.T) {
	tests := []struct {
		name    string
		req     agentproto.RemoveRequest
		wantErr string
	}{
		{"file", agentproto.RemoveRequest{Path: "/file"}, ""},
		{"empty directory", agentproto.RemoveRequest{Path: "/empty"}, ""},
		{"full directory", agentproto.RemoveRequest{Path: "/full"}, `remove "/full": directory not empty; set recursive`},
		{"full directory recursive", agentproto.RemoveRequest{Path: "/full", Recursive: true}, ""},
		{"missing", agentproto.RemoveRequest{Path: "/missing"}, `remove "/missing": not found`},
		{"root", agentproto.RemoveRequest{Path: "/", Recursive: true}, "refusing to remove the root directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ft := newFileTest(t)
			for _, d := range []string{"/empty", "/full", "/full/sub"} {
				if err := os.Mkdir(ft.hostPath(d), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			for _, f := range []string{"/file", "/full/sub/f"} {
				if err := os.WriteFile(ft.hostPath(f), nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got := ft.request(t, rawFrame{wireRemove, mustMarshal(t, tc.req)})
			if tc.wantErr != "" {
				wantReply(t, got, wireErr, tc.wantErr)
				if tc.req.Path != "/" && tc.req.Path != "/missing" {
					if _, err := os.Lstat(ft.hostPath(tc.req.Path)); err != nil {
						t.Errorf("got %v, want %s kept after the error", err, tc.req.Path)
					}
				}
				return
			}
			wantReply(t, got, wireAck, "")
			if _, err := os.Lstat(ft.hostPath(tc.req.Path)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("got %v for %s, want it removed", err, tc.req.Path)
			}
		})
	}
}

func TestFileRename(t *testing.T) {
	ft := newFileTest(t)
	if err := os.WriteFile(ft.hostPath("/a"), []byte("a"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ft.hostPath("/b"), []byte("b"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantReply(t, ft.request(t, rawFrame{wireRename, []byte(`{"from":"/a","to":"/b"}`)}), wireAck, "")
	if content, err := os.ReadFile(ft.hostPath("/b")); err != nil || string(content) != "a" {
		t.Errorf("got /b content %q (error %v), want \"a\"", content, err)
	}
	if _, err := os.Lstat(ft.hostPath("/a")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("got %v for /a, want it gone", err)
	}
	wantReply(t, ft.request(t, rawFrame{wireRename, []byte(`{"from":"/a","to":"/c"}`)}), wireErr, `rename "/a" to "/c": not found`)
}

func TestFileUnknownRequest(t *testing.T) {
	ft := newFileTest(t)
	wantReply(t, ft.request(t, rawFrame{wireStart, []byte(`{"cmd":["true"]}`)}), wireErr,
		"unknown file request type START; want WRITE_REQ, READ_REQ, STAT, LIST, MKDIR, REMOVE or RENAME")
}
